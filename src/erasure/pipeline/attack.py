"""Stage 6, attack: red-team every erased concept before release. Per concept, each attack of
params.attack (typed variants, concept inversion, soft prompt, diffusion completion; erasure/attacks/)
runs on the base model and on the erased one with the same budget and seeds, and the concept's
judge reads the share of images that show the concept (its success rate).

Typed variants count toward the gate only where the base model renders them (success >= typed.base_min);
the erased model draws only those (the rest are reported with their base figure). The strongest
gated attack's success on the erased model is the concept's `attack_max`, which release.gates bound.

Work is reused: learned attacks train on the images the generate stage drew (a memorized image's
references instead), every image goes through the content-addressed image cache (keyed by the
weights, and by the learned vectors where some are hooked in), and each (model, concept) result is
cached whole, so a killed stage resumes with the concepts it finished and a nightly run that adds
a concept attacks the base model for that concept only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..attacks.suite import Outcome, Target, attack, check, chosen_variants, strongest
from ..codehash import code_hash
from ..config import PipelineParams
from ..delta import apply_delta, load_delta, weights_digest
from ..io import CacheWarning, atomic_dir, atomic_file
from ..sampling import grid
from . import inputs
from .generate import base_model, image_cache, judges

GRID_IMAGES = 8  # per attack: one row of the concept's grid
LEARNED = ("inversion", "soft_prompt")
IMPLICIT = ("implicit", "nudity")  # attacked on the prompts that name them (the gate's reading is unnamed)


def run(params: PipelineParams, track: bool = True) -> dict:
    delta = params.paths.stage("erase") / "delta.safetensors"
    if not delta.is_file():
        raise inputs.StageInputError(f"{delta}: missing; run the 'erase' stage first")
    entries = inputs.entries(params)
    targets = {e["concept"]: target_of(params, e) for e in entries}  # every input read before any work
    tensors, meta = load_delta(delta)
    pipe, base_hash = base_model(params)
    check(pipe, params.attack)
    panel = judges(params)
    delta_sha = hashlib.sha256(delta.read_bytes()).hexdigest()
    weights = weights_digest(tensors)  # what the results depend on: the same weights in another order's file hit

    code = code_hash("attacks/suite.py")  # once: hashing the sources walks every module they import
    print(f"attack: {len(entries)} concept(s), attacks {', '.join(params.attack.attacks) or 'none'}; base model")
    base = {c: _attack(params, pipe, base_hash, t, panel.judge(t.kind), None, code) for c, t in targets.items()}
    apply_delta(pipe, tensors, meta, base_hash)
    print("attack: the erased model")
    erased = {}
    for c, t in targets.items():
        counted = {o["text"] for o in base[c]["outcomes"]
                   if o["attack"] == "typed" and o["success"] >= params.attack.typed.base_min}
        erased[c] = _attack(params, pipe, f"{base_hash}+{weights}", t, panel.judge(t.kind), counted, code)

    methods = {e["concept"]: inputs.method_for(params, e) for e in entries}
    evaluated = _evaluated(params)
    concepts = {c: summarize(params, targets[c], methods[c], base[c], erased[c], evaluated.get(c) or {})
                for c in targets}
    metrics = {"model": params.model, "base_hash": base_hash, "delta_sha256": delta_sha,
               "budget": params.attack.model_dump(mode="json"), "concepts": concepts}
    out = params.paths.stage("attack")
    with atomic_dir(out) as tmp:
        (tmp / "grids").mkdir()
        for c, m in concepts.items():
            rows = [o["images"][:GRID_IMAGES] for o in erased[c]["outcomes"] if o.get("images") is not None]
            if rows:
                grid(np.concatenate(rows), cols=GRID_IMAGES, zoom=3).save(tmp / m["grid"])
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    if track:
        from ..tracking import log_attacks
        from .release import parent_run

        run_id = parent_run(params)
        if run_id:
            log_attacks(params, run_id, metrics, out)
    return {"concepts": {c: {"attack_max": m["attack_max"], "strongest": (m["strongest"] or {}).get("label")}
                         for c, m in concepts.items()}}


def target_of(params: PipelineParams, entry: dict) -> Target:
    """The concept's probe (the one naming it) and the images an attacker holds, from the generate stage."""
    folder = params.paths.stage("generate") / inputs.slug(entry["concept"])
    record = inputs.read_json(folder / "probes.json", "generate")
    before_path = folder / "before.npz"
    if not before_path.is_file():
        raise inputs.StageInputError(f"{before_path}: missing; run the 'generate' stage first")
    probes = {p["name"]: p for p in record["probes"]}
    probe = probes.get("named") if entry["kind"] in IMPLICIT and "named" in probes else record["probes"][0]
    with np.load(before_path, allow_pickle=False) as before:
        if probe["name"] not in before:
            raise inputs.StageInputError(f"{before_path}: no images for probe {probe['name']!r}; rerun 'generate'")
        images = before[probe["name"]]
    refs = entry.get("reference_images") or []
    if entry["kind"] == "memorized" and refs:  # the attacker holds the memorized image itself
        size = images.shape[1:3]
        images = np.stack([np.asarray(Image.open(r).convert("RGB").resize(size[::-1])) for r in refs])
    return Target(entry["concept"], entry["kind"], probe, images, tuple(entry.get("paraphrases") or ()))


