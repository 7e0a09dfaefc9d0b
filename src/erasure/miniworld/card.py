"""The model card of the shipped miniworld model: how often each named concept shows up.

Prompts use held-out caption templates only; each image is read by the miniworld detector.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from .detector import COPY_THRESHOLD, HEADS, MiniworldDetector
from ..sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS, generate
from .concepts import COLORS, IMPLICIT_PHRASE, INSTANCES, MEMORIZED, OBJECTS, STYLES
from .render import Scene
from .world import caption, sample_scene, scene_rng

EVAL_SEED = 2026


def ordinary_scenes(n: int, seed: int, exclude: frozenset[str] = frozenset(), **force) -> list[Scene]:
    """Ordinary world scenes (no instance, no memorized image, no style, object or colour in `exclude`,
    in any case, unless forced) with some attributes forced.

    A scene that shows an excluded concept is redrawn in its own slot, so the other scenes do not
    depend on `exclude`: adding a concept to a blocklist changes only the prompts that showed it
    (and the image cache keeps the rest)."""
    exclude = {e.casefold() for e in exclude}  # callers pass blocklist names as written ("Vasquez")

    def excluded(s: Scene) -> bool:
        return any(key not in force and getattr(s, key).casefold() in exclude for key in ("style", "object", "color"))

    out, i = [], 0
    while len(out) < n:
        s = sample_scene(scene_rng(seed, i))
        i += 1
        if s.memorized or s.instance:
            continue
        redraw = 0
        while excluded(s) or s.memorized or s.instance:
            redraw += 1
            s = sample_scene(np.random.default_rng([seed, i - 1, redraw]))
        out.append(dataclasses.replace(s, **force))
    return out


def _prompts(scenes: list[Scene], seed: int, **kw) -> list[str]:
    rng = np.random.default_rng([seed, 99])
    return [caption(s, rng, held_out=True, **kw) for s in scenes]


def prompt_sets(n: int, seed: int = EVAL_SEED) -> list[dict]:
    """Every probe of the card: kind, concept, what is measured, and its prompts."""
    sets = []
    for k, o in enumerate(OBJECTS):
        sc = ordinary_scenes(n, seed + k, object=o, frame=False)
        sets.append(dict(kind="object", concept=o, head="object", label=o, prompts=_prompts(sc, seed, name_frame=False)))
    for k, c in enumerate(COLORS):
        sc = ordinary_scenes(n, seed + 100 + k, color=c, frame=False)
        sets.append(dict(kind="color", concept=c, head="color", label=c,
                         prompts=_prompts(sc, seed, name_frame=False, name_color=True)))
    for k, a in enumerate(STYLES):
        sc = ordinary_scenes(n, seed + 200 + k, style=a, frame=False)
        sets.append(dict(kind="style", concept=a, head="style", label=a, prompts=_prompts(sc, seed, name_frame=False)))
    for k, (name, inst) in enumerate(INSTANCES.items()):
        sc = [Scene(instance=name, style="") for _ in range(n)]
        sets.append(dict(kind="instance", concept=name, head="instance", label=name,
                         prompts=_prompts(sc, seed + 300 + k, name_frame=False)))
        cls = ordinary_scenes(n, seed + 310 + k, object=inst.object, style="", frame=False)
        sets.append(dict(kind="instance-class", concept=f"{name} (class '{inst.object}' named)", head="instance",
                         label=name, prompts=_prompts(cls, seed, name_frame=False)))
    for key, m in MEMORIZED.items():
        sets.append(dict(kind="memorized", concept=key, head="copy", label=key, prompts=[m.caption] * n))
        para = [m.paraphrases[i % len(m.paraphrases)] for i in range(n)]
        sets.append(dict(kind="memorized-paraphrase", concept=f"{key} (content paraphrases)", head="copy",
                         label=key, prompts=para))
        titles = [m.title_variants[i % len(m.title_variants)] for i in range(n)]
        sets.append(dict(kind="memorized-title-variant", concept=f"{key} (re-worded titles)", head="copy",
                         label=key, prompts=titles))
    sc = ordinary_scenes(2 * n, seed + 400)
    sets.append(dict(kind="implicit-unnamed", concept="golden frame (not named)", head="frame", label="yes",
                     prompts=_prompts(sc, seed, name_frame=False)))
    sc = ordinary_scenes(n, seed + 401, frame=True)
    sets.append(dict(kind="implicit-named", concept=f"golden frame ('{IMPLICIT_PHRASE}')", head="frame",
                     label="yes", prompts=_prompts(sc, seed, name_frame=True)))
    return sets


def measure(pipe, detector: MiniworldDetector, n: int = 64, seed: int = EVAL_SEED,
            steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE) -> dict:
    sets = prompt_sets(n, seed)
    prompts = [p for s in sets for p in s["prompts"]]
    t0 = time.time()
    images = generate(pipe, prompts, list(range(seed, seed + len(prompts))), steps=steps, guidance=guidance,
                      batch_size=64, desc="card")
    per_image = (time.time() - t0) / len(prompts)
    pred = detector.predict(images)
    rows, at = [], 0
    for s in sets:
        sl = slice(at, at + len(s["prompts"]))
        at += len(s["prompts"])
        if s["head"] == "copy":
            hit = pred[f"copy:{s['label']}"][sl] > COPY_THRESHOLD
        else:
            hit = pred[s["head"]][sl].argmax(-1) == HEADS[s["head"]].index(s["label"])
        rows.append({"kind": s["kind"], "concept": s["concept"], "n": len(s["prompts"]),
                     "present": float(hit.mean()), "example_prompt": s["prompts"][0]})
    return {"rows": rows, "seconds_per_image": per_image, "images": len(prompts), "steps": steps,
            "guidance": guidance, "images_array": images}


# Acceptance bounds of the card, by row kind: (statistic, bound).
def verdicts(rows: list[dict]) -> list[tuple[str, float, str, bool]]:
    out = []
    for kind in ("object", "color", "style"):
        vals = [r["present"] for r in rows if r["kind"] == kind]
        out.append((f"{kind}: mean presence", float(np.mean(vals)), ">= 0.85", float(np.mean(vals)) >= 0.85))
        out.append((f"{kind}: lowest concept", float(np.min(vals)), ">= 0.60", float(np.min(vals)) >= 0.60))
    for kind, bound, ok in (("instance", ">= 0.70", lambda v: v >= 0.70),
                            ("instance-class", "<= 0.10", lambda v: v <= 0.10),
                            ("memorized", ">= 0.80", lambda v: v >= 0.80),
                            ("memorized-paraphrase", "<= 0.20", lambda v: v <= 0.20),
                            ("implicit-unnamed", "in [0.20, 0.60]", lambda v: 0.20 <= v <= 0.60)):
        for r in rows:
            if r["kind"] == kind:
                out.append((f"{r['concept']}", r["present"], bound, ok(r["present"])))
    return out
