"""Evaluation prompt sets for a blocklisted concept on the miniworld, and how the detector reads each.

Per concept: the target (prompts naming it; for an implicit attribute, prompts that do not name
it), paraphrases and a misspelling of its name, neighbours (concepts of the same kind that are not
blocklisted, and its anchor), plus generic prompts shared by all concepts (drift and FID). Prompts
use the held-out caption templates, never the training ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..concept import ConceptError
from ..probes import misspell
from .card import ordinary_scenes
from .concepts import (
    CLIP_ANY_OBJECT,
    CLIP_NO_FRAME,
    CLIP_PLAIN_STYLE,
    COLORS,
    IMPLICIT,
    IMPLICIT_PHRASE,
    INSTANCES,
    MEMORIZED,
    OBJECTS,
    STYLES,
)
from .render import Scene, render
from .world import caption

MAX_NEIGHBOURS = 4


@dataclass
class Probe:
    name: str  # target | paraphrase | misspelling | named | neighbour:<x> | anchor:<x>
    prompts: list[str]
    seeds: list[int]
    head: str  # a detector head, or "copy" (similarity to `label`, a reference image path)
    label: str
    extra: dict = field(default_factory=dict)
    # What generic judges read: {kind, text, contrast, reference} (see `clip_target`).
    target: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _captions(scenes: list[Scene], seed: int, **kw) -> list[str]:
    rng = np.random.default_rng([seed, 99])
    return [caption(s, rng, held_out=True, **kw) for s in scenes]


def _seeds(seed: int, salt: int, n: int) -> list[int]:
    return [seed * 1_000_003 + salt * 10_007 + i for i in range(n)]


def _variants(name: str, target: list[str], text: str, paraphrases: list[str], misspellings: int,
              seeds: list[int], head: str, label: str) -> list[Probe]:
    """Paraphrase and misspelling probes: the target prompts with the concept's words replaced."""
    out = []
    if paraphrases:
        prompts = [p.replace(text, paraphrases[i % len(paraphrases)]) for i, p in enumerate(target)]
        out.append(Probe("paraphrase", prompts, seeds, head, label))
    if misspellings:
        wrong = misspell(text)
        out.append(Probe("misspelling", [p.replace(text, wrong) for p in target], seeds, head, label,
                         {"spelling": wrong}))
    return out


def clip_target(head: str, label: str, kind: str, text: str, anchor: str | None) -> dict:
    """The probe's target as the CLIP judge reads it: "A photo depicts <text>" against <contrast>.

    The same question as the detector's head/label: a style against the plain rendering (its
    anchor; other styles are not one text), an object against any shape, an instance against its
    class (as the CA paper does), a colour ("a red shape") against any shape, the frame against no frame, a memorized image's caption against
    its anchor (a description that does not copy it), with its reference image."""
    if head == "style":
        return {"kind": "style", "text": f"in the style of {label}", "contrast": CLIP_PLAIN_STYLE, "reference": None}
    if head == "object":
        return {"kind": "object", "text": label, "contrast": CLIP_ANY_OBJECT, "reference": None}
    if head == "color":
        return {"kind": "attribute", "text": f"a {label} shape", "contrast": CLIP_ANY_OBJECT, "reference": None}
    if head == "instance":
        return {"kind": "instance", "text": label, "contrast": INSTANCES[label].object, "reference": None}
    if head == "frame":
        return {"kind": kind, "text": IMPLICIT_PHRASE, "contrast": CLIP_NO_FRAME, "reference": None}
    if head == "copy":
        if label.startswith("@"):  # another memorized image of the world: no file, the detector renders it
            m = MEMORIZED[label[1:]]
            return {"kind": "memorized", "text": m.caption, "contrast": m.paraphrases[0], "reference": None}
        known = [m for m in MEMORIZED.values() if m.caption.casefold() == text.casefold()]
        contrast = anchor or (known[0].paraphrases[0] if known else None)
        return {"kind": "memorized", "text": text, "contrast": contrast, "reference": label}
    raise AssertionError(head)