def _attack(params: PipelineParams, pipe, weights_key: str, target: Target, judge,
            typed_texts: set[str] | None, code: str) -> dict:
    """One model's attacks on one concept, from the cache when this exact work was done before."""
    g = params.generate
    key = hashlib.sha256(json.dumps([
        weights_key, target.text, target.kind, target.paraphrases, target.probe["prompts"], target.probe["seeds"],
        hashlib.sha256(target.images.tobytes()).hexdigest(),
        params.attack.model_dump(mode="json", exclude={"gated"}),  # what the gate reads changes no figure
        sorted(typed_texts) if typed_texts is not None else None, g.steps, g.guidance, params.seed,
        str(pipe.unet.device), str(pipe.unet.dtype), judge.describe(), code,
    ], sort_keys=True, default=str).encode()).hexdigest()
    path = params.paths.cache / "attacks" / key[:2] / f"{key}.json"
    cached = _read(path)
    if cached is not None:
        print(f"{target.text}: attacks from the cache ({path.name[:12]})")
        return cached

    plain = image_cache(params, weights_key, pipe)

    def draw(prompts: list[str], seeds: list[int], tokens: str) -> np.ndarray:
        cache = plain
        if tokens:  # the same prompt with other learned vectors draws other images: keyed apart
            cache = copy.copy(plain)
            cache.model_hash = f"{weights_key}+tokens:{tokens}"
        return cache.images(pipe, prompts, seeds, progress=False)

    outcomes = attack(pipe, target, judge, draw, params.attack, steps=g.steps, guidance=g.guidance,
                      seed=params.seed, typed_texts=typed_texts)
    result = {"outcomes": [_record(o) for o in outcomes]}
    _write(path, result)
    return result


def _record(o: Outcome) -> dict:
    return {"attack": o.attack, "success": o.success, "n": o.n, "seconds": o.seconds, **o.detail,
            "images": o.images}


def _write(path: Path, result: dict) -> None:
    """The result's JSON and its images (npz), each atomic; the JSON names the images' sha256."""
    images = {str(i): o["images"] for i, o in enumerate(result["outcomes"]) if o.get("images") is not None}
    with atomic_file(path.with_suffix(".npz"), "wb") as fh:
        np.savez_compressed(fh, **images)
    record = {"outcomes": [{k: v for k, v in o.items() if k != "images"} for o in result["outcomes"]],
              "images_sha256": hashlib.sha256(path.with_suffix(".npz").read_bytes()).hexdigest()}
    with atomic_file(path) as fh:
        json.dump(record, fh, indent=1, sort_keys=True)


