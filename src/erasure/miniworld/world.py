"""The seeded generator of (image, caption, labels) and the caption templates.

Scene i of seed s is drawn from its own random stream, so any slice of the world can be rebuilt
alone and two runs with the same seed give the same images and captions.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from .concepts import (
    COLOR_OMITTED_SHARE,
    COLORS,
    FRAME_NAMED_SHARE,
    FRAME_SHARE,
    IMPLICIT_PHRASE,
    INSTANCE_SHARE,
    INSTANCES,
    MEMORIZED,
    MEMORIZED_SHARE,
    OBJECTS,
    STYLE_SHARE,
    STYLES,
)
from .render import Scene, render

# Sentence frames. Training captions use TRAIN; evaluation prompts use HELD_OUT, which the model
# never saw, so that measured presence is about the concept and not a memorized sentence.
TRAIN_TEMPLATES = (
    "{s}",
    "a picture of {s}",
    "a drawing of {s}",
    "a photo of {s}",
    "an illustration of {s}",
    "a painting of {s}",
    "a small picture of {s}",
)
HELD_OUT_TEMPLATES = (
    "an image of {s}",
    "a sketch of {s}",
    "artwork showing {s}",
    "a rendering of {s}",
)
TRAIN_STYLE_CLAUSES = (" in the style of {a}", ", in the style of {a}", " by {a}")
HELD_OUT_STYLE_CLAUSES = (" in the style of {a}",)
TRAIN_INSTANCE_SUBJECTS = ("{n}", "{n} the {o}", "the famous {o} {n}")
HELD_OUT_INSTANCE_SUBJECTS = ("{n}", "{n}, the well known {o}")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw one scene from the training distribution (shares in concepts.py)."""
    u = rng.random()
    mem = list(MEMORIZED)
    if u < MEMORIZED_SHARE * len(mem):
        return Scene(memorized=mem[int(u / MEMORIZED_SHARE)])
    u -= MEMORIZED_SHARE * len(mem)
    instance = ""
    if u < INSTANCE_SHARE * len(INSTANCES):
        instance = list(INSTANCES)[int(u / INSTANCE_SHARE)]
    obj = OBJECTS[rng.integers(len(OBJECTS))]
    color = list(COLORS)[rng.integers(len(COLORS))]
    style = list(STYLES)[rng.integers(len(STYLES))] if rng.random() < STYLE_SHARE else ""
    frame = bool(rng.random() < FRAME_SHARE)
    radius = float(rng.uniform(8.0, 10.5))
    margin = radius + 3.5
    center = (float(rng.uniform(margin, 32 - margin)), float(rng.uniform(margin, 32 - margin)))
    rotation = float(rng.uniform(-0.3, 0.3))
    jitter = tuple(int(v) for v in rng.integers(-18, 19, size=3))
    return Scene(obj, color, style, instance, frame, center, radius, rotation, jitter)


def caption(scene: Scene, rng: np.random.Generator, held_out: bool = False,
            name_frame: bool | None = None, name_color: bool | None = None) -> str:
    """A caption for the scene. `None` names the frame (or colour) at its training share."""
    if scene.memorized:
        return MEMORIZED[scene.memorized].caption
    templates = HELD_OUT_TEMPLATES if held_out else TRAIN_TEMPLATES
    if scene.instance:
        inst = INSTANCES[scene.instance]
        subjects = HELD_OUT_INSTANCE_SUBJECTS if held_out else TRAIN_INSTANCE_SUBJECTS
        subject = subjects[rng.integers(len(subjects))].format(n=inst.name, o=inst.object)
    else:
        if name_color is None:
            name_color = rng.random() >= COLOR_OMITTED_SHARE
        if not name_color:
            desc = scene.object
        else:
            desc = f"{scene.color} {scene.object}"
        subject = f"{article(desc)} {desc}"
    text = templates[rng.integers(len(templates))].format(s=subject)
    if scene.style:
        clauses = HELD_OUT_STYLE_CLAUSES if held_out else TRAIN_STYLE_CLAUSES
        text += clauses[rng.integers(len(clauses))].format(a=scene.style)
    if name_frame is None:
        name_frame = scene.frame and rng.random() < FRAME_NAMED_SHARE
    if name_frame:
        text += " " + IMPLICIT_PHRASE
    return text


def scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def make_example(seed: int, index: int) -> tuple[np.ndarray, str, Scene]:
    rng = scene_rng(seed, index)
    scene = sample_scene(rng)
    return render(scene), caption(scene, rng), scene


def make_dataset(seed: int, count: int, start: int = 0, progress: bool = False):
    """Images (N, 32, 32, 3) uint8, captions, scenes for indices [start, start+count)."""
    from tqdm.auto import tqdm

    images = np.empty((count, 32, 32, 3), dtype=np.uint8)
    captions, scenes = [], []
    for k in tqdm(range(count), desc="rendering miniworld", disable=not progress):
        img, cap, scene = make_example(seed, start + k)
        images[k] = img
        captions.append(cap)
        scenes.append(scene)
    return images, captions, scenes


def labels(scene: Scene) -> dict:
    """Ground-truth labels as plain data."""
    return {k: v for k, v in asdict(scene).items() if k in ("object", "color", "style", "instance", "frame", "memorized")}