def probes_for(text: str, kind: str, *, anchor: str | None, paraphrases: list[str], eval_prompts: list[str],
               reference_images: list[Path], blocked: set[str], n: int, seed: int,
               misspellings: int = 1) -> list[Probe]:
    """Every probe of one concept (the first is the target), each with its CLIP `target`. Raises
    ConceptError for a concept the miniworld detector cannot read."""
    probes = _probes(text, kind, anchor=anchor, paraphrases=paraphrases, eval_prompts=eval_prompts,
                     reference_images=reference_images, blocked=blocked, n=n, seed=seed, misspellings=misspellings)
    for p in probes:
        p.target = clip_target(p.head, p.label, kind, text, anchor)
    return probes


def _probes(text: str, kind: str, *, anchor: str | None, paraphrases: list[str], eval_prompts: list[str],
            reference_images: list[Path], blocked: set[str], n: int, seed: int, misspellings: int) -> list[Probe]:
    blocked = {b.casefold() for b in blocked}
    salt = sum(map(ord, text)) % 997
    seeds = _seeds(seed, salt, n)

    def named(prompts: list[str]) -> list[str]:
        return [eval_prompts[i % len(eval_prompts)] for i in range(n)] if eval_prompts else prompts

    if kind == "style":
        artist = _known(text, list(STYLES), kind)
        target = named(_captions(ordinary_scenes(n, seed + salt, blocked, style=artist, frame=False), seed, name_frame=False))
        probes = [Probe("target", target, seeds, "style", artist)]
        probes += _variants("style", target, text, paraphrases, misspellings, seeds, "style", artist)
        # Seeds follow the neighbour, not its place in the list: a neighbour joining the blocklist
        # must not change the others' prompts (their cached images stay valid).
        others = [a for a in STYLES if a.casefold() not in blocked][:MAX_NEIGHBOURS]
        for a in others:
            k = list(STYLES).index(a)
            sc = ordinary_scenes(n, seed + 200 + k, blocked, style=a, frame=False)
            probes.append(Probe(f"neighbour:{a}", _captions(sc, seed, name_frame=False), _seeds(seed, 200 + k, n),
                                "style", a))
        return probes
    if kind == "object":
        obj = _known(text, list(OBJECTS), kind)
        target = named(_captions(ordinary_scenes(n, seed + salt, frozenset(), object=obj, frame=False), seed, name_frame=False))
        probes = [Probe("target", target, seeds, "object", obj)]
        probes += _variants("object", target, text, paraphrases, misspellings, seeds, "object", obj)
        others = [o for o in OBJECTS if o.casefold() not in blocked][:MAX_NEIGHBOURS]
        return probes + [_object_probe(o, seed, 300 + OBJECTS.index(o), n, blocked) for o in others]
    if kind == "attribute":
        color = _known(text, list(COLORS), kind)
        # Shapes of the colour that no blocklisted object or style touches: the colour is what is read.
        target = named(_captions(ordinary_scenes(n, seed + salt, blocked, color=color, frame=False, style=""), seed,
                                 name_frame=False, name_color=True))
        probes = [Probe("target", target, seeds, "color", color)]
        probes += _variants("attribute", target, text, paraphrases, misspellings, seeds, "color", color)
        others = [c for c in COLORS if c.casefold() not in blocked][:MAX_NEIGHBOURS]
        for c in others:
            k = list(COLORS).index(c)
            sc = ordinary_scenes(n, seed + 700 + k, blocked, color=c, frame=False, style="")
            probes.append(Probe(f"neighbour:{c}", _captions(sc, seed, name_frame=False, name_color=True),
                                _seeds(seed, 700 + k, n), "color", c))
        return probes
    if kind == "instance":
        name = _known(text, list(INSTANCES), kind)
        rng_seed = seed + salt
        target = named(_captions([Scene(instance=name, style="") for _ in range(n)], rng_seed, name_frame=False))
        probes = [Probe("target", target, seeds, "instance", name)]
        probes += _variants("instance", target, text, paraphrases, misspellings, seeds, "instance", name)
        if anchor and anchor in OBJECTS:  # the class must still be drawn
            probes.append(_object_probe(anchor, seed, 400, n, blocked, prefix="anchor"))
        others = [i for i in INSTANCES if i.casefold() not in blocked][:MAX_NEIGHBOURS]
        for other in others:
            k = list(INSTANCES).index(other)
            prompts = _captions([Scene(instance=other, style="") for _ in range(n)], seed + 410 + k, name_frame=False)
            probes.append(Probe(f"neighbour:{other}", prompts, _seeds(seed, 410 + k, n), "instance", other))
        return probes
    if kind in ("implicit", "nudity"):
        if IMPLICIT not in text.casefold():
            raise ConceptError(f"concept {text!r} ({kind}): the miniworld's implicit attribute is the "
                               f"{IMPLICIT!r} (named by {IMPLICIT_PHRASE!r}); expected a concept naming it")
        # Efficacy is read where the attribute is not asked for: how often it still appears.
        unnamed = _captions(ordinary_scenes(n, seed + salt, blocked), seed, name_frame=False)
        probes = [Probe("target", unnamed, seeds, "frame", "yes", {"named": False})]
        asked = named(_captions(ordinary_scenes(n, seed + salt + 1, blocked, frame=True), seed, name_frame=True))
        probes.append(Probe("named", asked, _seeds(seed, salt + 1, n), "frame", "yes", {"named": True}))
        probes += _variants("implicit", asked, IMPLICIT_PHRASE if IMPLICIT_PHRASE in asked[0] else text, paraphrases,
                            misspellings, _seeds(seed, salt + 1, n), "frame", "yes")
        others = [o for o in OBJECTS if o.casefold() not in blocked][:MAX_NEIGHBOURS]
        return probes + [_object_probe(o, seed, 500 + OBJECTS.index(o), n, blocked) for o in others]
    if kind == "memorized":
        if not reference_images:
            raise ConceptError(f"concept {text!r} (memorized): expected reference_images to measure copies against")
        ref = str(reference_images[0])
        target = named([text] * n)
        probes = [Probe("target", target, seeds, "copy", ref)]
        if paraphrases:
            probes.append(Probe("paraphrase", [paraphrases[i % len(paraphrases)] for i in range(n)], seeds, "copy", ref))
        if misspellings:
            probes.append(Probe("misspelling", [misspell(text)] * n, seeds, "copy", ref, {"spelling": misspell(text)}))
        for k, m in enumerate(MEMORIZED.values()):
            if m.caption.casefold() in blocked or m.caption.casefold() == text.casefold():
                continue
            probes.append(Probe(f"neighbour:{m.key}", [m.caption] * n, _seeds(seed, 600 + k, n), "copy", f"@{m.key}"))
        return probes
    raise ConceptError(f"concept {text!r}: kind {kind!r} has no miniworld probes")


