"""All but One (seed 003): erase only the classifier-guidance term of a concept, keep the rest.

The paper's method section was not available and no public code exists, so this is OUR READING of
what the seed states (METHODS.md): the update drives the guidance term eps(x_t, c) - eps(x_t, "")
toward that of an alternative concept (none given: "", i.e. no guidance toward c), while a
second term keeps the unconditional score where it was:

    L = || (eps_theta(x_t, c) - sg(eps_theta(x_t, ""))) - (eps*(x_t, alt) - eps*(x_t, "")) ||^2
      + lambda * || eps_theta(x_t, "") - eps*(x_t, "") ||^2

x_t from frozen-model partial trajectories conditioned on c, as in ESD (cached in the pool).

`context_prompts=n` (our extension, as ESD's): the same loss inside scenes, with c -> f_i (a scene
prompt naming the target), "" -> p_i (the same scene without it) and alt -> the scene naming the
alternative; for small text encoders that encode a name alone differently than in a prompt.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..concept import Concept, ConceptError
from ..prompts import anchor_prompts, target_prompt
from ..trajectories import partial_trajectories
from .base import Bench, Defaults, Options, Pool, mse


class ABOOptions(Options):
    lam: float = Field(1.0, ge=0)
    ddim_steps: int = Field(50, gt=0)
    guidance: float = Field(3.0, ge=0)
    context_prompts: int = Field(0, ge=0)


class AllButOne:
    name = "abo"
    Options = ABOOptions

    def default_rule(self, kind: str) -> str:
        return "noxattn" if kind in ("nudity", "implicit") else "xattn"

    def defaults(self, kind: str) -> Defaults:
        return Defaults(lr=1e-5, steps=1000, batch_size=1)  # ESD's, whose x_t it shares

    def check(self, concept: Concept, options: ABOOptions) -> None:
        if concept.anchor is not None:
            raise ConceptError(f"concept {concept.text!r}: All-but-One takes an alternative, not an anchor")

    def needs_frozen(self, options: ABOOptions) -> bool:
        return False

    def build_pool(self, bench: Bench, concept: Concept, options: ABOOptions, size: int,
                   gen: torch.Generator) -> Pool:
        empty = bench.encode([""])
        if options.context_prompts:
            scenes = anchor_prompts(concept, options.context_prompts, bench.model_spec,
                                    seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            scenes = list(dict.fromkeys(scenes))
            alt = concept.model_copy(update={"text": concept.alternative}) if concept.alternative else None
            c = bench.encode([target_prompt(concept, p, i) for i, p in enumerate(scenes)])
            u = bench.encode(scenes)
            a = bench.encode([target_prompt(alt, p, i) for i, p in enumerate(scenes)]) if alt else u
            pick = torch.randint(0, len(scenes), (size,), generator=gen)
            rows, c_s, u_s, a_s = {"c_idx": pick, "u_idx": pick.clone()}, c[pick], u[pick], a[pick]
        else:
            c, u = bench.encode([concept.text]), empty
            a = bench.encode([concept.alternative]) if concept.alternative else u
            rows, c_s, u_s, a_s = {}, c, u, a
        stops = torch.randint(0, options.ddim_steps, (size,), generator=gen)
        x, t = partial_trajectories(bench.eps, bench.scheduler_config, c_s, empty, stops, bench.latent_shape,
                                    guidance=options.guidance, num_steps=options.ddim_steps, generator=gen,
                                    desc=bench.desc(concept, "trajectories"))
        e_u = bench.eps(x, t, u_s)
        e_alt = bench.eps(x, t, a_s) if concept.alternative else e_u
        return Pool(rows | {"x": x, "t": t, "guidance_target": e_alt - e_u, "uncond_target": e_u}, {"c": c, "u": u})

    def loss(self, model, batch: dict[str, torch.Tensor], options: ABOOptions, bench: Bench) -> torch.Tensor:
        # Outputs against outputs only (a difference, and one output): valid in either prediction
        # space, since v = eps / sqrt(acp) - sqrt(1 / acp - 1) x_t at a fixed x_t; in v space both
        # terms are weighted by 1 / acp_t, as v-prediction training itself is (families.py).
        x, t = batch["x"], batch["t"]
        out_c, out_u = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([batch["c"], batch["u"]])).chunk(2)
        loss = mse(out_c - out_u.detach(), batch["guidance_target"])
        return loss + options.lam * mse(out_u, batch["uncond_target"])