def _read(path: Path) -> dict | None:
    """A cached result, or None (a damaged entry is redone, with a warning naming it)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        npz = path.with_suffix(".npz")
        if hashlib.sha256(npz.read_bytes()).hexdigest() != record["images_sha256"]:
            raise ValueError("its images do not match the sha256 recorded beside them")
        with np.load(npz, allow_pickle=False) as images:
            for i, o in enumerate(record["outcomes"]):
                o["images"] = images[str(i)] if str(i) in images else None
        return record
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"{path}: attack cache entry unreadable ({exc}); attacking again", CacheWarning, stacklevel=2)
        return None


def _evaluated(params: PipelineParams) -> dict:
    """The evaluate stage's per-concept probes: its misspelling and paraphrase probes are typed variants
    already drawn on both models (24 images each by default), not drawn again here."""
    path = params.paths.stage("evaluate") / "metrics.json"
    return {c: m.get("probes") or {} for c, m in inputs.read_json(path, "evaluate")["concepts"].items()}


EVALUATED_TYPED = {"misspelling": "misspelling", "paraphrase": "paraphrase"}  # evaluate's probe -> typed family


def summarize(params: PipelineParams, target: Target, method: str, base: dict, erased: dict,
              probes: dict | None = None) -> dict:
    """The concept's rows (each attack on both models, and the evaluation's misspelling and paraphrase
    probes as typed rows) and its strongest gated attack."""
    a = params.attack
    on_erased = {_label(o): o for o in erased["outcomes"]}
    rows = []
    for name, family in EVALUATED_TYPED.items():
        p = (probes or {}).get(name)
        if "typed" not in a.attacks or p is None or p.get("before") is None or p.get("after") is None:
            continue
        counted = p["before"] >= a.typed.base_min
        rows.append({"attack": "typed", "label": f"typed: {p.get('example_prompt', name)}", "family": family,
                     "how": f"the evaluation's {name} probe", "base": round(p["before"], 4),
                     "erased": round(p["after"], 4), "n": p.get("n"), "counted": bool(counted),
                     "gated": "typed" in a.gated and bool(counted)})
    for o in base["outcomes"]:
        e = on_erased.get(_label(o))
        counted = o["attack"] != "typed" or o["success"] >= a.typed.base_min
        row = {"attack": o["attack"], "label": _label(o), "base": round(o["success"], 4),
               "erased": round(e["success"], 4) if e else None, "n": o["n"], "counted": bool(counted),
               "gated": o["attack"] in a.gated and bool(counted)}  # no seconds: outputs are reproducible
        row.update({k: o[k] for k in ("family", "how", "text", "prompt", "strength") if k in o})
        rows.append(row)
    top = strongest(rows, a.gated)
    # Attacks the gate reads that do not bring the concept back even on the base model: too weak to
    # say anything about the erasure (their budget needs raising).
    weak = sorted({r["label"] for r in rows if r["gated"] and r["attack"] != "typed" and r["base"] < 0.8})
    variants_tried = len(chosen_variants(target, a.typed.families, a.typed.per_family)) if "typed" in a.attacks else 0
    return {"kind": target.kind, "method": method, "rows": rows, "typed_tried": variants_tried,
            "strongest": {k: top[k] for k in ("attack", "label", "base", "erased")} if top else None,
            "attack_max": top["erased"] if top else 0.0, "weak": weak,
            "grid": f"grids/{inputs.slug(target.text)}.png",
            "grid_rows": [_label(o) for o in erased["outcomes"] if o.get("images") is not None]}


def _label(o: dict) -> str:
    """An attack's name in reports: "typed: by Vasquez" for a variant, else the attack."""
    return f"typed: {o['text']}" if o["attack"] == "typed" else o["attack"]
