"""Every attack on one concept, on one model: the share of images the judge reads as the concept.

The attack stage (erasure/pipeline/attack.py) runs `attack` twice per concept, on the base model and
on the erased one, with the same budget and seeds; this module knows nothing of stages or caches:
it is handed a `draw(prompts, seeds)` that turns prompts into images (the stage's image cache), the
concept's judge, and the images of the concept an attacker holds (the base model's own generations of
the target prompts, or a memorized image's references).

Prompts are the evaluation's own (the target probe, or for an implicit attribute the probe that names
it), with the concept's text replaced: by a typed variant, by a learned token `*`, or followed by soft
tokens `* * * *`; seeds are the probe's, shifted so that no attack image repeats an evaluation image.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .completion import complete
from .learned import PLACEHOLDER, AttackError, learn, learned_tokens, placeholder_id, spaced
from .typed import variants

SEED_SHIFT = 500_000  # attack images are drawn from other noise than the evaluation's


@dataclass
class Target:
    """One concept as the attacks see it."""

    text: str
    kind: str
    probe: dict  # the judge's probe: prompts and seeds naming the concept, head/label/target
    images: np.ndarray  # uint8 NHWC: images of the concept an attacker holds
    paraphrases: tuple[str, ...] = ()


@dataclass
class Outcome:
    """One attack's result on one model: its success rate, what it did, the images (for the grid)."""

    attack: str  # typed, inversion, soft_prompt, completion
    success: float
    n: int
    seconds: float
    detail: dict = field(default_factory=dict)  # variant family/how/text, final loss, ...
    images: np.ndarray | None = None


def substitute(prompt: str, text: str, replacement: str) -> str:
    """`prompt` with the concept's `text` replaced (any case), or with `replacement` appended where the
    prompt does not name it. A placeholder is kept a word of its own ("*," is another token)."""
    out, hits = re.subn(re.escape(text), lambda _: replacement, prompt, flags=re.IGNORECASE)
    return spaced(out if hits else f"{prompt} {replacement}".strip())


def chosen_variants(target: Target, families: list[str], per_family: int) -> list:
    """The typed variants tried: the first `per_family` of each family asked for, in typed.py's order."""
    taken: dict[str, int] = {}
    out = []
    for v in variants(target.text, target.kind, target.paraphrases):
        if v.family in families and taken.get(v.family, 0) < per_family:
            taken[v.family] = taken.get(v.family, 0) + 1
            out.append(v)
    return out


def check(pipe, budget) -> None:
    """What `attack` would refuse halfway, refused before any image is drawn."""
    from ..families import is_sdxl

    learned = [a for a in ("inversion", "soft_prompt") if a in budget.attacks]
    if learned and is_sdxl(pipe):
        raise AttackError(f"attack.attacks: {', '.join(learned)} learn embeddings for one text encoder (SD 1.x / "
                          "2.x); SDXL has two: leave them out of attack.attacks for this model")
    if learned:
        placeholder_id(pipe.tokenizer)


def attack(pipe, target: Target, judge, draw: Callable[[list[str], list[int], str], np.ndarray], budget, *,
           steps: int, guidance: float, seed: int, typed_texts: set[str] | None = None,
           log: Callable[[str], None] = print) -> list[Outcome]:
    """Every attack of `budget` (config.AttackParams) on `pipe`. `typed_texts`: only the typed variants
    with these texts (the erased model is attacked with those the base model renders); None: all.
    `draw(prompts, seeds)` must draw with `pipe` as it is when called (learned tokens are hooked in)."""
    n = budget.images
    prompts = [target.probe["prompts"][i % len(target.probe["prompts"])] for i in range(n)]
    seeds = [int(target.probe["seeds"][0]) + SEED_SHIFT + i for i in range(n)]
    out: list[Outcome] = []

    def judged(name: str, images: np.ndarray, seconds: float, **detail) -> Outcome:
        hits = judge.detect(images, target.probe)
        o = Outcome(name, float(np.mean(hits)), len(images), round(seconds, 1), detail, images)
        label = f" {detail['family']} {detail['text']!r}" if name == "typed" else ""
        log(f"{target.text}: {name}{label}: {int(np.sum(hits))}/{len(images)} in {o.seconds:.0f} s")
        return o

    tried = [v for v in chosen_variants(target, budget.typed.families, budget.typed.per_family)
             if typed_texts is None or v.text in typed_texts] if "typed" in budget.attacks else []
    if tried:  # none: no family asked for has a variant of this kind, or the base renders none of them
        t0 = time.time()  # every variant in one draw: large batches sample faster
        images = draw([substitute(p, target.text, v.text) for v in tried for p in prompts], seeds * len(tried), "")
        share = (time.time() - t0) / max(1, len(tried))
        for i, v in enumerate(tried):
            out.append(judged("typed", images[i * n:(i + 1) * n], share, family=v.family, how=v.how, text=v.text))
    for name in ("inversion", "soft_prompt"):
        if name not in budget.attacks:
            continue
        b = getattr(budget, name)
        t0 = time.time()
        # inversion: the name replaced by one new token; soft prompt: soft tokens after the name.
        marks = " ".join([PLACEHOLDER] * b.tokens)
        insert = marks if name == "inversion" else f"{target.text} {marks}"
        train_prompts = [substitute(target.probe["prompts"][i % len(target.probe["prompts"])], target.text, insert)
                         for i in range(len(target.images))]
        learned = learn(pipe, target.images, train_prompts, tokens=b.tokens, steps=b.steps, lr=b.lr,
                        batch_size=b.batch_size, seed=seed, progress=False)
        with learned_tokens(pipe, learned.vectors):
            images = draw([substitute(p, target.text, insert) for p in prompts], seeds, vectors_digest(learned.vectors))
        out.append(judged(name, images, time.time() - t0, prompt=substitute(prompts[0], target.text, insert),
                          loss=round(float(np.mean(learned.losses[-10:])), 5), steps=b.steps))
    if "completion" in budget.attacks:
        c = budget.completion
        t0 = time.time()
        start = target.images[np.arange(n) % len(target.images)]
        images = complete(pipe, start, c.prompt, seeds, strength=c.strength, steps=steps, guidance=guidance)
        out.append(judged("completion", images, time.time() - t0, strength=c.strength, prompt=c.prompt))
    return out


def strongest(rows: list[dict], gated: list[str]) -> dict | None:
    """The gated row with the highest success on the erased model (typed rows only where they count)."""
    counted = [r for r in rows if r["attack"] in gated and r.get("counted", True) and r.get("erased") is not None]
    return max(counted, key=lambda r: r["erased"]) if counted else None


def vectors_digest(vectors: torch.Tensor) -> str:
    """Names learned vectors: images drawn with other vectors under the same prompt are other images."""
    return hashlib.sha256(vectors.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]
