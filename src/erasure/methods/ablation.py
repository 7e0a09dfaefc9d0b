"""Concept Ablation (Kumari et al. 2023): map the target concept onto an anchor concept.

Anchor images come from the original model on anchor prompts; target prompts are made from the
anchor prompts (prompts.py). x_t is an anchor image's latent noised to a uniform t.
  - model-based (default): || eps_theta(x_t, c_prompt, t) - sg(eps(x_t, a_prompt, t)) ||^2, the target
    from the frozen original (`target_from="frozen"`, the exact form, cached in the pool at no
    memory cost) or from the model being trained under no-grad (`"same"`, the reference code);
  - noise-based: the target is the added noise (denoising loss on <target prompt, anchor image>).
Optional regularization: `regularization` x the denoising loss on <anchor prompt, anchor image>.
Memorized images: anchor prompts are paraphrases, and anchor images that are near-copies of the
reference image (copy similarity above `copy_threshold`) are dropped.
Implicit kinds on the miniworld (our extension, in the spirit of that filter): its attribute appears
in anchor images unasked, so those its detector reads as showing it are dropped; the regularization
term then teaches the scene prompts users write to come without it. On other models the anchor
prompts are expected to exclude it (the paper's "people, wearing clothes" for nudity).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..concept import ANCHORED_KINDS, Concept, ConceptError
from ..families import denoising_target
from ..prompts import anchor_prompts, fragile_prompts, target_prompt
from ..worlds import attribute_reader, not_copies
from .base import (Bench, Defaults, Pool, PreserveOptions, derived_seed, mse, preservation_rows, prompt_table,
                   reference_images)


class CAOptions(PreserveOptions):
    loss: Literal["model", "noise"] = "model"
    target_from: Literal["frozen", "same"] = "frozen"
    regularization: float = Field(0.0, ge=0)
    stop_sot: bool = True  # stop the gradient through the start token's key/value
    anchor_images: int = Field(1000, gt=0)  # the reference code's default
    anchor_steps: int = Field(25, gt=0)
    anchor_guidance: float = Field(6.0, ge=0)
    # Memorized: drop anchor images whose copy similarity to the reference exceeds this (None: the
    # similarity measure's calibrated copy threshold).
    copy_threshold: float | None = Field(None, ge=-1, le=1)  # a correlation
    # Preservation rows (base.PreserveOptions), x_t from `preserve_ddim_steps`-step trajectories at
    # guidance 3 (as ESD's): the model-based or noise loss on them is toward the frozen model's prediction.
    preserve_ddim_steps: int = Field(25, gt=0)
    # Implicit / nudity (our extension): this share of the anchor prompts names the world's fragile
    # outputs (prompts.fragile_prompts: the memorized images and instances not erased so far). Their
    # anchor images, drawn and filtered like the others, keep those outputs through the
    # regularization term without teaching the attribute back (preservation rows toward the frozen
    # prediction do: the base draws it unasked). Where the world knows none, nothing changes.
    anchor_fragile: float = Field(0.0, ge=0, lt=1)


class ConceptAblation:
    name = "ca"
    Options = CAOptions

    def default_rule(self, kind: str) -> str:
        return {"memorized": "full", "nudity": "attn", "implicit": "attn"}.get(kind, "xattn-kv")

    def defaults(self, kind: str) -> Defaults:
        # Base lr 2e-6 scaled by batch 4 (one device); memorized images and nudity train longer.
        steps = 400 if kind in ("memorized", "nudity", "implicit") else 100
        return Defaults(lr=8e-6, steps=steps, batch_size=4, weight_decay=1e-2)

    def check(self, concept: Concept, options: CAOptions) -> None:
        if concept.kind in ANCHORED_KINDS and not concept.anchor and not concept.anchor_prompts:
            raise ConceptError(f"concept {concept.text!r} ({concept.kind}): CA needs an anchor (e.g. its class)")
        if concept.kind == "memorized" and not (concept.paraphrases or concept.anchor_prompts or concept.anchor):
            raise ConceptError(f"concept {concept.text!r}: CA on a memorized image needs an anchor (a description "
                               "of its content that does not reproduce it), paraphrases or anchor_prompts")
        if options.anchor_fragile and concept.kind not in ("implicit", "nudity"):
            raise ConceptError(f"concept {concept.text!r} ({concept.kind}): CA option anchor_fragile applies to "
                               "implicit and nudity concepts only (their target prompts add the attribute to any "
                               "prompt); expected 0")
        if concept.kind == "memorized" and not concept.reference_images:
            raise ConceptError(f"concept {concept.text!r}: CA on a memorized image needs reference_images, to "
                               "drop anchor images that copy it")

    def needs_frozen(self, options: CAOptions) -> bool:
        return False

    def build_pool(self, bench: Bench, concept: Concept, options: CAOptions, size: int,
                   gen: torch.Generator) -> Pool:
        n_keep = round(size * options.preserve_share) if options.preserve_prompts else 0
        size -= n_keep  # the pool holds `size` rows in all: ablation rows, then preservation rows
        # Prompts and seeds follow the anchor, not the phase: concepts with the same anchor ask for the
        # same images, which the image cache then holds once (Bench.anchor_latents).
        seed = anchor_seed(concept, bench.seed)
        prompts = anchor_prompts(concept, options.anchor_images, bench.model_spec, seed=seed % 2**31)
        if options.anchor_fragile:
            extra = fragile_prompts(bench.run_concepts or (concept,), round(len(prompts) * options.anchor_fragile),
                                    bench.model_spec, seed=seed % 2**31)
            prompts = prompts[:len(prompts) - len(extra)] + extra
        seeds = [derived_seed(seed, p, i) % 2**31 for i, p in enumerate(prompts)]
        z = bench.anchor_latents(prompts, seeds, options.anchor_steps, options.anchor_guidance,
                                 desc=bench.desc(concept, "anchor images"))
        if concept.kind == "memorized":
            images = bench.decode(z)
            keep = not_copies(images, reference_images(concept, images.shape[2]), options.copy_threshold)
            if not keep.any():
                raise ConceptError(f"concept {concept.text!r}: every anchor image copies the memorized image; "
                                   "expected paraphrases whose generations differ from it")
            prompts, z = [p for p, k in zip(prompts, keep) if k], z[torch.as_tensor(keep)]
        elif concept.kind in ("implicit", "nudity") and (shows := attribute_reader(bench.model_spec)):
            keep = ~shows(bench.decode(z))
            if not keep.any():
                raise ConceptError(f"concept {concept.text!r}: every anchor image shows the attribute")
            prompts, z = [p for p, k in zip(prompts, keep) if k], z[torch.as_tensor(keep)]
        distinct, a_idx = prompt_table(prompts)
        t_distinct, t_of_anchor = prompt_table([target_prompt(concept, p, i) for i, p in enumerate(distinct)])
        conds = {"a": bench.encode(distinct), "c": bench.encode(t_distinct)}
        pick = torch.randint(0, len(z), (size,), generator=gen)
        rows = bench.noised_rows(z[pick], gen) | {"a_idx": a_idx[pick], "c_idx": t_of_anchor[a_idx[pick]]}
        if options.loss == "model" and options.target_from == "frozen":
            rows["target"] = bench.eps(rows["x"], rows["t"], conds["a"][rows["a_idx"]])
        if n_keep:
            rows, conds = _with_preservation(bench, concept, options, n_keep, gen, rows, conds)
        return Pool(rows, conds)

    def loss(self, model, batch: dict[str, torch.Tensor], options: CAOptions, bench: Bench) -> torch.Tensor:
        x, t = batch["x"], batch["t"]
        if options.loss == "noise":  # the denoising target: the noise, or the velocity (v-prediction)
            target = denoising_target(batch)
        elif options.target_from == "frozen":
            target = batch["target"]
        else:
            with torch.no_grad():
                target = model(x, t, batch["a"]).detach()
        keep = batch.get("keep")  # preservation rows: toward the frozen model's prediction at their x_t
        if keep is not None:
            target = torch.where(keep.bool().view(-1, *[1] * (x.ndim - 1)), batch["keep_target"], target)
        loss = mse(model(x, t, batch["c"]), target)
        if options.regularization:
            reg = (model(x, t, batch["a"]).float() - denoising_target(batch).float()) ** 2
            if keep is None:
                loss = loss + options.regularization * reg.mean()
            else:  # on the ablation rows only (preservation rows have no anchor image)
                w = (1 - keep.float()).view(-1, *[1] * (x.ndim - 1))
                loss = loss + options.regularization * (reg * w).sum() / (w.sum() * reg[0].numel()).clamp(min=1)
        return loss


def anchor_seed(concept: Concept, run_seed: int) -> int:
    """The seed of a concept's anchor prompts and images: a function of what its anchor prompts are made
    from (the kind's family, the anchor, given prompts or paraphrases) and the run's seed, so that
    instances and objects sharing a class, or two implicit attributes, draw the same anchor images."""
    family = {"instance": "class", "object": "class", "nudity": "scene", "implicit": "scene"}
    family = family.get(concept.kind, concept.kind)
    own = list(concept.anchor_prompts) or (list(concept.paraphrases) if concept.kind == "memorized" else [])
    return derived_seed("anchor", family, concept.anchor, own, run_seed)


def _with_preservation(bench: Bench, concept: Concept, options: CAOptions, keep: int, gen: torch.Generator,
                       rows: dict, conds: dict) -> tuple[dict, dict]:
    """The ablation rows plus `keep` preservation rows (base.preservation_rows): their prompt in the
    `c` table (what the trained model sees), `keep` 1, `keep_target` the frozen prediction; the
    rows they lack (anchor index, noise, CA's own target) filled with placeholders never read."""
    kept = preservation_rows(bench, concept, options, keep, gen, options.preserve_ddim_steps, 3.0)
    n = len(rows["x"])
    out = {"x": torch.cat([rows["x"], kept["x"]]), "t": torch.cat([rows["t"], kept["t"]]),
           "c_idx": torch.cat([rows["c_idx"], len(conds["c"]) + torch.arange(keep)]),
           "keep": torch.cat([torch.zeros(n), torch.ones(keep)]),
           "keep_target": torch.cat([torch.zeros_like(kept["target"][:1]).expand(n, *kept["target"].shape[1:]),
                                     kept["target"]])}
    for key, value in rows.items():
        if key not in out:  # a_idx, noise, velocity, target: zeros on the preservation rows
            out[key] = torch.cat([value, torch.zeros((keep, *value.shape[1:]), dtype=value.dtype)])
    return out, conds | {"c": torch.cat([conds["c"], kept["cond"]])}
