"""Attacks on erased concepts (issue 20): each method x concept kind on the miniworld, every attack of
the attack stage on the base model and on the erased one.

    python benchmarks/attacks.py                      # every row, 64 images per attack -> results/attacks.md
    python benchmarks/attacks.py --rows uce-instance,ca-instance --n 32

A row erases its concept from the shipped miniworld model with the miniworld's recipe (the CLI's,
src/erasure/miniworld/recipes.py; `-rece` rows add UCE's closed-form re-erasure, `-robust` rows the
trainer's robust phase, erase.robust), then runs erasure.attacks.suite.attack
with the pipeline's default budget (params.yaml `attack:`, images raised to n) on the erased model; the
base model's figures are measured once per concept. Prompts: the miniworld card's held-out templates
naming the concept (the frame: those naming it); the learned attacks train on the base model's own
images of those prompts (a memorized image: its reference render). Neighbours (other concepts of the
same kind) are read on the card's prompts after erasure, so a robust option's cost shows. Finished
rows are kept in results/attacks.json: an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEPS, GUIDANCE = 20, 5.0  # the pipeline's generate.steps and guidance

# The concepts attacked: (kind of the card's prompt set, its concept, head, label).
TARGETS = {
    "Pip": ("instance", "Pip", "instance", "Pip"),
    "Vasquez": ("style", "Vasquez", "style", "Vasquez"),
    "with a golden frame": ("implicit-named", None, "frame", "yes"),
    "the midnight lantern poster": ("memorized", "midnight-lantern", "copy", "@midnight-lantern"),
}
KINDS = {"Pip": "instance", "Vasquez": "style", "with a golden frame": "implicit",
         "the midnight lantern poster": "memorized"}
NEIGHBOURS = {"Pip": [("instance", "Bobo"), ("instance", "Zuzu"), ("object", "circle")],
              "Vasquez": [("style", "Okafor"), ("style", "Lindqvist")],
              "with a golden frame": [("object", "circle"), ("style", "Okafor")],
              "the midnight lantern poster": [("memorized", "garden-gate"), ("object", "circle")]}
# The robust phase as `python benchmarks/attacks.py` measures it: trainer.RobustSettings' and the adversarial
# options' defaults (fresh_steps 30 since 2026-12-08), 10 rounds, as README "Robust erasure" ships it.
ROBUST = {"rounds": 10}
ROWS = {  # name: method, concept, extra options, robust phase (erase.robust) or None
    "uce-instance": ("uce", "Pip", {}, None),
    "uce-instance-rece": ("uce", "Pip", {"robust_rounds": 2}, None),
    "uce-instance-robust": ("uce", "Pip", {}, ROBUST),
    "ca-instance": ("ca", "Pip", {}, None),
    "ca-instance-robust": ("ca", "Pip", {}, ROBUST),
    "uce-style": ("uce", "Vasquez", {}, None),
    "uce-style-robust": ("uce", "Vasquez", {}, ROBUST),
    "esd-x-style": ("esd", "Vasquez", {}, None),
    "ca-implicit": ("ca", "with a golden frame", {}, None),
    "ca-implicit-robust": ("ca", "with a golden frame", {}, ROBUST),
    "uce-memorized": ("uce", "the midnight lantern poster", {}, None),
    "uce-memorized-robust": ("uce", "the midnight lantern poster", {}, ROBUST),
}


def card_sets(n: int) -> dict:
    from erasure.miniworld.card import prompt_sets

    return {(s["kind"], s["concept"]): s for s in prompt_sets(n)}


def target(name: str, sets: dict, base_pipe):
    from erasure.attacks.suite import Target
    from erasure.miniworld.concepts import MEMORIZED
    from erasure.miniworld.render import render_memorized
    from erasure.sampling import generate

    kind, concept, head, label = TARGETS[name]
    s = sets[(kind, concept)] if concept else next(v for (k, _), v in sets.items() if k == kind)
    prompts = s["prompts"]
    seeds = list(range(20_000, 20_000 + len(prompts)))
    probe = {"name": "target", "prompts": prompts, "seeds": seeds, "head": head, "label": label,
             "target": {"kind": KINDS[name], "text": name, "contrast": None, "reference": None}}
    if KINDS[name] == "memorized":
        images = render_memorized(MEMORIZED[concept])[None]
    else:
        images = generate(base_pipe, prompts[:32], seeds[:32], steps=STEPS, guidance=GUIDANCE, progress=False)
    return Target(name, KINDS[name], probe, images)


def neighbour_rates(pipe, sets: dict, name: str, n: int) -> dict:
    from erasure.judges.miniworld import MiniworldJudge
    from erasure.sampling import generate

    judge, out = MiniworldJudge(), {}
    for kind, concept in NEIGHBOURS[name]:
        s = sets[(kind, concept)]
        images = generate(pipe, s["prompts"][:n], list(range(30_000, 30_000 + n)), steps=STEPS, guidance=GUIDANCE,
                          progress=False)
        probe = {"head": s["head"], "label": f"@{concept}" if s["head"] == "copy" else s["label"]}
        out[f"{kind}:{concept}"] = float(np.mean(judge.detect(images, probe)))
    return out


def run_attacks(pipe, t, budget, typed_texts=None) -> tuple[list[dict], float]:
    from erasure.attacks.suite import attack
    from erasure.judges.miniworld import MiniworldJudge
    from erasure.sampling import generate

    t0 = time.time()
    outs = attack(pipe, t, MiniworldJudge(), lambda p, s, tok: generate(pipe, p, s, steps=STEPS, guidance=GUIDANCE,
                                                                        progress=False),
                  budget, steps=STEPS, guidance=GUIDANCE, seed=0, typed_texts=typed_texts)
    rows = [{"attack": o.attack, "label": f"typed: {o.detail['text']}" if o.attack == "typed" else o.attack,
             "success": o.success, "n": o.n, "seconds": o.seconds} for o in outs]
    return rows, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    out = RESULTS / "attacks.json"
    kept = json.loads(out.read_text()) if out.is_file() else {"rows": {}, "base": {}}
    if kept.get("n") not in (None, args.n):
        kept = {"rows": {}, "base": {}}
    kept["n"] = args.n
    if not args.report_only:
        from erasure.config import load_params
        from erasure.concept import Concept
        from erasure.models import load_pipeline
        from erasure.miniworld.concepts import MEMORIZED
        from erasure.miniworld.recipes import recipe
        from erasure.miniworld.render import render_memorized
        from erasure.trainer import EraseSettings, erase, plan
        from PIL import Image

        budget = load_params(Path(__file__).resolve().parent.parent / "params.yaml").attack
        budget = budget.model_copy(update={"images": args.n})
        sets = card_sets(args.n)
        base_pipe = load_pipeline()
        for name in args.rows.split(","):
            if name in kept["rows"]:
                continue
            method, concept, extra, robust = ROWS[name]
            t = target(concept, sets, base_pipe)
            if concept not in kept["base"]:
                rows, secs = run_attacks(base_pipe, t, budget)
                kept["base"][concept] = {"rows": rows, "seconds": round(secs, 1),
                                         "neighbours": neighbour_rates(base_pipe, sets, concept, args.n)}
            base = kept["base"][concept]
            counted = {r["label"][len("typed: "):] for r in base["rows"]
                       if r["attack"] == "typed" and r["success"] >= budget.typed.base_min}
            pipe = load_pipeline()
            work = Path(os.environ.get("TMPDIR", "/tmp")) / "erasure-attacks" / name
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            r = recipe(method, KINDS[concept])
            refs = ()
            if KINDS[concept] == "memorized":
                ref = work / "reference.png"
                Image.fromarray(render_memorized(MEMORIZED[TARGETS[concept][1]])).save(ref)
                refs = (ref,)
            c = Concept(text=concept, kind=KINDS[concept], anchor={"Pip": "circle"}.get(concept),
                        reference_images=refs,
                        paraphrases=tuple(MEMORIZED[TARGETS[concept][1]].paraphrases) if refs else ())
            settings = EraseSettings(method=method, checkpoint_every=1000, seed=0,
                                     **{k: v for k, v in r.items() if k != "options"},
                                     options={**r["options"], **extra}, robust=robust or {})
            t0 = time.time()
            erase(pipe, plan([c], settings), settings, work / "run", None, progress=False)
            erase_s = time.time() - t0
            rows, secs = run_attacks(pipe, t, budget, typed_texts=counted)
            if robust:  # the options the row ran with (their defaults move as they are measured)
                from erasure.methods.adversarial import AdversarialOptions

                robust = {**robust, "options": AdversarialOptions(**robust.get("options", {})).model_dump(mode="json")}
            kept["rows"][name] = {"method": method, "concept": concept, "options": extra, "robust": robust,
                                  "erase_seconds": round(erase_s, 1),
                                  "attack_seconds": round(secs, 1), "rows": rows,
                                  "neighbours": neighbour_rates(pipe, sets, concept, args.n),
                                  "threads": torch.get_num_threads()}
            out.write_text(json.dumps(kept, indent=1))
            print(f"{name}: " + ", ".join(f"{x['label']} {x['success']:.2f}" for x in rows), flush=True)
    (RESULTS / "attacks.md").write_text(report(kept))
    print(report(kept))


def report(kept: dict) -> str:
    lines = ["# Attacks on erased concepts (miniworld)", "",
             f"Generated by `python benchmarks/attacks.py`: {kept['n']} images per attack and model (the card's held-out "
             "templates naming the concept), miniworld detector, the pipeline's default attack budget "
             "(params.yaml `attack:`). Success: the share of images showing the concept, base model -> erased. "
             "Typed variants are drawn on the erased model only where the base model renders them (>= 0.5).", "",
             "| row | method | concept | attack | base | erased | s (erased) |", "|---|---|---|---|---|---|---|"]
    if not kept["rows"]:
        lines.append("| (no row measured yet) | | | | | | |")
    for name, r in kept["rows"].items():
        base = {x["label"]: x["success"] for x in kept["base"][r["concept"]]["rows"]}
        for x in r["rows"]:
            lines.append(f"| {name} | {r['method']} | {r['concept']} | {x['label']} | {base.get(x['label'], float('nan')):.2f} "
                         f"| {x['success']:.2f} | {x['seconds']:.0f} |")
    lines += ["", "Cost and neighbours (presence on the card's prompts, base -> erased; erase s: the whole erasure, "
              "its robust phase included):", "", "| row | erase s | attacks s | neighbours |", "|---|---|---|---|"]
    for name, r in kept["rows"].items():
        nb = kept["base"][r["concept"]]["neighbours"]
        lines.append(f"| {name} | {r['erase_seconds']:.1f} | {r['attack_seconds']:.0f} | "
                     + ", ".join(f"{k} {nb[k]:.2f} -> {v:.2f}" for k, v in r["neighbours"].items()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
