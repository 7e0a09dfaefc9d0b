"""UCE, Unified Concept Editing (Gandikota et al. 2024): the cross-attention projections edited in closed form.

Every `attn2.to_k` / `attn2.to_v` weight W reads the text encoder's output. With c_i the vectors a
prompt naming a target has where the concept is (E), c*_i the vectors its anchor prompt has there,
and c_j vectors of prompts to keep (P), one solve per projection, for any number of concepts:

    min_W  erase_scale sum_E ||W c_i - W0 c*_i||^2 + preserve_scale sum_P ||W c_j - W0 c_j||^2 + lamb ||W - W0||^2
    W - W0 = erase_scale R C^T (erase_scale C C^T + preserve_scale P P^T + lamb I)^+,   R = W0 C* - W0 C

(the pseudo-inverse: with preserve_scale = lamb = 0 and independent c_i the edit is exact, W c_i = W0 c*_i).
W0 is the model as the phase finds it, so in a sequential run the preservation rows hold what earlier
phases did; `preserve_erased` adds every earlier concept's erase vectors to P (their erased outputs kept).

Which vectors: a target prompt and its anchor prompt share a prefix and a suffix of tokens; the
concept's last span token in the target prompt maps onto the anchor's last span token (the start token
when the anchor prompt has nothing there, as for the empty prompt), and every later position (suffix,
end token, padding: they carry the concept through the causal encoder) onto the same position
counted from the span's end. The reference code maps from the concept's last token on; `tokens="span"` also
maps the earlier tokens of the span. Pairs: the bare concept and its anchor ("" when it has none),
plus `context_prompts` scenes naming it (prompts.target_prompt) and the same scenes without it,
because a small text encoder encodes a name in context differently from alone. A concept's scenes
that name another concept of the run are left out: "a star, in the style of Vasquez" -> "a star" would
have Vasquez's solve keep the star that the star's own pairs remove (with them, a star erased beside a
style kept 0.50 of its images; without, 0.00).
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from pydantic import Field

from ..concept import FUNCTION_WORDS, Concept, ConceptError, _word
from ..device import model_device
from ..families import encode_sdxl, is_sdxl
from ..prompts import anchor_prompts, preservation_prompts, target_prompt
from .base import Bench, Defaults, Options, Pool


class UCEOptions(Options):
    erase_scale: float = Field(1.0, gt=0)
    preserve_scale: float = Field(1.0, ge=0)
    lamb: float = Field(0.1, ge=0)  # pull toward W0 (the reference code's 0.1 to 0.5)
    projections: Literal["kv", "k", "v"] = "kv"
    tokens: Literal["last", "span"] = "span"
    context_prompts: int = Field(16, ge=0)  # scenes naming the concept, beside the bare name
    preserve_prompts: int = Field(64, ge=0)  # ordinary captions naming none of the phase's concepts
    preserve_erased: bool = True  # sequential: keep earlier phases' erased targets as they are
    preserve_fragile: float = Field(0.25, ge=0, le=1)  # of preserve_prompts: the world's fragile outputs (prompts.py)
    # Robust erasure (RECE, Gong et al. 2024): after the solve, each round finds for every erase vector
    # the text-encoder output that the edited projections turn back into the concept's original keys
    # and values (closed form, all layers at once), adds it to the erase vectors, and solves again.
    # What a learned token or soft prompt can reach is such an output; 0: plain UCE.
    robust_rounds: int = Field(0, ge=0)
    robust_lambda: float = Field(1.0, gt=0)  # norm penalty on the found outputs (larger: nearer the encoder's range)


class UCE:
    name = "uce"
    Options = UCEOptions
    closed_form = True  # edit() replaces the pool and the training loop

    def default_rule(self, kind: str) -> str:
        return "xattn-kv"

    def defaults(self, kind: str) -> Defaults:
        return Defaults(lr=1.0, steps=0, batch_size=1)  # no optimizer steps; kept for the plan's shape

    def check(self, concept: Concept, options: UCEOptions) -> None:
        if concept.kind in ("implicit", "nudity"):
            raise ConceptError(f"concept {concept.text!r} ({concept.kind}): UCE remaps what prompts naming a "
                               "concept read; an attribute that appears unnamed needs a trained method (esd, ca)")

    def check_joint(self, options: list[UCEOptions]) -> None:
        """Concepts solved together (a joint run, or one phase) share the solve's own options."""
        own = {"erase_scale", "context_prompts", "tokens", "preserve_prompts"}  # per concept
        for o in options[1:]:
            if o.model_dump(exclude=own) != options[0].model_dump(exclude=own):
                raise ValueError("UCE concepts erased in one solve must share preserve_scale, lamb, projections, "
                                 "preserve_erased and preserve_fragile (erase_scale, context_prompts, tokens and "
                                 "preserve_prompts may differ)")

    def needs_frozen(self, options: UCEOptions) -> bool:
        return False

    def build_pool(self, bench: Bench, concept: Concept, options: UCEOptions, size: int,
                   gen: torch.Generator) -> Pool:
        raise RuntimeError("UCE is closed-form: the trainer calls edit(), not build_pool()")

    def loss(self, model, batch, options, bench):
        raise RuntimeError("UCE is closed-form: the trainer calls edit(), not loss()")

    @torch.no_grad()
    def edit(self, bench: Bench, concepts: list[tuple[Concept, UCEOptions]], earlier: tuple[Concept, ...],
             gen: torch.Generator) -> int:
        """Edit the UNet's cross-attention projections in place for all `concepts` at once; returns
        the number of erase vectors. `earlier`: concepts erased by previous phases of the run."""
        self.check_joint([o for _, o in concepts])
        # One preservation set for the solve: as many ordinary captions as the concept that asks most.
        options = concepts[0][1].model_copy(update={"preserve_prompts": max(o.preserve_prompts for _, o in concepts)})
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        sources, targets, scales = [], [], []
        run = tuple(dict.fromkeys([*(c.text for c, _ in concepts), *(c.text for c in earlier)]))
        for concept, o in concepts:
            c, a = erase_vectors(bench, concept, o, seed, avoid=tuple(t for t in run if t != concept.text))
            sources.append(c)
            targets.append(a)
            scales.append(torch.full((len(c),), o.erase_scale))
        keep = []
        if options.preserve_prompts:
            prompts = preservation_prompts(tuple(c for c, _ in concepts), options.preserve_prompts,
                                           bench.model_spec, seed=seed, fragile=options.preserve_fragile)
            keep.append(embed(bench, prompts).flatten(0, 1))
        done = [c for c in earlier if c not in {x for x, _ in concepts}]
        if options.preserve_erased and done:
            # Not the earlier prompts that name this phase's concepts: "a star, in the style of Vasquez"
            # keeps its erased output, a star, which the star's own erasure must change.
            names = tuple(c.text for c, _ in concepts)
            keep.extend(erase_vectors(bench, c, options, seed, avoid=names)[0] for c in done)
        C, A, s = torch.cat(sources).double(), torch.cat(targets).double(), torch.cat(scales).double()
        P = torch.cat(keep).double() if keep else C[:0]
        layers = [layer for _, layer in projections(bench.model.unet, options.projections)]
        W0s = [layer.weight.detach().double().cpu() for layer in layers]  # solved on the CPU in float64
        Ws = [closed_form(W0, C, A, P, s, options.preserve_scale, options.lamb) for W0 in W0s]
        n = len(C)
        for _ in range(options.robust_rounds):
            found = adversarial_outputs(W0s, Ws, C[:n], options.robust_lambda)
            C, A, s = torch.cat([C, found]), torch.cat([A, A[:n]]), torch.cat([s, s[:n]])
            Ws = [closed_form(W0, C, A, P, s, options.preserve_scale, options.lamb) for W0 in W0s]
        for layer, W in zip(layers, Ws):
            layer.weight.copy_(W.to(layer.weight.dtype))  # back to wherever the UNet is
        return len(C)


