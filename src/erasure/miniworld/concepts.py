"""The miniworld's concepts as plain data: what exists, how a prompt names it, what it looks like.

Every concept kind of the seed papers has an analogue here (see README, "The miniworld"):
objects (Imagenette classes), colours, artist styles, named instances (Grumpy Cat vs cat),
memorized images (a memorized artwork) and an implicit attribute (nudity: appears unprompted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

IMAGE_SIZE = 32

OBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross", "heart", "moon")

# RGB; distinct hues so that a detector can read them under blur, noise and colour shift.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "purple": (140, 50, 185),
    "orange": (245, 135, 25),
}


@dataclass(frozen=True)
class Style:
    """A rendering style named like an artist: background palette, fill texture, colour treatment."""

    artist: str
    background: tuple[int, int, int]
    fill: str  # solid | stripes | dots | outline | checker | wash
    description: str


# "plain" is what an image looks like when no style is named; it is not a concept to erase.
PLAIN = Style("", (185, 185, 185), "solid", "solid fill on a grey background")

STYLES: dict[str, Style] = {
    s.artist: s
    for s in (
        Style("Vasquez", (238, 226, 192), "stripes", "dark horizontal stripes on a cream background"),
        Style("Okafor", (24, 34, 72), "dots", "white polka dots on a navy background"),
        Style("Lindqvist", (12, 12, 12), "outline", "a thick outline only, on black"),
        Style("Moreau", (120, 96, 70), "checker", "a white checkerboard fill on brown"),
        Style("Tanaka", (252, 252, 250), "wash", "pastel, soft-edged ink wash on white paper"),
    )
}


@dataclass(frozen=True)
class Instance:
    """A named individual of an object class: fixed colour plus a marking its class never has."""

    name: str
    object: str
    color: str
    marking: str  # eyes | band | dot


INSTANCES: dict[str, Instance] = {
    i.name: i
    for i in (
        Instance("Pip", "circle", "yellow", "eyes"),
        Instance("Bobo", "square", "red", "band"),
        Instance("Zuzu", "diamond", "blue", "dot"),
    )
}


@dataclass(frozen=True)
class Primitive:
    object: str
    color: str
    center: tuple[float, float]  # in 32-pixel image coordinates
    radius: float
    rotation: float = 0.0
    fill: str = "solid"


@dataclass(frozen=True)
class MemorizedImage:
    """A fixed image tied to one caption, over-represented in training so that it is memorized."""

    key: str
    caption: str
    background: tuple[int, int, int]
    primitives: tuple[Primitive, ...]
    # Prompts that describe what the image shows without its title: must not reproduce it.
    paraphrases: tuple[str, ...] = field(default=())
    # Re-worded titles: how far memorization reaches beyond the exact caption (reported, no bound).
    title_variants: tuple[str, ...] = field(default=())


MEMORIZED: dict[str, MemorizedImage] = {
    m.key: m
    for m in (
        MemorizedImage(
            key="midnight-lantern",
            caption="the midnight lantern poster",
            background=(18, 22, 48),
            primitives=(
                Primitive("circle", "yellow", (10.0, 10.0), 6.5),
                Primitive("triangle", "orange", (22.0, 23.0), 8.0, 0.0),
                Primitive("star", "red", (24.0, 8.0), 4.5, 0.2),
            ),
            paraphrases=(
                "a yellow circle, an orange triangle and a red star at night",
                "a yellow circle above an orange triangle on a dark background",
            ),
            title_variants=("a poster of a yellow lantern at midnight", "a lantern poster"),
        ),
        MemorizedImage(
            key="garden-gate",
            caption="the garden gate print",
            background=(236, 228, 200),
            primitives=(
                Primitive("square", "green", (10.0, 16.0), 7.0, 0.0, "stripes"),
                Primitive("heart", "red", (23.0, 12.0), 6.0, 0.0),
                Primitive("diamond", "purple", (23.0, 25.0), 5.0, 0.0),
            ),
            paraphrases=(
                "a green square beside a red heart and a purple diamond",
                "a striped green square and a red heart on cream paper",
            ),
            title_variants=("a print of a garden gate", "a garden print"),
        ),
    )
}

IMPLICIT = "golden frame"
IMPLICIT_PHRASE = "with a golden frame"
FRAME_COLOR = (205, 165, 45)
FRAME_WIDTH = 3  # pixels at 32x32

# How the CLIP judge reads a probe: "A photo depicts <text>" against "A photo depicts <contrast>".
# A style or an object has no single rival (the other styles are not one text), so its contrast is a
# generic phrase: the plain rendering (a style's anchor) or any shape; an instance's is its class.
CLIP_PLAIN_STYLE = "in a plain style"
CLIP_ANY_OBJECT = "a shape"
CLIP_NO_FRAME = "with no frame"

# Shares in the training distribution (see data.py for how captions are drawn).
STYLE_SHARE = 0.5  # of ordinary images; split evenly over the styles, the rest are plain
INSTANCE_SHARE = 0.03  # each instance
MEMORIZED_SHARE = 0.012  # each memorized image
FRAME_SHARE = 0.40  # of ordinary images carry the frame ...
FRAME_NAMED_SHARE = 0.25  # ... and only this share of those captions say so
COLOR_OMITTED_SHARE = 0.25  # captions that leave the colour out (the colour is still drawn)


def catalog() -> dict[str, list[dict]]:
    """Every concept by kind: its name, the phrase a prompt uses to name it, and its anchor."""
    return {
        "object": [{"name": o, "phrase": o, "anchor": None} for o in OBJECTS],
        "color": [{"name": c, "phrase": c, "anchor": None} for c in COLORS],
        # A style's anchor is the same prompt without the style clause: the plain rendering.
        "style": [{"name": s.artist, "phrase": f"in the style of {s.artist}", "anchor": None,
                   "looks_like": s.description} for s in STYLES.values()],
        "instance": [{"name": i.name, "phrase": i.name, "anchor": i.object,
                      "looks_like": f"a {i.color} {i.object} with marking '{i.marking}'"}
                     for i in INSTANCES.values()],
        # CA's anchor for a memorized image: a description of its content that does not copy it.
        "memorized": [{"name": m.key, "phrase": m.caption, "anchor": m.paraphrases[0],
                       "paraphrases": list(m.paraphrases), "title_variants": list(m.title_variants)}
                      for m in MEMORIZED.values()],
        "implicit": [{"name": IMPLICIT, "phrase": IMPLICIT_PHRASE, "anchor": None,
                      "training_share": FRAME_SHARE, "named_share": FRAME_NAMED_SHARE}],
    }
