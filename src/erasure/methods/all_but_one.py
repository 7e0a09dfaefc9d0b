"""All but One (seed 003): erase only the classifier-guidance term of a concept, keep the rest.

The paper's method section was not available and no public code exists, so this is OUR READING of
what the seed states (METHODS.md): the update drives the guidance term eps(x_t, c) - eps(x_t, "")
toward that of an alternative concept (none given: "", i.e. no guidance toward c), while a
second term keeps the unconditional score where it was:

    L = || (eps_theta(x_t, c) - sg(eps_theta(x_t, ""))) - (eps*(x_t, alt) - eps*(x_t, "")) ||^2
      + lambda * || eps_theta(x_t, "") - eps*(x_t, "") ||^2

x_t from frozen-model partial trajectories conditioned on c, as in ESD (cached in the pool).
"""

from __future__ import annotations

import torch

from ..concept import Concept, ConceptError
from ..trajectories import partial_trajectories
from .base import Bench, Defaults, Options, Pool, mse


class ABOOptions(Options):
    lam: float = 1.0
    ddim_steps: int = 50
    guidance: float = 3.0


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
        c, u = bench.encode([concept.text]), bench.encode([""])
        stops = torch.randint(0, options.ddim_steps, (size,), generator=gen)
        x, t = partial_trajectories(bench.eps, bench.scheduler_config, c, u, stops, bench.latent_shape,
                                    guidance=options.guidance, num_steps=options.ddim_steps, generator=gen)
        e_u = bench.eps(x, t, u)
        e_alt = bench.eps(x, t, bench.encode([concept.alternative])) if concept.alternative else e_u
        return Pool({"x": x, "t": t, "guidance_target": e_alt - e_u, "uncond_target": e_u}, {"c": c, "u": u})

    def loss(self, model, batch: dict[str, torch.Tensor], options: ABOOptions, bench: Bench) -> torch.Tensor:
        x, t = batch["x"], batch["t"]
        out_c, out_u = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([batch["c"], batch["u"]])).chunk(2)
        loss = mse(out_c - out_u.detach(), batch["guidance_target"])
        return loss + options.lam * mse(out_u, batch["uncond_target"])