def closed_form(W0: torch.Tensor, C: torch.Tensor, A: torch.Tensor, P: torch.Tensor, erase_scale: torch.Tensor,
                preserve_scale: float, lamb: float) -> torch.Tensor:
    """W minimizing sum_i s_i ||W c_i - W0 a_i||^2 + preserve_scale sum_j ||W p_j - W0 p_j||^2 + lamb ||W - W0||^2.

    W0 (out, d); C, A (n, d): each erase vector and the vector whose output it should take; P (m, d);
    erase_scale (n,): s_i per erase vector."""
    R = (A - C) @ W0.T  # (n, out): the change each erase vector's output needs
    M = (C.T * erase_scale) @ C + preserve_scale * (P.T @ P) + lamb * torch.eye(W0.shape[1], dtype=W0.dtype)
    return W0 + (R.T * erase_scale) @ C @ torch.linalg.pinv(M, hermitian=True)


def adversarial_outputs(W0s: list[torch.Tensor], Ws: list[torch.Tensor], C: torch.Tensor,
                        lam: float) -> torch.Tensor:
    """For each erase vector c (rows of C), the vector e minimizing sum_l ||W_l e - W0_l c||^2 + lam ||e||^2:
    the text-encoder output that, through every edited projection W_l at once, gives back most of what
    the unedited W0_l gave the concept (RECE's adversarial embedding, in closed form)."""
    d = C.shape[1]
    gram = sum(W.T @ W for W in Ws) + lam * torch.eye(d, dtype=C.dtype)
    rhs = sum(W.T @ W0 for W, W0 in zip(Ws, W0s)) @ C.T  # (d, n)
    return torch.linalg.solve(gram, rhs).T