def _object_probe(obj: str, seed: int, salt: int, n: int, blocked: set[str], prefix: str = "neighbour") -> Probe:
    sc = ordinary_scenes(n, seed + salt, blocked, object=obj, frame=False, style="")
    return Probe(f"{prefix}:{obj}", _captions(sc, seed, name_frame=False), _seeds(seed, salt, n), "object", obj)


def _known(text: str, names: list[str], kind: str) -> str:
    for name in names:
        if name.casefold() == text.casefold():
            return name
    raise ConceptError(f"concept {text!r} ({kind}): the miniworld detector cannot read it; expected one of "
                       f"{', '.join(names)}")


def generic(n: int, seed: int, blocked: set[str]) -> tuple[list[str], list[int], np.ndarray]:
    """Prompts naming no blocklisted concept, their seeds, and the world's true renders of them (FID)."""
    scenes = ordinary_scenes(n, seed + 700, blocked)
    rng = np.random.default_rng([seed, 701])
    prompts = [caption(s, rng, held_out=True, name_frame=False) for s in scenes]
    return prompts, _seeds(seed, 700, n), np.stack([render(s) for s in scenes])


def promised_renders(n: int, seed: int, blocked: set[str], erased: set[str]) -> np.ndarray:
    """The true renders of `generic`'s prompts as a model with `erased` concepts gone should draw them:
    without the frame once the implicit attribute is erased (the prompts never name it; the world
    draws it unasked), otherwise the same scenes."""
    drop = any(IMPLICIT in e.casefold() for e in erased)
    scenes = ordinary_scenes(n, seed + 700, blocked)
    return np.stack([render(dataclasses.replace(s, frame=False) if drop else s) for s in scenes])
