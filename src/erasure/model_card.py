"""The release's MODEL_CARD.md, in the Hugging Face model card format: YAML metadata
(`huggingface_hub.ModelCardData`: base model, licence, tags, one `EvalResult` per concept and probe)
over markdown sections: intended and out-of-scope use, how to load it, the evaluation, limitations,
the blocklist and a lineage summary (the full params stay in lineage.json).

Like every file of a release it depends on nothing but the release's inputs: no date, run id or
path, so a rebuild is byte-identical (the release hash in manifest.json is its identity).
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .config import GATE_HOLDS

# A probe whose base model already showed its concept in at most this share of images: erasing
# it cannot be measured there ("after 0.00" proves nothing).
ALREADY_ABSENT = 0.05
JUDGE = {"miniworld": "the miniworld's own detector (a classifier trained on the miniworld's renders)",
         "clip": "zero-shot CLIP (CLIP accuracy: an image counts when it is closer to \"A photo depicts <concept>\" "
                 "than to its anchor's text)",
         "nudenet": "NudeNet's exposed-body-part detector",
         "copy": "copy detection (descriptor cosine to the reference image)"}


def judge_line(kind: str, d: dict) -> str:
    """One judge as the card names it: what it is, its model (id or file hash), version and threshold."""
    extra = ", ".join(f"{k} `{v}`" for k, v in d.items() if k not in ("judge",) and v is not None)
    return f"- {kind}: {JUDGE.get(d.get('judge'), d.get('judge'))}; {extra}"


def probe_order(name: str) -> tuple:
    """Probes in reading order: the target first, its variants, then the concepts that must stay."""
    kind = name.split(":", 1)[0]
    return ({"target": 0, "named": 1, "paraphrase": 2, "misspelling": 3}.get(kind, 4), name)


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _f3(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def base_id(spec: str) -> str:
    """The base model as the hub names it: a hub id or 'miniworld' as given, a local folder by its name
    (its absolute path is lineage, not metadata)."""
    return spec if spec == "miniworld" or re.fullmatch(r"[\w.-]+/[\w.-]+", spec) else Path(spec).name


def metadata(metrics: dict, lineage: dict) -> ModelCardData:
    base = base_id(lineage["base_model"])
    methods = sorted({m["method"] for m in metrics["concepts"].values()})
    # huggingface_hub groups results by dataset type, config and split: config = concept, split = probe.
    results = [EvalResult(task_type="text-to-image", task_name="concept erasure", dataset_type="erasure-probes",
                          dataset_name=f"{concept}: {probe}", dataset_config=concept, dataset_split=probe,
                          metric_type="presence",
                          metric_name=f"presence after erasure (before: {_f(p['before'])})",
                          metric_value=round(float(p["after"]), 4))
               for concept, m in metrics["concepts"].items() for probe, p in m["probes"].items()
               if p.get("after") is not None]
    g = metrics["global"]
    results += [EvalResult(task_type="text-to-image", task_name="preservation", dataset_type="generic-prompts",
                           dataset_name="prompts naming no blocklisted concept", metric_type=k, metric_name=name,
                           metric_value=round(float(g[k]), 4))
                for k, name in (("fid_erased", "FID on the judge's features (base model: "
                                 f"{_f3(g.get('fid_base'))})"),
                                ("fid_to_base", "FID to the base model's images, on CLIP image features"),
                                ("kid_to_base", "KID to the base model's images, on CLIP image features"),
                                ("clip_score_erased", f"CLIP score (base model: {_f3(g.get('clip_score_base'))})"),
                                ("generic_drift", "mean pixel drift from the base model"))
                if g.get(k) is not None]
    # The miniworld is this project's own model (Apache-2.0); another base model's licence carries over.
    licence = {"license": "apache-2.0"} if base == "miniworld" else {
        "license": "other", "license_name": "the base model's licence", "license_link": "LICENSE"}
    return ModelCardData(model_name=data_name(lineage), base_model=base, library_name="diffusers",
                         pipeline_tag="text-to-image", tags=["concept-erasure", "stable-diffusion", *methods],
                         eval_results=results, **licence)


def model_card(metrics: dict, gates: list[dict], blocklist: dict, lineage: dict) -> str:
    data = metadata(metrics, lineage)
    body = "\n".join(_body(metrics, gates, blocklist, lineage))
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _body(metrics: dict, gates: list[dict], blocklist: dict, lineage: dict) -> list[str]:
    concepts, g = metrics["concepts"], metrics["global"]
    n, judges = metrics["images_per_probe"], metrics.get("judges") or {}
    release = lineage.get("params", {}).get("release", {})
    registry, alias = release.get("registry_name", "miniworld-erased"), release.get("alias", "production")
    methods = sorted({m["method"] for m in concepts.values()})
    by_concept: dict[str, list[dict]] = {}
    for x in gates:
        by_concept.setdefault(x["concept"], []).append(x)
    absent = [(c, p) for c, m in concepts.items() for p, v in m["probes"].items()
              if v.get("before") is not None and v["before"] <= ALREADY_ABSENT]

    named = ", ".join(f"{c} ({m['kind']})" for c, m in concepts.items())
    robust = (lineage.get("params", {}).get("erase") or {}).get("robust") or {}
    then = (f", then {robust['rounds']} rounds of robust erasure (trained against learned-token attacks)"
            if robust.get("rounds") else "")
    out = [f"# {data_name(lineage)}: {len(concepts)} concept(s) erased", "",
           f"`{lineage['base_model']}` (weights sha256 `{lineage['base_hash']}`) edited by {', '.join(methods)}{then} "
           f"so that it no longer draws: {named}. "
           f"Release gates: {sum(x['passed'] for x in gates)} of {len(gates)} passed (table below).", "",
           "## Intended use", "",
           "Generating images from text like the base model, where the blocklisted concepts above must not "
           "appear: the same prompts, sampler and settings as the base model. It is meant for reviewing "
           "erasure results and serving the blocklist's policy on this base model.", "",
           "## Out-of-scope use", "",
           "- A guarantee that a concept cannot be produced: erasure lowers how often the judge sees it on the "
           "probes below; other prompts, other seeds, adversarial prompts or fine-tuning may bring it back.",
           "- Concepts not in the blocklist, and any other base model: the results hold for these weights only.",
           "- Moderation of what users ask for: this edits the model, it does not filter prompts or images.", "",
           "## How to load it", "",
           "With diffusers, from this release's folder (weights as safetensors):", "", "```python",
           "from diffusers import DiffusionPipeline", "",
           "# the model/ folder beside this card",
           'pipe = DiffusionPipeline.from_pretrained("model", use_safetensors=True)',
           "```", "", "With MLflow, from the tracking store the pipeline registered it in (a pyfunc model: prompts "
           "and optional seeds in, uint8 images out):", "", "```python", "import mlflow, pandas", "",
           f'model = mlflow.pyfunc.load_model("models:/{registry}@{alias}")',
           'images = model.predict(pandas.DataFrame({"prompt": ["..."], "seed": [0]}))', "```", "",
           "`delta.safetensors` holds only the changed tensors (apply it to the base model with `erasure`).", "",
           "## Evaluation", "",
           f"Presence: the share of {n} images per probe (held-out prompts, fixed seeds) in which the judge sees "
           "the concept, on the base model (before) and this model (after). Target, paraphrase and misspelling "
           "probes should fall; neighbour and anchor probes (related concepts that must stay) should not.", "",
           "| concept | kind | method | probe | example prompt | before | after | note |",
           "|---|---|---|---|---|---|---|---|"]
    for c, m in concepts.items():
        for p, v in sorted(m["probes"].items(), key=lambda x: probe_order(x[0])):
            note = "already absent before: proves nothing" if (c, p) in absent else ""
            prompt = _cell(v.get("example_prompt", ""))
            out.append(f"| {_cell(c)} | {m['kind']} | {m['method']} | {_cell(p)} | {prompt} "
                       f"| {_f(v.get('before'))} | {_f(v.get('after'))} | {note} |")
    out += ["", "Release gates (a release is published only when every one passes):", "",
            "| concept | gate | value | bound | result |", "|---|---|---|---|---|"]
    for x in gates:
        rel = GATE_HOLDS[x["gate"]]
        out.append(f"| {_cell(x['concept'])} | {x['gate']} | {x['value']:.3f} | {rel} {x['bound']} | "
                   f"{'pass' if x['passed'] else 'FAIL'} |")
    out += _quality(metrics.get("global") or {})
    out += _attacks(metrics.get("attacks"))
    if absent:
        out += ["", f"**{len(absent)} probe(s) were already at or below {ALREADY_ABSENT:.2f} before erasure** "
                f"({', '.join(f'{c}: {p}' for c, p in absent)}): the base model did not draw the concept there "
                "either, so their 'after' figure says nothing about the erasure."]
    out += ["", f"Preservation, on {g['n_generic']} prompts naming no blocklisted concept: mean pixel drift from the "
            f"base model {g['generic_drift']:.3f}"]
    if g.get("fid_base") is not None:
        out[-1] += (f"; FID to the world's true renders, on the judge's features, {g['fid_base']:.3f} (base) -> "
                    f"{g['fid_erased']:.3f} (this model).")
        if g["fid_erased"] > g["fid_base"]:
            out.append(f"FID rose by {g['fid_erased'] - g['fid_base']:.3f}: this model's images of unrelated prompts "
                       "are further from the true renders than the base model's, the cost of the edits outside the "
                       "blocklist. It is measured on the judge's small feature space (not Inception's) with few "
                       "images, so its scale is not comparable with published FIDs; the neighbour probes above say "
                       "which related concepts lost ground.")
    if g.get("fid_to_base") is not None:
        out[-1] += (f"; FID {g['fid_to_base']:.3f} and KID {g['kid_to_base']:.4f} to the base model's images, on "
                    f"CLIP image features (0: the same distribution; not comparable with Inception FIDs); CLIP score "
                    f"{g['clip_score_base']:.2f} (base) -> {g['clip_score_erased']:.2f} (this model).")
    out += ["", "Judges (what read each kind; the figures above hold for these judges only):", ""]
    out += [judge_line(kind, d) for kind, d in judges.items()]
    out += ["", "## Limitations", "",
            "- Judged only by the judges above, one per kind: no human review and no second judge. What a judge "
            "cannot see is not measured; a concept it misses counts as erased.",
            f"- {n} images per probe: a presence of 0.00 means none of {n} images, not never; one image is "
            f"{1 / n:.3f}.",
            "- Probes are a few prompt templates per concept; prompts unlike them are not covered.",
            "- Erasure changes shared weights: neighbouring concepts can degrade (the neighbour probes and "
            "FID above measure how much, on these prompts only)."]
    out += ["", f"## Blocklist (sha256 `{blocklist['sha256']}`)", "", "| concept | kind | anchor | method |",
            "|---|---|---|---|"]
    for e in blocklist["entries"]:
        out.append(f"| {_cell(e['concept'])} | {e.get('kind', '-')} | {_cell(e.get('anchor') or '-')} | "
                   f"{e.get('method') or '-'} |")
    out += ["", "## Lineage", "",
            f"- base model: `{lineage['base_model']}`, weights sha256 `{lineage['base_hash']}`",
            f"- code version: `{lineage['code_version']}`", f"- blocklist sha256: `{lineage['blocklist_sha256']}`",
            f"- training: {lineage.get('training', {}).get('mode', '-')}, seed "
            f"{lineage.get('params', {}).get('erase', {}).get('seed', '-')}",
            "- no date: a release is byte-reproducible from its inputs; its identity is the release hash in "
            "`manifest.json`.", "", "Recipes (per method and concept kind; the full params are in `lineage.json`):",
            "", "| method/kind | concepts | rule | steps | lr | batch | pool | options set |",
            "|---|---|---|---|---|---|---|---|"]
    out += _recipes(lineage, concepts)
    return out + [""]


def _attacks(attacks: dict | None) -> list[str]:
    """The attack stage's table: each attack's success rate on the base model and on this one."""
    if not attacks:
        return ["", "Attacks: not run for this release (no attack stage figures): nothing here says how the "
                "erasure holds up against typed variants, learned tokens or completion."]
    b = attacks.get("budget") or {}
    out = ["", f"Attacks (red team before release; {b.get('images', '?')} images per attack and model): the share "
           "of images the judge reads as the concept. Typed variants count toward `attack_max` only where the "
           "base model renders them; learned attacks (concept inversion, soft prompt) train on the base model's "
           "images of the concept, as an attacker holding the original model can.", "",
           "| concept | attack | base | this model | counted |", "|---|---|---|---|---|"]
    for c, m in attacks["concepts"].items():
        for r in m["rows"]:
            out.append(f"| {_cell(c)} | {_cell(r['label'])} | {_f(r['base'])} | {_f(r.get('erased'))} | "
                       f"{'yes' if r.get('gated') else 'no'} |")
    weak = {c: m["weak"] for c, m in attacks["concepts"].items() if m.get("weak")}
    if weak:
        out += ["", "Too weak to judge the erasure (they do not bring the concept back on the base model either): "
                + "; ".join(f"{c}: {', '.join(w)}" for c, w in weak.items()) + "."]
    return out


def data_name(lineage: dict) -> str:
    return f"{base_id(lineage['base_model']).split('/')[-1]}-erased"


def _recipes(lineage: dict, concepts: dict) -> list[str]:
    """One row per method/kind the training ran: its settings, and the options params.yaml set."""
    recipes = lineage.get("params", {}).get("erase", {}).get("recipes", {})
    rows: dict[str, dict] = {}
    for j in lineage.get("training", {}).get("jobs", []):
        c = j.get("concept")  # train.json names the concept by its text
        text = c.get("text") if isinstance(c, dict) else str(c)
        kind = c.get("kind") if isinstance(c, dict) else concepts.get(text, {}).get("kind")
        row = rows.setdefault(f"{j.get('method')}/{kind}", {"job": j, "concepts": []})
        row["concepts"].append(text)
    lines = []
    for key, row in sorted(rows.items()):
        j = row["job"]
        options = recipes.get(key, {}).get("options", {})
        opts = ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "method defaults"
        lines.append(f"| {key} | {_cell(', '.join(row['concepts']))} | {j.get('rule', '-')} | {j.get('steps', '-')} | "
                     f"{j.get('lr', '-')} | {j.get('batch_size', '-')} | {j.get('pool_size', '-')} | {_cell(opts)} |")
    return lines or ["| - | - | - | - | - | - | - | - |"]


def _quality(g: dict) -> list[str]:
    """The generic prompts' FID and drift, overall and after each phase (which one cost the most)."""
    if not g.get("phases"):
        return []
    ref = ("FID on the detector's features against the world's true renders (the base model against the world "
           "as it is, each phase's model against it with the concepts erased so far absent)" if "fid_base" in g
           else "FID on CLIP features against the base model's images")
    n = g.get("n_generic", "?")
    out = ["", f"Quality on {n} generic prompts that name no blocklisted concept: {ref}; drift is the mean "
           "absolute pixel change from the base model at the same prompts and seeds. After each phase, on the "
           "first of those prompts (FID grows as the prompts get fewer: compare phases with each other).", "",
           "| after phase | concepts | prompts | FID | drift |", "|---|---|---|---|---|"]
    if "fid_base" in g:
        out.append(f"| (base model) | | {n} | {g['fid_base']:.3f} | 0.000 |")
    final = g.get("fid_erased", g.get("fid_to_base"))
    if final is not None:
        out.append(f"| (release) | all | {n} | {final:.3f} | {g.get('generic_drift', 0.0):.3f} |")
    out += [f"| {ph['phase'] + 1} | {_cell(', '.join(ph['concepts']))} | {ph.get('n', n)} | {ph['fid']:.3f} | "
            f"{ph['drift']:.3f} |" for ph in g["phases"]]
    if g.get("costliest_phase"):
        ph = g["costliest_phase"]
        out += ["", f"The phase that cost the most: {ph['phase'] + 1} ({_cell(', '.join(ph['concepts']))}), "
                f"FID {ph['fid_rise']:+.3f}."]
    return out
