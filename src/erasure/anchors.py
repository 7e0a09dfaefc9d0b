"""Anchor choice: what a concept is mapped onto, and why.

An explicit anchor in the blocklist wins. Methods that need none (ESD maps a concept onto the
model's unconditional prediction) get none. Otherwise the anchor is the candidate of the
concept's kind whose text embedding is closest to the concept's, never the target itself or one
of its paraphrases. Closeness is the cosine of the text encoder's pooled output for
"an image of <text>": on the miniworld it picks each named instance's own class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .concept import ConceptError

TEMPLATE = "an image of {}"


@dataclass
class AnchorChoice:
    concept: str
    anchor: str | None
    reason: str
    scores: dict[str, float] = field(default_factory=dict)  # candidate -> similarity, when chosen automatically

    def as_dict(self) -> dict:
        return asdict(self)


def choose(concept: str, kind: str, method: str, *, anchor: str | None, paraphrases: list[str],
           candidates: list[str], no_anchor_methods: list[str], embed) -> AnchorChoice:
    """`embed(texts) -> (n, d)` unit vectors (see `text_embedder`); called only when a choice is needed."""
    if anchor:
        return AnchorChoice(concept, anchor, "given in the blocklist")
    if method in no_anchor_methods:
        return AnchorChoice(concept, None, f"method {method!r} needs no anchor (it maps the concept onto the "
                                           "model's unconditional prediction)")
    if method == "abo":
        return AnchorChoice(concept, None, "All-but-One uses the concept's context and its `alternative`, no anchor")
    if kind == "memorized":
        return AnchorChoice(concept, None, "a memorized image is mapped onto its paraphrases (anchor prompts)")
    if kind in ("implicit", "nudity"):
        return AnchorChoice(concept, None, f"{kind} concepts are mapped onto prompts without them")
    banned = {concept.casefold(), *(p.casefold() for p in paraphrases)}
    pool = [c for c in dict.fromkeys(candidates) if c.casefold() not in banned]
    if not pool:
        raise ConceptError(f"concept {concept!r} ({kind}): method {method!r} needs an anchor; give `anchor` in the "
                           f"blocklist or list candidates under anchors.candidates.{kind} in params.yaml")
    vectors = embed([TEMPLATE.format(t) for t in [concept, *pool]])
    sims = (vectors[1:] @ vectors[0]).tolist()
    scores = {c: round(s, 4) for c, s in zip(pool, sims)}
    best = max(pool, key=lambda c: (scores[c], -pool.index(c)))  # ties: the earlier candidate
    return AnchorChoice(concept, best, f"closest of {len(pool)} {kind} candidates by text-encoder similarity "
                                       f"({scores[best]:.2f})", scores)


def text_embedder(tokenizer, text_encoder):
    """Unit-norm pooled text embeddings, as `choose` wants them."""

    @torch.no_grad()
    def embed(texts: list[str]) -> torch.Tensor:
        ids = tokenizer(texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                        return_tensors="pt").input_ids
        pooled = text_encoder(ids.to(text_encoder.device)).pooler_output.float()
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()

    return embed
