"""Anchor choice: what a concept is mapped onto, and why.

An explicit anchor in the blocklist wins. Methods that need none (ESD maps a concept onto the
model's unconditional prediction) get none. Otherwise the anchor is the candidate of the
concept's kind closest to the concept, never the target itself or one of its paraphrases, by one
of two similarities (`anchors.similarity` in params.yaml):
- `guidance` (default): the cosine of the model's guidance directions eps(x_t, "an image of <text>")
  - eps(x_t, "") over fixed latents and timesteps, i.e. what naming the text makes the UNet draw.
  On the miniworld it picks each named instance's own class, on the shipped model and on the one
  refined by the `implicit` training phase.
- `text`: the cosine of the text encoder's pooled output for "an image of <text>" (no UNet calls;
  suits CLIP text encoders). The miniworld's small causal encoder does not reliably place instances
  by their class: after the `implicit` refinement it put Bobo and Zuzu nearest 'moon'.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .concept import ConceptError

TEMPLATE = "an image of {}"
# `anchors.similarity` -> how an AnchorChoice's reason names it (each embedder's `kind`).
SIMILARITY_NAMES = {"guidance": "guidance-direction", "text": "text-encoder"}


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
    """`embed(texts) -> (n, d)` unit vectors (`guidance_embedder`, `text_embedder`); called only when a
    choice is needed."""
    if anchor:
        return AnchorChoice(concept, anchor, "given in the blocklist")
    if method in no_anchor_methods:
        return AnchorChoice(concept, None, f"method {method!r} needs no anchor (it maps the concept onto the "
                                           "model's unconditional prediction)")
    if method == "uce" and not candidates:
        return AnchorChoice(concept, None, f"no {kind} candidates: UCE maps the concept onto the empty prompt")
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
    return AnchorChoice(concept, best, f"closest of {len(pool)} {kind} candidates by {getattr(embed, 'kind', 'embedding')} "
                                       f"similarity ({scores[best]:.2f})", scores)


def text_embedder(tokenizer, text_encoder):
    """Unit-norm pooled text embeddings, as `choose` wants them."""

    @torch.no_grad()
    def embed(texts: list[str]) -> torch.Tensor:
        ids = tokenizer(texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                        return_tensors="pt").input_ids
        pooled = text_encoder(ids.to(text_encoder.device)).pooler_output.float()
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()

    embed.kind = SIMILARITY_NAMES["text"]
    return embed


# Fixed probes of the guidance embedding: a few noise levels across sampling, 16 latents each.
GUIDANCE_TIMESTEPS = (300, 600, 900)
GUIDANCE_SAMPLES = 16


def guidance_embedder(pipe, seed: int = 0):
    """Unit-norm guidance directions eps(x, t, text) - eps(x, t, "") of an SD 1.x / 2.x / XL pipeline,
    concatenated over GUIDANCE_TIMESTEPS on GUIDANCE_SAMPLES fixed Gaussian latents (seeded). SDXL's
    UNet gets the pipeline's own conditioning: both encoders' states, the pooled embedding, time ids,
    and as the unconditional its negative ("" or zeros, as its config says)."""
    from .families import added_conditioning, is_sdxl

    unet = pipe.unet
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    latents = torch.randn(GUIDANCE_SAMPLES, unet.config.in_channels, size, size,
                          generator=torch.Generator().manual_seed(seed)).to(unet.device, unet.dtype)
    last = pipe.scheduler.config.num_train_timesteps - 1
    steps = [torch.full((GUIDANCE_SAMPLES,), min(t, last), device=unet.device) for t in GUIDANCE_TIMESTEPS]
    sdxl = is_sdxl(pipe)
    time_ids = added_conditioning(pipe)["time_ids"].to(unet.device, unet.dtype) if sdxl else None

    def conditions(texts: list[str], negative: bool = False) -> list[dict]:  # UNet kwargs per text
        if not sdxl:
            tok = pipe.tokenizer
            ids = tok(texts, padding="max_length", truncation=True, max_length=tok.model_max_length,
                      return_tensors="pt").input_ids
            states = pipe.text_encoder(ids.to(pipe.text_encoder.device))[0].to(unet.dtype)
            return [{"encoder_hidden_states": s[None]} for s in states]
        states, neg, pooled, neg_pooled = pipe.encode_prompt(texts, device=unet.device, num_images_per_prompt=1,
                                                             do_classifier_free_guidance=negative)
        states, pooled = (neg, neg_pooled) if negative else (states, pooled)
        return [{"encoder_hidden_states": s[None].to(unet.dtype),
                 "added_cond_kwargs": {"text_embeds": p[None].to(unet.dtype), "time_ids": time_ids}}
                for s, p in zip(states, pooled)]

    def expand(kw: dict) -> dict:
        n = GUIDANCE_SAMPLES
        out = {"encoder_hidden_states": kw["encoder_hidden_states"].expand(n, -1, -1)}
        if "added_cond_kwargs" in kw:
            out["added_cond_kwargs"] = {k: v.expand(n, -1) for k, v in kw["added_cond_kwargs"].items()}
        return out

    @torch.no_grad()
    def eps_of(texts: list[str], negative: bool = False) -> list[list[torch.Tensor]]:  # [text][timestep] -> eps
        return [[unet(latents, step, **expand(kw)).sample.float().flatten() for step in steps]
                for kw in conditions(texts, negative)]

    unconditional = []  # computed once, on the first call

    def embed(texts: list[str]) -> torch.Tensor:
        if not unconditional:
            unconditional.extend(eps_of([""], negative=sdxl)[0])
        directions = [torch.cat([e - u for e, u in zip(per_t, unconditional)]) for per_t in eps_of(texts)]
        return torch.nn.functional.normalize(torch.stack(directions), dim=-1).cpu()

    embed.kind = SIMILARITY_NAMES["guidance"]
    return embed
