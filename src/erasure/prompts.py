"""Prompt sets a method trains on: anchor prompts and the target prompts made from them (CA).

For the miniworld, anchor prompts are captions of its own world (training templates; evaluation
uses held-out ones). For any other model they come from a small generic list of subjects, unless
the concept brings its own `anchor_prompts`.
"""

from __future__ import annotations

import re

from .concept import Concept, ConceptError
from .worlds import world_prompts

GENERIC_SUBJECTS = (
    "a house by a lake", "a city street at night", "a portrait of a woman", "a bowl of fruit",
    "a mountain landscape", "a dog in a park", "a ship at sea", "a forest in autumn",
    "an old man reading", "a field of flowers", "a bridge over a river", "a cat on a sofa",
)
# Things an attribute (a colour) qualifies.
ATTRIBUTE_SUBJECTS = ("car", "house", "dress", "bird", "flower", "umbrella", "chair", "kite", "boat", "balloon",
                      "door", "bicycle")
GENERIC_TEMPLATES = ("a photo of {s}", "a painting of {s}", "a picture of {s}", "an illustration of {s}")


def anchor_prompts(concept: Concept, n: int, model_spec: str, seed: int = 0) -> list[str]:
    """n prompts of the anchor concept (cycled when fewer distinct ones exist)."""
    if concept.anchor_prompts:
        base = list(concept.anchor_prompts)
    elif concept.kind == "memorized":
        base = list(concept.paraphrases) or ([concept.anchor] if concept.anchor else [])
        if not base:
            raise ConceptError(f"concept {concept.text!r}: a memorized image needs paraphrases or anchor_prompts "
                               "(descriptions of its content that do not reproduce it)")
    elif concept.kind in ("instance", "object") and not concept.anchor:
        raise ConceptError(f"concept {concept.text!r} ({concept.kind}): needs an anchor (e.g. its class: "
                           "'Grumpy Cat' -> 'cat')")
    elif concept.kind == "attribute" and not concept.anchor:
        raise ConceptError(f"concept {concept.text!r} (attribute): needs an anchor, another attribute of its "
                           "kind (e.g. 'red' -> 'blue')")
    elif (world := world_prompts(model_spec)) is not None:
        return world.anchor_prompts(concept, n, seed)
    else:
        subject = concept.anchor if concept.kind in ("instance", "object") else None
        if concept.kind == "attribute":  # the anchor qualifies each thing: "a photo of a blue car"
            base = [t.format(s=_with_article(f"{concept.anchor} {s}")) for s in ATTRIBUTE_SUBJECTS
                    for t in GENERIC_TEMPLATES]
        else:
            base = [t.format(s=_with_article(subject) if subject else s)
                    for s in GENERIC_SUBJECTS for t in GENERIC_TEMPLATES]
        if subject:
            base = list(dict.fromkeys(base))
    return [base[i % len(base)] for i in range(n)]


def preservation_prompts(exclude: tuple[Concept, ...], n: int, model_spec: str, seed: int = 0,
                         fragile: float = 0.0, neighbours: float = 0.0) -> list[str]:
    """n ordinary prompts that name none of `exclude` (what an edit should leave unchanged); a `fragile`
    share of them, where the world knows its fragile outputs (the miniworld's memorized images and
    instances), prompts of those, far above their share in ordinary captions; a `neighbours` share,
    where it knows them, prompts of what erasing `exclude` endangers first (neighbour_prompts)."""
    if (world := world_prompts(model_spec)) is not None:
        extra = fragile_prompts(exclude, round(n * fragile), model_spec, seed)
        extra += neighbour_prompts(exclude, round(n * neighbours), model_spec, seed)
        return world.preservation_prompts([c.text for c in exclude], n - len(extra), seed) + extra
    banned = [c.text.lower() for c in exclude]
    base = [t.format(s=s) for s in GENERIC_SUBJECTS for t in GENERIC_TEMPLATES]
    base = [p for p in base if not any(b in p.lower() for b in banned)]
    return [base[i % len(base)] for i in range(n)]


def neighbour_prompts(concepts: tuple[Concept, ...], n: int, model_spec: str, seed: int = 0) -> list[str]:
    """n prompts of what erasing `concepts` endangers first, where the world knows it (the miniworld: the
    styles and objects of their family left off the list), else [] (any other model)."""
    world = world_prompts(model_spec)
    return world.neighbour_prompts([(c.text, c.kind) for c in concepts], n, seed) if world is not None and n else []


def fragile_prompts(exclude: tuple[Concept, ...], n: int, model_spec: str, seed: int = 0) -> list[str]:
    """n prompts of the world's fragile outputs naming none of `exclude` (the miniworld's memorized images
    and instances), or [] where the world knows none (any other model)."""
    world = world_prompts(model_spec)
    return world.fragile_prompts([c.text for c in exclude], n, seed) if world is not None and n else []


def target_prompt(concept: Concept, anchor_prompt: str, i: int = 0) -> str:
    """The prompt naming the target, made from an anchor prompt (CA's recipe per kind)."""
    c = concept.text
    if concept.kind == "style":
        return f"{anchor_prompt}, in the style of {c}" if i % 2 == 0 else f"in {c}'s style, {anchor_prompt}"
    if concept.kind in ("instance", "object"):
        a = re.escape(concept.anchor or "")
        out, hits = re.subn(rf"\b(?:an?|the)\s+{a}\b", c, anchor_prompt, flags=re.IGNORECASE)
        if not hits:
            out, hits = re.subn(rf"\b{a}\b", c, anchor_prompt, flags=re.IGNORECASE)
        return out if hits else f"{anchor_prompt}, {c}"
    if concept.kind == "attribute":  # the anchor attribute's word replaced, its article agreeing
        a = re.escape(concept.anchor or "")
        out, hits = re.subn(rf"\b(an?)\s+{a}\b", lambda m: f"{_article_for(c, m.group(1))} {c}", anchor_prompt,
                            flags=re.IGNORECASE)
        if not hits:
            out, hits = re.subn(rf"\b{a}\b", c, anchor_prompt, flags=re.IGNORECASE)
        return out if hits else f"{anchor_prompt}, {c}"
    if concept.kind == "memorized":
        return c
    return f"{anchor_prompt} {c}" if c.lower().startswith("with ") else f"{anchor_prompt}, {c}"


def _article_for(word: str, like: str) -> str:
    """'a' or 'an' before `word`, capitalized as `like` is."""
    article = "an" if word[:1].lower() in "aeiou" else "a"
    return article.capitalize() if like[:1].isupper() else article


def _with_article(word: str) -> str:
    return word if word.lower().startswith(("a ", "an ", "the ")) else f"{'an' if word[0] in 'aeiou' else 'a'} {word}"
