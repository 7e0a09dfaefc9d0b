"""What every erasure method shares: the bench it works on, its training pool, and its contract.

A method is a small unit with four parts:
  - `default_rule(kind)`: which parameters it trains (a rule of params.py);
  - `defaults(kind)`: its reference learning rate, steps and batch size;
  - `build_pool(bench, concept, options, size, gen)`: everything it needs from the frozen model,
    computed once before training (x_t, t, targets, conditionings) -> a `Pool`;
  - `loss(model, batch, options, bench)`: its objective on a batch of the pool.
Because the pool is built while the model still equals the original (or, in sequential mode, the
model the concept starts from), eps* never needs a second copy of the network.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..concept import Concept, ConceptError
from ..device import model_device
from ..editable import EditableModel
from ..io import save_safetensors

EVAL_CHUNK = 32  # samples per no-grad UNet call while building pools


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Defaults:
    lr: float
    steps: int
    batch_size: int
    weight_decay: float = 0.0


@dataclass
class Pool:
    """Per-sample tensors (`rows`, first dim N) and conditioning tables (`conds`).

    A row `<name>_idx` indexes the table `<name>`; `batch()` resolves it to `batch[<name>]`. Tables
    whose name starts with "_" are state a method carries from one round's pool to the next, never
    part of a batch.
    """

    rows: dict[str, torch.Tensor]
    conds: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Contiguous, as a pool loaded from its file is: a strided view (a VAE posterior's mean) gives
        # other last bits in the UNet, and a resumed run must train on what the uninterrupted one did.
        self.rows = {k: v.contiguous() for k, v in self.rows.items()}
        self.conds = {k: v.contiguous() for k, v in self.conds.items()}

    def __len__(self) -> int:
        return len(next(iter(self.rows.values())))

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in self.rows.items():
            out[key] = value[idx]
            if key.endswith("_idx") and key[:-4] in self.conds:
                out[key[:-4]] = self.conds[key[:-4]][value[idx]]
        for key, table in self.conds.items():
            if f"{key}_idx" not in self.rows and not key.startswith("_"):  # one conditioning for every sample
                out[key] = table[:1].expand(len(idx), *table.shape[1:])
        return out

    def save(self, path: Path) -> None:
        tensors = {f"rows.{k}": v for k, v in self.rows.items()} | {f"conds.{k}": v for k, v in self.conds.items()}
        save_safetensors({k: v.contiguous().clone() for k, v in tensors.items()}, Path(path))  # no shared storage

    @classmethod
    def load(cls, path: Path) -> Pool:
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        return cls({k[5:]: v for k, v in tensors.items() if k.startswith("rows.")},
                   {k[6:]: v for k, v in tensors.items() if k.startswith("conds.")})


@dataclass
class Bench:
    """The model being edited and what a method may ask of it (all no-grad, current weights)."""

    pipe: object
    model: EditableModel
    model_spec: str = "miniworld"
    # The concepts erased so far in the run (the trainer sets it per phase): a method's preservation
    # prompts toward the base model name none of them.
    run_concepts: tuple[Concept, ...] = ()
    # The concepts this phase erases (all of them in a joint run).
    phase_concepts: tuple[Concept, ...] = ()
    # Pool building shows its progress (erasure/progress.py) unless the run shows none.
    progress: bool = True
    _frozen: object = None
    # What a method builds once and several pools share (the robust phase's preservation rows), by key.
    shared: dict = field(default_factory=dict)
    # The run's seed (the trainer sets it): what is drawn per anchor rather than per phase is seeded by it.
    seed: int = 0
    # The content-addressed image cache's folder (cache.py) and the identity of the weights this phase
    # starts from (the base model's hash, or the phase cache's key of the phases before it; the trainer
    # sets it per phase). Both set: anchor images are found there by every concept with the same anchor.
    image_cache: Path | None = None
    state_id: str | None = None
    # The base model's values of the trainable tensors, when the trainer keeps them (a sequential
    # run with preservation rows); None: the current weights are the base (joint runs, phase 0).
    _base: object = None

    def desc(self, concept: Concept, what: str) -> str | None:
        """The progress label of a pool's work on `concept`; None when the run shows no progress."""
        return f"{concept.text[:20]}: {what}" if self.progress else None

    def snapshot_frozen(self, tensors: dict | None = None) -> None:
        """Keep originals of `tensors` (default: those trainable now), for methods that need eps* while
        training. The trainer passes the tensors the phase trains: what is trainable when the phase
        starts is the last phase's choice."""
        from ..frozen import FrozenOriginal

        self._frozen = FrozenOriginal(self.model, self.model.trainable() if tensors is None else tensors)

    def frozen(self):
        if self._frozen is None:
            raise RuntimeError("no frozen snapshot: the trainer takes one when a method needs_frozen()")
        return self._frozen

    def frozen_eps(self, x: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        """`eps` of the frozen snapshot (the model as the phase found it), in chunks."""
        return _chunked(self.frozen(), x, t, cond, *self.placement)

    @contextmanager
    def base_weights(self):
        """Within: the model holds the base model's values of the trained tensors (for drawing what the
        base model drew); the current values are put back after. A no-op when the current weights
        are the base (the trainer keeps base values only when a later phase asks for them)."""
        if self._base is None:
            yield
            return
        params = dict(self.model.named_parameters())
        current = {n: params[n].detach().clone() for n in self._base.originals}
        with torch.no_grad():
            for n, v in self._base.originals.items():
                params[n].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, v in current.items():
                    params[n].copy_(v)

    @property
    def scheduler_config(self) -> dict:
        # with the class actually in use (a scheduler swapped in code has no `_class_name` of its own)
        return dict(self.pipe.scheduler.config) | {"_class_name": type(self.pipe.scheduler).__name__}

    @cached_property
    def family(self):
        """Prediction space, forward process and trajectory sampler of the model (families.py); built
        once per bench (its forward process is a DDPMScheduler), the pipeline's scheduler being fixed."""
        from ..families import of

        return of(self.scheduler_config)

    @property
    def placement(self) -> tuple[torch.device, torch.dtype]:
        """The UNet's device and dtype: where every model call of the bench runs."""
        return model_device(self.model.unet)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        unet = self.model.unet
        size = unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        return (unet.config.in_channels, size, size)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Conditioning for prompts: embeddings, or token ids when text-encoder rows are trained."""
        tok = self.pipe.tokenizer
        for prompt in prompts:  # truncation would silently cut the concept off the end of a prompt
            n = len(tok(prompt).input_ids)
            if n > tok.model_max_length:
                raise ConceptError(f"prompt {prompt!r} is {n} tokens; this model's text encoder holds "
                                   f"{tok.model_max_length}: shorten the concept or the anchor prompts")
        from ..families import encode_sdxl, is_sdxl

        if is_sdxl(self.pipe):
            return encode_sdxl(self.pipe, prompts).float().cpu()
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        if self.model.text_trainable:
            return ids
        with torch.no_grad():  # computed on the encoder's device, kept on the CPU (pool data)
            enc = self.model.text_encoder
            return enc(ids.to(model_device(enc)[0]))[0].detach().float().cpu()

    @torch.no_grad()
    def eps(self, x: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        """Noise prediction of the current model, in chunks; cond of batch 1 is broadcast."""
        return _chunked(self.model, x, t, cond, *self.placement)

    @torch.no_grad()
    def base_eps(self, x: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        """Noise prediction of the base model, before any phase of this run."""
        return _chunked(self._base if self._base is not None else self.model, x, t, cond, *self.placement)

    def noised(self, latents: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Forward-process samples: (x_t, t, noise) with t uniform over the training timesteps, from
        the DDPM process of the training schedule whatever sampler the model ships (families.py)."""
        t = torch.randint(0, self.num_train_timesteps, (len(latents),), generator=gen)
        noise = torch.randn(latents.shape, generator=gen)
        return self.family.add_noise(latents, noise, t), t, noise

    def noised_rows(self, latents: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """`noised` as pool rows x, t, noise, plus the target in the model's prediction space where it
        is not the noise (`velocity`; read it back with families.denoising_target)."""
        x, t, noise = self.noised(latents, gen)
        return {"x": x, "t": t, "noise": noise} | self.family.target_rows(latents, noise, t)

    @torch.no_grad()
    def sample_latents(self, prompts: list[str], gen: torch.Generator, steps: int, guidance: float,
                       desc: str | None = "sampling") -> torch.Tensor:
        """Images (as latents) of the current model for prompts, one seed per image drawn from gen."""
        from ..sampling import generate_latents

        seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=gen).tolist()
        return generate_latents(self.pipe, prompts, seeds, steps=steps, guidance=guidance, desc=desc or "",
                                progress=desc is not None).cpu()

    def anchor_latents(self, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                       desc: str | None = "anchor images") -> torch.Tensor:
        """Latents of the current model's images for prompts and seeds, through the image cache when the
        trainer gave one: drawn as images (PNG, lossless) and encoded, on a hit as on a miss, so a cached
        draw gives the same pool bit for bit. Concepts that share an anchor (and a phase's starting
        weights) ask for the same prompts and seeds, and the second finds the first's images."""
        from ..cache import ImageCache, sampler_id
        from ..device import placement_tag
        from ..sampling import generate

        if self.image_cache is not None and self.state_id is not None:
            cache = ImageCache(self.image_cache, self.state_id, steps, guidance,
                               sampler=sampler_id(self.pipe) + placement_tag(self.pipe.unet))
            images = cache.images(self.pipe, prompts, seeds, progress=desc is not None, desc=desc or "")
        else:
            images = generate(self.pipe, prompts, seeds, steps=steps, guidance=guidance, progress=desc is not None,
                              desc=desc or "")
        return self.encode_images(images)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        images = []
        device, dtype = model_device(vae)
        for s in range(0, len(latents), EVAL_CHUNK):
            img = vae.decode((latents[s:s + EVAL_CHUNK] / vae.config.scaling_factor).to(device, dtype)).sample.float()
            images.append(((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(images)

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> latents (mean of the VAE posterior, scaled)."""
        return encode_images(self.pipe.vae, images)


@torch.no_grad()
def encode_images(vae, images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> latents as the UNet sees them (mean of the VAE posterior, scaled), on the CPU."""
    device, dtype = model_device(vae)
    # contiguous NCHW whatever the array's strides: the VAE's convolutions give other last bits on another
    # memory layout, and a cached image (read from a PNG) must encode as the freshly drawn one did
    x = torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    x = (x.float() / 127.5 - 1).to(device, dtype)
    # contiguous: the mean is a view of half the moments, and a pool saved and reloaded on resuming (then
    # contiguous) must train as the freshly built one did, bit for bit
    return (vae.encode(x).latent_dist.mean * vae.config.scaling_factor).float().cpu().contiguous()


class PreserveOptions(Options):
    """Preservation rows (our extension, off by default), shared by the trained methods that take them:
    `preserve_prompts` prompts naming none of the run's concepts make up `preserve_share` of the pool,
    x_t from their own partial trajectories, trained toward the frozen model's own prediction there.
    `preserve_from`: whose prediction they keep, the base model's ("base") or the model's as this phase
    finds it ("current": in a sequential run the prompts may then name earlier phases' concepts, which
    holds those erasures in place)."""

    preserve_prompts: int = Field(0, ge=0)
    preserve_share: float = Field(0.25, gt=0, lt=1)
    preserve_from: Literal["base", "current"] = "base"
    # Of the preservation prompts, this share names the world's fragile outputs, and this share the
    # neighbours of the concepts excluded (prompts.py: the styles and objects of their family).
    preserve_fragile: float = Field(0.0, ge=0, le=1)
    preserve_neighbours: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _shares(self):
        return check_shares(self)


def check_shares(options):
    """preserve_fragile and preserve_neighbours are shares of the same preservation prompts."""
    total = options.preserve_fragile + options.preserve_neighbours
    if total > 1:
        raise ValueError(f"preserve_fragile + preserve_neighbours is {total:g}; expected at most 1 (shares of "
                         "the same preservation prompts)")
    return options


def preservation_rows(bench: Bench, concept: Concept, options: PreserveOptions, keep: int, gen: torch.Generator,
                      ddim_steps: int, guidance: float, stops_per_trajectory: int = 1) -> dict[str, torch.Tensor]:
    """`keep` preservation rows {x, t, cond, target}: prompts q_j with x_t from their own trajectories
    and the target eps(x_t, q_j) of the base model, naming none of the run's concepts so far (or of
    the current model, naming none of this phase's: `preserve_from="current"`); each trajectory read at
    `stops_per_trajectory` stops (trajectories.py)."""
    from ..prompts import preservation_prompts
    from ..trajectories import partial_trajectories

    exclude = bench.phase_concepts if options.preserve_from == "current" else bench.run_concepts
    prompts = preservation_prompts(exclude or (concept,), options.preserve_prompts, bench.model_spec,
                                   seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)),
                                   fragile=options.preserve_fragile, neighbours=options.preserve_neighbours)
    q = bench.encode(prompts)
    k = stops_per_trajectory
    runs = -(-keep // k)
    pick = torch.randint(0, len(q), (runs,), generator=gen)
    stops = torch.randint(0, ddim_steps, (keep,) if k == 1 else (runs, k), generator=gen)
    x, t = partial_trajectories(bench.eps, bench.scheduler_config, q[pick], bench.encode([""]), stops,
                                bench.latent_shape, guidance=guidance, num_steps=ddim_steps, generator=gen,
                                desc=bench.desc(concept, "preservation trajectories"))
    pick, x, t = pick.repeat_interleave(k)[:keep], x[:keep], t[:keep]
    target = (bench.base_eps if options.preserve_from == "base" else bench.eps)(x, t, q[pick])
    return {"x": x, "t": t, "cond": q[pick], "target": target}


def reference_images(concept: Concept, size: int) -> np.ndarray:
    """The memorized concept's reference images, resized to the model's image size."""
    from PIL import Image

    from ..sampling import load_images

    if not concept.reference_images:
        raise ConceptError(f"concept {concept.text!r}: this method needs reference_images (the memorized "
                           "image files); none were given")
    arrays = []
    for f in concept.reference_images:
        _, imgs = load_images([Path(f)])
        for img in imgs:
            arrays.append(np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC)))
    return np.stack(arrays)


def derived_seed(*parts) -> int:
    """A seed from any JSON-able parts (sha256): the same parts give the same seed on every machine."""
    return int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:8], "little") & (2**63 - 1)


