"""Robust erasure against learned-embedding attacks, in the AdvUnlearn manner (Zhang et al. 2024).

It runs after the concepts are erased, as the trainer's robust phase (EraseSettings.robust: every
concept of the run at once), on the model that phase finds, and trains in rounds. Each round:
  - inner: the attacks the attack stage runs are learned against the model as it now is: one token
    in place of the name (concept inversion) and soft tokens after it (soft prompt), with the
    denoising loss on images of the concept, each continued from the last round's vectors (the
    warm start keeps rounds short while the attack grows stronger), and from the second round each
    also learned anew (`fresh_steps`), as the attack stage learns it;
  - outer: the prompts holding those tokens, and the prompts naming the concept, are trained to
    predict what the phase's starting model predicts for the anchor prompt at the same x_t (CA's
    model-based loss; x_t from the anchor's images, as CA draws them, or from the concept's:
    `x_source`), while preservation rows (ordinary captions, a share of them the world's fragile
    outputs: the neighbours) keep the starting model's predictions.
The concept's images are drawn once from the base model (the weights before any phase), with other
seeds and prompts than the attack stage's: what is learned here is not the gate's own attack.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from ..concept import ANCHORED_KINDS, Concept, ConceptError
from ..prompts import anchor_prompts, target_prompt
from .base import (Bench, Defaults, Options, Pool, PreserveOptions, check_shares, derived_seed, mse,
                   preservation_rows)


PROMPT_SEED = 7  # the robust phase's own prompts: not the attack stage's (those are the evaluation's)


class AdversarialOptions(Options):
    rounds: int = Field(10, gt=0)  # inner attack, then outer steps; the job's steps split evenly
    images: int = Field(16, gt=0)  # of the concept, from the base model: what the inner attack learns on
    image_steps: int = Field(20, gt=0)  # DDIM steps drawing them
    image_guidance: float = Field(5.0, ge=0)
    # Where the outer step's x_t come from: the anchor prompts' images, drawn by the model as the phase finds
    # it (CA's choice), the concept's images (those the inner attack learns on), or both, half each. From
    # the concept's, the low-noise rows teach the model to keep the concept's look under prompts that the
    # earlier phases had mapped onto the anchor: on the ten-concept default, plain generic prompts drew
    # Vasquez's stripes (9 of 64; 2 without the phase) and the FID ratio read 2.69; from the anchor's, 2 of
    # 64 and 1.37, every target and neighbour gate passing; both: 2.47, the frame's neighbours -0.21.
    x_source: Literal["anchor", "concept", "both"] = "anchor"
    inversion_tokens: int = Field(1, ge=0)  # 0: no inversion attack in the inner loop
    soft_tokens: int = Field(4, ge=0)  # 0: no soft prompt
    # Inner steps in round 1 (from the mean token embedding) and in each later round (from the last
    # round's vectors). A stronger inner attack cost the neighbours less, not more: on the ten-concept
    # default (10 x 12) 30 / 10 left Zuzu's inversion at 0.23 of 64 images, the worst neighbour -0.08 and
    # the FID ratio 1.37; 60 / 20 left 0.08, -0.04 and 1.03 (the lantern's inversion 0.16 -> 0.22).
    first_steps: int = Field(60, gt=0)
    inner_steps: int = Field(20, gt=0)
    # Continue each attack from the last round's vectors (AdvUnlearn's warm start), or learn it anew.
    warm_start: bool = True
    # Each round after the first, also learn each attack anew from the mean token embedding for this many
    # steps (the attack stage's budget) and train against it beside the continued one: the continued
    # attacks settle where the phase has already been, while the gate learns from scratch. On the
    # ten-concept default (10 x 12, 64 images per attack) 0 left the lantern's inversion at 0.22 (at 15
    # and 20 rounds 0.11, Bobo's soft prompt 0.23); 30: every concept <= 0.08 (5 of 64), every other gate
    # passing, but the erase stage took 30 min (its other phases retrained too) instead of 12.5. 0: off.
    fresh_steps: int = Field(30, ge=0)
    inner_lr: float = Field(3e-2, gt=0)
    inner_batch: int = Field(4, gt=0)
    # Preservation rows (base.preservation_rows, toward the model as the phase finds it): this share
    # of each round's pool, from `preserve_prompts` captions, `preserve_fragile` of them the world's
    # fragile outputs and `preserve_neighbours` the erased concepts' neighbours (prompts.py); drawn once
    # for the phase and shared by every concept's pool. Without them the other instances went with Pip
    # (Zuzu 1.00 -> 0.00); without neighbours, on the ten-concept default, Lindqvist lost 0.29 beside the
    # three erased styles (0.04 with a quarter of them). One stop per trajectory: 240 distinct prompts
    # cost about 30 s once, what 60 cost per concept before they were shared (README, "Robust erasure").
    preserve_prompts: int = Field(240, ge=0)
    preserve_share: float = Field(0.5, gt=0, lt=1)
    preserve_fragile: float = Field(0.25, ge=0, le=1)
    preserve_neighbours: float = Field(0.25, ge=0, le=1)
    preserve_ddim_steps: int = Field(20, gt=0)
    preserve_stops: int = Field(1, gt=0)  # rows read from each preservation trajectory
    # Which concept each outer step trains: this share of the steps goes to the concepts in proportion to
    # how far the model still is from the anchor on their attack rows (the loss at the round's start,
    # after the inner attack; `shares`), the rest evenly. 0: evenly, as every other joint phase. On the
    # ten-concept default 0.5 took the lantern's inversion 0.22 -> 0.09 of 64 images but gave the star
    # most of round 1 and the triangle beside it -0.12 (refused; 0.04 evenly), Pip's soft prompt 0.16.
    focus: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _shares(self):
        return check_shares(self)


class Adversarial:
    name = "adversarial"
    Options = AdversarialOptions

    def default_rule(self, kind: str) -> str:
        return "xattn"

    def defaults(self, kind: str) -> Defaults:
        return Defaults(lr=5e-4, steps=120, batch_size=16)  # 12 outer steps in each of 10 rounds

    def rounds(self, options: AdversarialOptions) -> int:
        """How many times the trainer rebuilds this method's pool over its steps (once per round)."""
        return options.rounds

    def check(self, concept: Concept, options: AdversarialOptions) -> None:
        if not (options.inversion_tokens or options.soft_tokens):
            raise ConceptError("robust options: inversion_tokens and soft_tokens are both 0; expected an attack "
                               "to train against")
        if concept.kind in ANCHORED_KINDS and not concept.anchor and not concept.anchor_prompts:
            raise ConceptError(f"concept {concept.text!r} ({concept.kind}): robust erasure maps attacks onto an "
                               "anchor; it has none")

    def needs_frozen(self, options: AdversarialOptions) -> bool:
        return True  # outer targets and preservation: the model as the robust phase found it

    def build_pool(self, bench: Bench, concept: Concept, options: AdversarialOptions, size: int,
                   gen: torch.Generator, previous: Pool | None = None) -> Pool:
        """One round's pool: the concept's images and attack vectors carried over from `previous`
        (the last round's pool; None in the first), the attacks learned further, and fresh rows."""
        from ..attacks.learned import PLACEHOLDER, learn, learned_tokens, spaced  # (attacks import methods.base)

        pairs, texts = _prompts(bench, concept, options.images)
        if previous is None:
            with bench.base_weights():
                z = bench.sample_latents(texts, gen, options.image_steps, options.image_guidance,
                                         desc=bench.desc(concept, "robust: its images"))
            carried = {"_z": z, "_a": bench.encode(pairs), "_named": bench.encode(texts)}
            if options.x_source != "concept":  # the anchor's images, by the model as the phase finds it
                carried["_z_anchor"] = bench.sample_latents(pairs, gen, options.image_steps, options.image_guidance,
                                                            desc=bench.desc(concept, "robust: anchor images"))
            kept = _shared_preservation(bench, concept, options, round(size * options.preserve_share))
        else:
            carried = {k: v for k, v in previous.conds.items() if k.startswith("_")}
            kept = {k[6:]: v for k, v in carried.items() if k.startswith("_keep_")} or None
        conds, attacks = [carried["_named"]], {}
        for label, tokens in (("inversion", options.inversion_tokens), ("soft", options.soft_tokens)):
            if not tokens:
                continue
            marks = " ".join([PLACEHOLDER] * tokens)
            # the prompts the images were drawn from, the name replaced (inversion) or followed (soft)
            held = concept.model_copy(update={"text": marks if label == "inversion" else f"{concept.text} {marks}"})
            templates = [spaced(target_prompt(held, a, i)) for i, a in enumerate(pairs)]
            start = carried.get(f"_vectors_{label}") if options.warm_start else None
            learned = learn(bench.pipe, carried["_z"], templates, tokens=tokens,
                            steps=options.first_steps if start is None else options.inner_steps,
                            lr=options.inner_lr, batch_size=options.inner_batch, start=start, latents=carried["_z"],
                            seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)), progress=False)
            attacks[f"_vectors_{label}"] = learned.vectors
            with learned_tokens(bench.pipe, learned.vectors):
                conds.append(bench.encode(templates))
            if options.fresh_steps and previous is not None:  # anew, as the attack stage learns it
                fresh = learn(bench.pipe, carried["_z"], templates, tokens=tokens, steps=options.fresh_steps,
                              lr=options.inner_lr, batch_size=options.inner_batch, latents=carried["_z"],
                              seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)), progress=False)
                with learned_tokens(bench.pipe, fresh.vectors):
                    conds.append(bench.encode(templates))
        c = torch.cat(conds)  # (variants x images): the name, then each attack
        n_img, n_var = len(carried["_z"]), len(conds)
        n_adv = size - (len(kept["x"]) if kept else 0)
        source = {"concept": [carried["_z"]], "anchor": [carried.get("_z_anchor")],
                  "both": [carried["_z"], carried.get("_z_anchor")]}[options.x_source]
        z = torch.cat(source)  # image i of either set belongs to prompt pair i % n_img
        img = torch.randint(0, len(z), (n_adv,), generator=gen)
        var = torch.randint(0, n_var, (n_adv,), generator=gen)
        x, t, _ = bench.noised(z[img], gen)
        img = img % n_img
        target = bench.frozen_eps(x, t, carried["_a"][img])  # the anchor's prediction, as the phase found it
        rows = {"x": x, "t": t, "c_idx": var * n_img + img, "target": target}
        # What the attacks still recover, for `shares`: measured here, with the model at the round's
        # start, and saved with the pool, so a resumed round splits its steps as the first run did.
        hit = var > 0
        left = torch.zeros(())
        if options.focus and hit.any():
            left = mse(bench.eps(x[hit], t[hit], c[rows["c_idx"][hit]]), target[hit])
        table = c
        if kept:
            rows = {"x": torch.cat([x, kept["x"]]), "t": torch.cat([t, kept["t"]]),
                    "c_idx": torch.cat([rows["c_idx"], len(c) + torch.arange(len(kept["x"]))]),
                    "target": torch.cat([target, kept["target"]])}
            table = torch.cat([c, kept["cond"]])
            carried |= {f"_keep_{k}": v for k, v in kept.items()}  # carried to the next round as they are
        return Pool(rows, {"c": table, **carried, **attacks, "_left": left.reshape(1).float()})

    def loss(self, model, batch: dict[str, torch.Tensor], options: AdversarialOptions, bench: Bench) -> torch.Tensor:
        return mse(model(batch["x"], batch["t"], batch["c"]), batch["target"])

    def shares(self, pools: list[Pool], options: AdversarialOptions) -> torch.Tensor | None:
        """Each concept's share of a round's outer steps (one per pool, in order), or None: evenly."""
        if not options.focus or len(pools) < 2:
            return None
        left = torch.cat([p.conds["_left"] for p in pools]).double()
        if not left.sum() > 0:  # nothing left anywhere (a model that ignores its prompt): evenly
            return None
        return (1 - options.focus) / len(pools) + options.focus * left / left.sum()


