"""ESD, Erased Stable Diffusion (Gandikota et al. 2023): negative guidance distilled into the weights.

    eps_theta(x_t, c, t)  ->  eps*(x_t, "", t) - eta * (eps*(x_t, c, t) - eps*(x_t, "", t))

x_t comes from a partial DDIM trajectory conditioned on c (guidance 3, k ~ U[0, 50) of 50 steps;
t is the timestep reached). `sampler="frozen"` (default, the newer official code) samples with the
original model, so trajectories and targets are computed once, batched, into the pool; `"trained"`
(the paper) samples with the model being trained at every step and keeps originals of the trained
tensors for eps*. `erase_from` trains the prompt f: target eps*(f) - eta * (eps*(c) - eps*("")).
`x_source="reference"` is the memorized-image variant: x_t is the reference image noised by the
forward process.

`context_prompts=n` (our extension, off by default): ESD applied inside scenes. n prompts p_i
without the concept (anchor prompts) and f_i naming it there (CA's target prompts, e.g. "a red
circle, in the style of X") replace c and "": eps_theta(x_t, f_i) -> eps*(p_i) - eta * (eps*(f_i) -
eps*(p_i)), x_t from trajectories of f_i. The negative guidance is taken relative to the same
scene without the concept instead of the empty prompt. For implicit kinds (nudity, an attribute
that appears unprompted) it is the "erase from" form with f = each scene prompt p_i as users write
it: eps_theta(x_t, p_i) -> eps*(p_i) - eta * (eps*(c) - eps*("")), x_t from trajectories of p_i;
`implicit_trajectories="named"` takes x_t from trajectories of f_i instead (p_i naming the concept),
and `implicit_direction="scene"` takes the direction eps*(f_i) - eps*(p_i) instead of the concept's.
Why: a small text encoder encodes a name
differently in context than alone, and the paper's single-prompt form then does not reach the
prompts users write (measured on the miniworld: see benchmarks/results/methods.md).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..concept import ANCHORED_KINDS, Concept, ConceptError
from ..prompts import anchor_prompts, target_prompt
from ..trajectories import partial_trajectories
from .base import Bench, Defaults, Pool, PreserveOptions, mse, preservation_rows, reference_images


class ESDOptions(PreserveOptions):
    eta: float = Field(1.0, gt=0)  # strength of the negative guidance the model is trained toward
    sampler: Literal["frozen", "trained"] = "frozen"
    x_source: Literal["trajectory", "reference"] = "trajectory"
    ddim_steps: int = Field(50, gt=0)
    guidance: float = Field(3.0, ge=0)
    # Pool rows read from one frozen-sampler trajectory (and one prompt) at as many random stops (our
    # extension; 1: a trajectory per row, as the reference code). A trajectory's cost is its last
    # stop, so k rows per trajectory cost about 2k/(k+1) times one row instead of k.
    stops_per_trajectory: int = Field(1, gt=0)
    context_prompts: int = Field(0, ge=0)
    # Implicit kinds in context: x_t from trajectories of the scene prompts p_i as users write them
    # ("scene"), or of the same scenes naming the concept, f_i ("named": every x_t carries it, as
    # the paper's x_t from trajectories of c do).
    implicit_trajectories: Literal["scene", "named"] = "scene"
    # Implicit kinds in context: the negative direction is the concept's own, eps*(c) - eps*("")
    # ("concept"), or the same scene with and without it, eps*(f_i) - eps*(p_i) ("scene": what naming
    # the concept changes in that scene).
    implicit_direction: Literal["concept", "scene"] = "concept"
    # Preservation rows (base.PreserveOptions: preserve_prompts, preserve_share, preserve_from).


class ESD:
    name = "esd"
    Options = ESDOptions

    def default_rule(self, kind: str) -> str:
        # ESD-x for named concepts, ESD-u for concepts that appear without being named.
        return "noxattn" if kind in ("nudity", "implicit") else "xattn"

    def defaults(self, kind: str) -> Defaults:
        return Defaults(lr=1e-5, steps=1000, batch_size=1)  # the paper's

    def check(self, concept: Concept, options: ESDOptions) -> None:
        if concept.anchor is not None:
            raise ConceptError(f"concept {concept.text!r}: ESD erases toward the unconditional prediction and "
                               "takes no anchor; drop the anchor or use method 'ca'")
        if options.x_source == "reference" and not concept.reference_images:
            raise ConceptError(f"concept {concept.text!r}: ESD with x_source='reference' (memorized images) needs "
                               "reference_images")
        if options.context_prompts and concept.erase_from:
            raise ConceptError(f"concept {concept.text!r}: ESD context_prompts and erase_from both set the prompt "
                               "the trained model sees; use one")
        if options.context_prompts and concept.kind in ANCHORED_KINDS and not concept.anchor_prompts:
            # Scenes naming an object are made from scenes of another object (its anchor), which ESD refuses.
            raise ConceptError(f"concept {concept.text!r} ({concept.kind}): ESD context_prompts needs the scenes "
                               "given as anchor_prompts in the blocklist; or use context_prompts 0, or method ca / uce")
        if options.x_source == "reference" and options.sampler == "trained":
            raise ConceptError("ESD: sampler='trained' samples trajectories; it cannot be combined with "
                               "x_source='reference'")
        if options.stops_per_trajectory > 1 and (options.sampler == "trained" or options.x_source == "reference"):
            raise ConceptError("ESD: stops_per_trajectory reads the frozen sampler's trajectories; it needs "
                               "sampler='frozen' and x_source='trajectory' (expected 1 otherwise)")
        if options.preserve_prompts and (options.sampler == "trained" or options.x_source == "reference"):
            raise ConceptError("ESD: preserve_prompts needs the frozen sampler and trajectory x_t")

    def build_pool(self, bench: Bench, concept: Concept, options: ESDOptions, size: int,
                   gen: torch.Generator) -> Pool:
        """Tables: c (concept), u (its baseline), base (what the target starts from), train (the prompt
        the trained model sees), empty (CFG). Paper: c=text, u=base="", train=text (erase_from: base
        = train = f). In context: per sample c=f_i, u=base=p_i, train=f_i (implicit kinds: p_i)."""
        keep = round(size * options.preserve_share) if options.preserve_prompts else 0
        size -= keep  # the pool holds `size` rows in all: erase rows, then preservation rows
        empty = bench.encode([""])
        rows: dict[str, torch.Tensor] = {}
        if options.context_prompts:
            base_prompts = anchor_prompts(concept, options.context_prompts, bench.model_spec,
                                          seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            pairs = list(dict.fromkeys((p, target_prompt(concept, p, i)) for i, p in enumerate(base_prompts)))
            f, p = bench.encode([t for _, t in pairs]), bench.encode([q for q, _ in pairs])
            pick = _rows_per_trajectory(torch.randint(0, len(pairs), (-(-size // options.stops_per_trajectory),),
                                                      generator=gen), options.stops_per_trajectory, size)
            if concept.kind in ("implicit", "nudity"):
                # Appears without being named: "erase from" each scene prompt p_i users write,
                # with the concept's own direction eps*(c) - eps*("").
                conds = {"c": bench.encode([concept.text]), "u": empty, "base": p, "train": p, "empty": empty,
                         "traj": f if options.implicit_trajectories == "named" else p}
                rows = {"base_idx": pick, "train_idx": pick.clone(), "traj_idx": pick.clone()}
                if options.implicit_direction == "scene":
                    conds |= {"c": f, "u": p}
                    rows |= {"c_idx": pick.clone(), "u_idx": pick.clone()}
            else:
                conds = {"c": f, "u": p, "base": p, "train": f, "empty": empty}
                rows = {f"{k}_idx": pick.clone() for k in ("c", "u", "base", "train")}
        else:
            c = bench.encode([concept.text])
            f = bench.encode([concept.erase_from]) if concept.erase_from else None
            conds = {"c": c, "u": empty, "base": f if f is not None else empty,
                     "train": f if f is not None else c, "empty": empty}
        if options.sampler == "trained":  # only the random numbers are fixed up front
            stops = torch.randint(0, options.ddim_steps, (size,), generator=gen)
            noise = torch.randn((size, *bench.latent_shape), generator=gen)
            return Pool(rows | {"stop": stops, "noise": noise}, conds)
        if options.x_source == "reference":
            z = bench.encode_images(reference_images(concept, bench.pipe.vae.config.sample_size))
            pick = torch.randint(0, len(z), (size,), generator=gen)
            x, t, _ = bench.noised(z[pick], gen)
        else:
            k = options.stops_per_trajectory
            stops = torch.randint(0, options.ddim_steps, (size,) if k == 1 else (-(-size // k), k), generator=gen)
            # paper: trajectories of c; in context: of what the trained model sees, or `traj` when set
            sampled = "traj" if "traj" in conds else "train" if options.context_prompts else "c"
            x, t = partial_trajectories(bench.eps, bench.scheduler_config,
                                        _per_sample(conds, rows, sampled, size)[::k], empty, stops,
                                        bench.latent_shape, guidance=options.guidance,
                                        num_steps=options.ddim_steps, generator=gen,
                                        desc=bench.desc(concept, "trajectories"))
            x, t = x[:size], t[:size]
        cs = {k: _per_sample(conds, rows, k, size) for k in ("c", "u", "base")}
        target = _target(bench.eps, x, t, cs["c"], cs["u"], cs["base"], options.eta)
        if options.preserve_prompts:
            return _with_preservation(bench, concept, options, keep, gen, x, t, target,
                                      _per_sample(conds, rows, "train", size))
        return Pool(rows | {"x": x, "t": t, "target": target}, conds)

    def needs_frozen(self, options: ESDOptions) -> bool:
        return options.sampler == "trained"

    def loss(self, model, batch: dict[str, torch.Tensor], options: ESDOptions, bench: Bench) -> torch.Tensor:
        if options.sampler == "trained":
            frozen = bench.frozen()
            sampled = batch.get("traj", batch["train"] if options.context_prompts else batch["c"])
            x, t = partial_trajectories(bench.eps, bench.scheduler_config, sampled, batch["empty"][:1],
                                        batch["stop"], bench.latent_shape, guidance=options.guidance,
                                        num_steps=options.ddim_steps, noise=batch["noise"])
            target = _target(lambda *a: frozen(*a).float(), x, t, batch["c"], batch["u"], batch["base"], options.eta)
        else:
            x, t, target = batch["x"], batch["t"], batch["target"]
        return mse(model(x, t, batch["train"]), target)


def _with_preservation(bench: Bench, concept: Concept, options: ESDOptions, keep: int, gen: torch.Generator,
                       x, t, target, train) -> Pool:
    """The erase rows plus `keep` preservation rows (base.preservation_rows), so the edit leaves
    prompts naming none of the run's concepts alone."""
    kept = preservation_rows(bench, concept, options, keep, gen, options.ddim_steps, options.guidance,
                             stops_per_trajectory=options.stops_per_trajectory)
    return Pool({"x": torch.cat([x, kept["x"]]), "t": torch.cat([t, kept["t"]]),
                 "target": torch.cat([target, kept["target"]]), "train_idx": torch.arange(len(x) + keep)},
                {"train": torch.cat([train, kept["cond"]])})


def _rows_per_trajectory(per_trajectory: torch.Tensor, k: int, size: int) -> torch.Tensor:
    """Each trajectory's value for its k consecutive rows, cut to the pool's size."""
    return per_trajectory.repeat_interleave(k)[:size]


def _per_sample(conds: dict, rows: dict, key: str, size: int) -> torch.Tensor:
    table = conds[key]
    return table[rows[f"{key}_idx"]] if f"{key}_idx" in rows else table.expand(size, *table.shape[1:])


def _target(eps, x, t, c, u, base, eta: float) -> torch.Tensor:
    # Weights 1, -eta, +eta sum to 1: the same target in epsilon or velocity space (v is affine in
    # eps at a fixed x_t), so v-prediction models need no conversion (families.py).
    e_c, e_u = eps(x, t, c), eps(x, t, u)
    e_base = e_u if base.shape == u.shape and torch.equal(base, u) else eps(x, t, base)
    return e_base - eta * (e_c - e_u)
