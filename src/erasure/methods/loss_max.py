"""Baseline: loss maximization (CA paper). Maximize the ordinary denoising loss on target prompts.

Shown in the paper to damage nearby concepts; a comparison baseline, not a recommended method.
Images of the target come from the original model on target prompts (made from anchor prompts).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..concept import ANCHORED_KINDS, Concept, ConceptError
from ..families import denoising_target
from ..prompts import anchor_prompts, target_prompt
from .base import Bench, Defaults, Options, Pool, mse, prompt_table


class LossMaxOptions(Options):
    images: int = Field(1000, gt=0)
    image_steps: int = Field(25, gt=0)
    image_guidance: float = Field(6.0, ge=0)


class LossMax:
    name = "loss-max"
    Options = LossMaxOptions

    def default_rule(self, kind: str) -> str:
        return "xattn-kv"

    def defaults(self, kind: str) -> Defaults:
        return Defaults(lr=8e-6, steps=100, batch_size=4, weight_decay=1e-2)  # CA's, for a fair comparison

    def check(self, concept: Concept, options: LossMaxOptions) -> None:
        if concept.kind in ANCHORED_KINDS and not concept.anchor and not concept.anchor_prompts:
            raise ConceptError(f"concept {concept.text!r} ({concept.kind}): loss-max builds its target prompts "
                               "from anchor prompts and needs an anchor (e.g. its class)")

    def needs_frozen(self, options: LossMaxOptions) -> bool:
        return False

    def build_pool(self, bench: Bench, concept: Concept, options: LossMaxOptions, size: int,
                   gen: torch.Generator) -> Pool:
        if concept.kind == "memorized":
            prompts = [concept.text] * options.images
        else:
            base = anchor_prompts(concept, options.images, bench.model_spec,
                                  seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            prompts = [target_prompt(concept, p, i) for i, p in enumerate(base)]
        z = bench.sample_latents(prompts, gen, options.image_steps, options.image_guidance,
                                 desc=bench.desc(concept, "target images"))
        distinct, c_idx = prompt_table(prompts)
        pick = torch.randint(0, len(z), (size,), generator=gen)
        return Pool(bench.noised_rows(z[pick], gen) | {"c_idx": c_idx[pick]}, {"c": bench.encode(distinct)})

    def loss(self, model, batch: dict[str, torch.Tensor], options: LossMaxOptions, bench: Bench) -> torch.Tensor:
        return -mse(model(batch["x"], batch["t"], batch["c"]), denoising_target(batch))