def prompt_table(prompts: list[str]) -> tuple[list[str], torch.Tensor]:
    """Distinct prompts (a conditioning table to encode once) and each prompt's row in it."""
    distinct = list(dict.fromkeys(prompts))
    return distinct, torch.as_tensor([distinct.index(p) for p in prompts])


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(a.float(), b.float())


class Method(Protocol):
    name: ClassVar[str]
    Options: ClassVar[type[Options]]

    def default_rule(self, kind: str) -> str: ...

    def defaults(self, kind: str) -> Defaults: ...

    def check(self, concept: Concept, options: Options) -> None: ...

    def needs_frozen(self, options: Options) -> bool: ...

    def build_pool(self, bench: Bench, concept: Concept, options: Options, size: int,
                   gen: torch.Generator) -> Pool: ...

    def loss(self, model, batch: dict[str, torch.Tensor], options: Options, bench: Bench) -> torch.Tensor: ...


def _chunked(model, x: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor, device: torch.device,
             dtype: torch.dtype) -> torch.Tensor:
    """The model's predictions for x, computed on `device` and returned where x is (pools live on the CPU)."""
    t = torch.as_tensor(t).expand(len(x)) if torch.as_tensor(t).ndim == 0 else t
    out = []
    for s in range(0, len(x), EVAL_CHUNK):
        xs, ts = x[s:s + EVAL_CHUNK].to(device, dtype), t[s:s + EVAL_CHUNK].to(device)
        cs = cond.expand(len(xs), *cond.shape[1:]) if len(cond) == 1 else cond[s:s + EVAL_CHUNK]
        cs = cs.to(device, dtype) if cs.is_floating_point() else cs.to(device)  # token ids stay integers
        out.append(model(xs, ts, cs).float().to(x.device))
    return torch.cat(out)