def projections(unet: torch.nn.Module, which: str) -> list[tuple[str, torch.nn.Linear]]:
    """The cross-attention projections that read the text (`attn2.to_k`, `attn2.to_v`)."""
    names = {"kv": ("attn2.to_k", "attn2.to_v"), "k": ("attn2.to_k",), "v": ("attn2.to_v",)}[which]
    found = [(n, m) for n, m in unet.named_modules() if n.endswith(names) and isinstance(m, torch.nn.Linear)]
    if not found:
        raise ValueError("UCE: this UNet has no cross-attention projections named 'attn2.to_k' / 'attn2.to_v'")
    return found


def embed(bench: Bench, prompts: list[str]) -> torch.Tensor:
    """Text-encoder output per token (N, L, d): what the cross-attention projections read."""
    if is_sdxl(bench.pipe):  # both encoders' outputs, without the pooled row the UNet reads apart
        return encode_sdxl(bench.pipe, prompts).float().cpu()[:, :-1]
    cond = bench.encode(prompts)
    if cond.dtype == torch.long:  # a run that also trains embedding rows encodes ids with the current rows
        enc = bench.model.text_encoder
        cond = enc(cond.to(model_device(enc)[0]))[0].float().cpu()
    return cond


def erase_pairs(concept: Concept, options: UCEOptions, model_spec: str, seed: int,
                avoid: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(prompt naming the concept, its anchor prompt): the bare name and its anchor ("" when it has
    none), then `context_prompts` scenes, without those that name one of `avoid` (whole words, any case)."""
    anchor = concept.anchor or ""
    pairs = []
    if options.context_prompts:
        scenes = anchor_prompts(concept, options.context_prompts, model_spec, seed=seed)
        pairs = [(target_prompt(concept, p, i), p) for i, p in enumerate(scenes)]
    if avoid:
        named = re.compile("|".join(rf"\b{re.escape(w)}\b" for w in avoid), re.IGNORECASE)
        pairs = [(t, a) for t, a in pairs if not named.search(t) and not named.search(a)]
    # The bare name always: it is the concept itself, whatever `avoid` says.
    return [(t, a) for t, a in dict.fromkeys([(concept.text, anchor), *pairs]) if t != a]


def erase_vectors(bench: Bench, concept: Concept, options: UCEOptions, seed: int,
                  avoid: tuple[str, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, C*): the vectors the prompts of `erase_pairs` naming the concept have, and those their
    anchor prompts have there."""
    pairs = erase_pairs(concept, options, bench.model_spec, seed, avoid)
    if not pairs:
        raise ConceptError(f"concept {concept.text!r}: UCE found no prompt that names it apart from its anchor")
    tok = bench.pipe.tokenizer
    texts = [t for t, _ in pairs] + [a for _, a in pairs]
    emb = embed(bench, texts)
    n = len(pairs)
    src, dst = [], []
    for i, (t, a) in enumerate(pairs):
        ids = tok(t).input_ids
        function = [_word(x) in FUNCTION_WORDS for x in tok.convert_ids_to_tokens(ids)]
        for pt, pa in aligned_positions(ids, tok(a).input_ids, emb.shape[1], options.tokens, function):
            src.append(emb[i, pt])
            dst.append(emb[n + i, pa])
    return torch.stack(src), torch.stack(dst)


def aligned_positions(target_ids: list[int], anchor_ids: list[int], length: int, tokens: str = "span",
                      function: list[bool] | None = None) -> list[tuple[int, int]]:
    """(position in the target prompt, position in the anchor prompt) of every vector to remap.

    Both id lists hold the start and end tokens and no padding; `length`: the padded length.
    `function[p]`: token p of the target is a function word. The span's leading function words are
    not remapped: a causal encoder's vector there depends only on the words up to it, which ordinary
    prompts share ("the" of "the midnight lantern poster" is the "the" of "the garden gate print")."""
    prefix = 0
    while prefix < min(len(target_ids), len(anchor_ids)) and target_ids[prefix] == anchor_ids[prefix]:
        prefix += 1
    suffix = 0
    while (suffix < min(len(target_ids), len(anchor_ids)) - prefix
           and target_ids[-1 - suffix] == anchor_ids[-1 - suffix]):
        suffix += 1
    t_end, a_end = len(target_ids) - suffix, len(anchor_ids) - suffix  # one past each span
    if t_end <= prefix:
        return []  # the target prompt adds nothing to the anchor's
    a_last = a_end - 1 if a_end > prefix else 0  # an empty anchor span: the start token
    first = prefix if tokens == "span" else t_end - 1
    while function and first < t_end - 1 and function[first]:
        first += 1
    out = [(p, a_last) for p in range(first, t_end)]
    shift = a_end - t_end  # after the spans: the same position counted from each span's end
    out += [(p, p + shift) for p in range(t_end, length) if 0 <= p + shift < length]
    return out
