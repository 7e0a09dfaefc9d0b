"""Anchor prompts drawn from the miniworld's own captions (training templates)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..concept import Concept
from .concepts import COLORS, INSTANCES, MEMORIZED, OBJECTS, STYLES
from .world import TRAIN_INSTANCE_SUBJECTS, caption, sample_scene, scene_rng


def anchor_prompts(concept: Concept, n: int, seed: int = 0) -> list[str]:
    """Ordinary captions without the concept: no style named, no frame named, no instance.

    For an instance or object the anchor object is forced and the colour left out, so that the
    target prompt ("a picture of Pip") differs from the anchor prompt only in the name; for an
    attribute (a colour) the anchor colour is forced and named ("a picture of a blue circle"). For an
    implicit attribute the scenes keep their styles: it must go from every prompt users write.
    """
    force: dict = {"frame": False} if concept.kind in ("implicit", "nudity") else {"style": "", "frame": False}
    name_color = None
    if concept.kind in ("instance", "object") and concept.anchor in OBJECTS:
        force["object"] = concept.anchor
        name_color = False
    if concept.kind == "attribute" and concept.anchor in COLORS:
        force["color"] = concept.anchor
        name_color = True
    rng = np.random.default_rng([seed, 7])
    out, i = [], 0
    while len(out) < n:
        scene = sample_scene(scene_rng(seed + 9_000_000, i))
        i += 1
        if scene.memorized or scene.instance:
            continue
        scene = dataclasses.replace(scene, **force)
        out.append(caption(scene, rng, held_out=False, name_frame=False, name_color=name_color))
    return out


def preservation_prompts(exclude: list[str], n: int, seed: int = 0) -> list[str]:
    """Captions as the world writes them (styles, instances, colours, the frame named at its share)
    skipping any that names one of `exclude`."""
    banned = [e.lower() for e in exclude]
    rng = np.random.default_rng([seed, 11])
    out, i = [], 0
    while len(out) < n:
        scene = sample_scene(scene_rng(seed + 8_000_000, i))
        i += 1
        text = caption(scene, rng, held_out=False)
        if not any(b in text.lower() for b in banned):
            out.append(text)
    return out


def fragile_prompts(exclude: list[str], n: int, seed: int = 0) -> list[str]:
    """Captions of what erasing a neighbour breaks first and ordinary captions rarely show: the
    memorized images and the instances not in `exclude` (about 1% and 3% of captions each), as the
    world captions them, in turn."""
    banned = [e.lower() for e in exclude]
    kept = lambda text: not any(b in text.lower() for b in banned)  # noqa: E731
    # What can still be found, and how many captions of each the answer reads: a memorized image has
    # one caption; an instance needs its share of n. The scan stops when each has them (scanning for
    # a fixed total instead read 20k+ scenes when only a rare output was left: most of a closed-form
    # erase's time).
    wanted = {k: 1 for k, m in MEMORIZED.items() if kept(m.caption)}
    instances = [k for k, inst in INSTANCES.items()
                 if any(kept(s.format(n=inst.name, o=inst.object)) for s in TRAIN_INSTANCE_SUBJECTS)]
    wanted.update({k: -(-n // max(1, len(wanted) + len(instances))) for k in instances})
    rng = np.random.default_rng([seed, 13])
    found: dict[str, list[str]] = {}
    missing = set(wanted)
    i = 0
    while missing and i < 200_000:
        scene = sample_scene(scene_rng(seed + 10_000_000, i))
        i += 1
        what = scene.memorized or scene.instance
        if not what:
            continue
        text = caption(scene, rng, held_out=False)  # drawn for every such scene: the same captions whatever is excluded
        if kept(text):
            found.setdefault(what, []).append(text)
            if len(found[what]) >= wanted.get(what, 0):
                missing.discard(what)
    if not found:
        return []
    groups = [found[k] for k in sorted(found)]
    return [groups[i % len(groups)][(i // len(groups)) % len(groups[i % len(groups)])] for i in range(n)]


def neighbour_prompts(exclude: list[tuple[str, str]], n: int, seed: int = 0) -> list[str]:
    """n captions (training templates) of what erasing `exclude` ((text, kind) pairs) endangers first:
    the concepts of the same family left off the list, each forced into ordinary scenes, in turn. The
    other styles beside an erased style; the other objects beside an erased object, an instance (its
    class is an object) or the implicit attribute (it surrounds any object); the other colours beside
    an erased attribute (a colour), named. Instances and memorized images are fragile_prompts' (any kind
    of erasure endangers them)."""
    banned = {t.casefold() for t, _ in exclude}
    kinds = {k for _, k in exclude}
    names: list[tuple[str, str]] = []
    if "style" in kinds:
        names += [("style", a) for a in STYLES if a.casefold() not in banned]
    if kinds & {"object", "instance", "implicit", "nudity"}:
        names += [("object", o) for o in OBJECTS if o.casefold() not in banned]
    if "attribute" in kinds:
        names += [("color", c) for c in COLORS if c.casefold() not in banned]
    if not names or not n:
        return []
    rng = np.random.default_rng([seed, 17])
    out, i = [], 0
    while len(out) < n:
        scene = sample_scene(scene_rng(seed + 7_000_000, i))
        i += 1
        if scene.memorized or scene.instance or any(getattr(scene, k).casefold() in banned
                                                    for k in ("style", "object", "color")):
            continue
        key, name = names[len(out) % len(names)]
        scene = dataclasses.replace(scene, **{key: name}, frame=False)
        out.append(caption(scene, rng, held_out=False, name_frame=False, name_color=True if key == "color" else None))
    return out