def _shared_preservation(bench: Bench, concept: Concept, options: AdversarialOptions,
                         keep: int) -> dict[str, torch.Tensor] | None:
    """The phase's preservation rows, drawn once and shared by every concept's pool: they name none of
    the phase's concepts and target the model as the phase found it, so one set serves them all (one
    set per concept was 30 s each on the ten-concept default). Seeded by the phase's concepts and
    options alone, so a pool rebuilt on resuming finds the same rows."""
    if not options.preserve_prompts:
        return None
    seed = derived_seed("adversarial-preservation", [c.text for c in bench.phase_concepts], options.preserve_prompts,
                        options.preserve_fragile, options.preserve_neighbours, options.preserve_ddim_steps,
                        options.preserve_stops, keep)
    if seed not in bench.shared:
        p = PreserveOptions(preserve_prompts=options.preserve_prompts, preserve_from="current",
                            preserve_fragile=options.preserve_fragile, preserve_neighbours=options.preserve_neighbours)
        bench.shared[seed] = preservation_rows(bench, concept, p, keep, torch.Generator().manual_seed(seed),
                                               options.preserve_ddim_steps, 3.0,
                                               stops_per_trajectory=options.preserve_stops)
    return bench.shared[seed]


def _prompts(bench: Bench, concept: Concept, n: int) -> tuple[list[str], list[str]]:
    """The anchor prompts and the prompts naming the concept made from them (CA's pairs), the same in
    every round: the concept's images are drawn from the second, the outer targets read the first."""
    pairs = anchor_prompts(concept, n, bench.model_spec, seed=PROMPT_SEED)
    return pairs, [target_prompt(concept, a, i) for i, a in enumerate(pairs)]
