"""Train the shipped miniworld model from scratch on a CPU, in resumable phases.

Phases, each resuming from its last checkpoint under the work folder:
  data       render the training set (images + scene labels), cached
  vae        train the autoencoder (encoder and decoder)
  diffusion  freeze the encoder, encode the set once, train text encoder + UNet (EMA kept)
  decoder    refine the decoder alone on the frozen latents (latent space unchanged)
  export     write the diffusers folder (EMA weights) and the tokenizer
  implicit   refine an exported pipeline so that naming the implicit attribute draws it (below);
             `export-implicit` writes the refined folder

Every random draw of step k comes from a stream seeded by (seed, k), so a resumed run continues
exactly as an uninterrupted one would. Wall time per phase is recorded in `train_log.json`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from .architecture import build_scheduler, build_text_encoder, build_unet, build_vae
from .render import Scene, render
from .world import caption, make_dataset

DATA_SEED = 1234


@dataclass
class TrainConfig:
    workdir: Path = Path(".cache/miniworld-train")
    seed: int = 0
    dataset_size: int = 60000
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_lr: float = 5e-4
    diffusion_steps: int = 9000
    diffusion_batch: int = 32
    diffusion_lr: float = 3e-4
    uncond_share: float = 0.1
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    decoder_steps: int = 0  # optional decoder-only refinement; the shipped model did not need it
    decoder_lr: float = 2e-4
    checkpoint_every: int = 250
    threads: int = 2
    run_steps: int | None = None  # stop (with a checkpoint) after this many steps in this invocation
    # The implicit-attribute refinement (refine_implicit).
    implicit_steps: int = 800
    implicit_lr: float = 1e-4
    implicit_batch: int = 24  # ordinary training examples per step, as in the diffusion phase
    implicit_pairs: int = 8  # plus this many (named, unnamed) caption pairs at the highest noise
    implicit_t_min: int = 900
    implicit_weight_cap: float = 200.0


def _log(cfg: TrainConfig, phase: str, **fields) -> None:
    path = cfg.workdir / "train_log.json"
    log = json.loads(path.read_text()) if path.exists() else []
    log.append({"phase": phase, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields})
    path.write_text(json.dumps(log, indent=1))


def _render_chunk(args: tuple[int, int, int]):
    seed, start, count = args
    images, _, scenes = make_dataset(seed, count, start)
    return images, [asdict(s) for s in scenes]


def prepare_data(cfg: TrainConfig) -> tuple[np.ndarray, list[Scene]]:
    images_path, scenes_path = cfg.workdir / "images.npy", cfg.workdir / "scenes.json"
    if images_path.exists() and scenes_path.exists():
        scenes = [Scene(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()})
                  for s in json.loads(scenes_path.read_text())]
        return np.load(images_path), scenes
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    chunk = 2000
    jobs = [(DATA_SEED, s, min(chunk, cfg.dataset_size - s)) for s in range(0, cfg.dataset_size, chunk)]
    images, scene_dicts = [], []
    with Pool(cfg.threads) as pool:
        for imgs, sc in tqdm(pool.imap(_render_chunk, jobs), total=len(jobs), desc="rendering world"):
            images.append(imgs)
            scene_dicts += sc
    images = np.concatenate(images)
    np.save(images_path.with_suffix(".tmp.npy"), images)
    images_path.with_suffix(".tmp.npy").replace(images_path)
    scenes_path.write_text(json.dumps(scene_dicts))
    return prepare_data(cfg)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _step_rng(cfg: TrainConfig, phase: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    return (np.random.default_rng([cfg.seed, phase, step]),
            torch.Generator().manual_seed(cfg.seed * 1_000_003 + phase * 100_003 + step))


def _lr(base: float, step: int, total: int, warmup: int = 200) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _loop(cfg, name, phase_id, total, modules, params, lr, step_fn, log_every=50):
    """Shared resumable loop: checkpoint every N steps, deterministic per-step randomness."""
    ckpt = cfg.workdir / name
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start = 0
    if ckpt.exists():
        start = load_checkpoint(ckpt, modules, opt)["step"]
    if start >= total:
        return
    stop = total if cfg.run_steps is None else min(total, start + cfg.run_steps)
    t0, losses = time.time(), []
    bar = tqdm(range(start, stop), initial=start, total=total, desc=name)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(lr, step, total)
        nrng, trng = _step_rng(cfg, phase_id, step)
        loss = step_fn(nrng, trng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if "ema" in modules:
            with torch.no_grad():
                for e, p in zip(modules["ema"].parameters(), params):
                    e.lerp_(p, 1 - cfg.ema_decay)
        losses.append(loss.item())
        if (step + 1) % log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-log_every:]):.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == stop:
            save_checkpoint(ckpt, modules, opt, step + 1)
            _log(cfg, name, step=step + 1, loss=float(np.mean(losses[-log_every:])),
                 seconds=round(time.time() - t0, 1))
            t0, losses = time.time(), losses[-log_every:]


def train_vae(cfg: TrainConfig) -> None:
    images, _ = prepare_data(cfg)
    torch.manual_seed(cfg.seed)  # initial weights are part of what the seed fixes
    vae = build_vae()

    def step(nrng, trng):
        x = _to_tensor(images[nrng.integers(len(images), size=cfg.vae_batch)])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=trng)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-5 * kl

    _loop(cfg, "vae", 1, cfg.vae_steps, {"vae": vae}, list(vae.parameters()), cfg.vae_lr, step)


def _trained_vae(cfg: TrainConfig):
    vae = build_vae()
    load_checkpoint(cfg.workdir / "vae", {"vae": vae}, None)
    return vae


def encode_dataset(cfg: TrainConfig) -> tuple[np.ndarray, float]:
    """Posterior means of the whole set under the frozen encoder, and the latent scaling factor."""
    path = cfg.workdir / "latents.npy"
    if not path.exists():
        images, _ = prepare_data(cfg)
        vae = _trained_vae(cfg).eval()
        out = []
        with torch.no_grad():
            for s in tqdm(range(0, len(images), 512), desc="encoding"):
                out.append(vae.encode(_to_tensor(images[s:s + 512])).latent_dist.mean.numpy())
        np.save(cfg.workdir / "latents.tmp.npy", np.concatenate(out))
        (cfg.workdir / "latents.tmp.npy").replace(path)
    latents = np.load(path)
    return latents, float(1.0 / latents.std())


def load_tokenizer(cfg: TrainConfig):
    from transformers import CLIPTokenizer

    from .tokenizer import build_tokenizer

    path = cfg.workdir / "tokenizer"
    if not path.exists():
        build_tokenizer(cfg.seed).save_pretrained(str(path))
    return CLIPTokenizer.from_pretrained(str(path))


def _diffusion_modules(cfg: TrainConfig, tokenizer):
    torch.manual_seed(cfg.seed)
    unet = build_unet()
    text = build_text_encoder(len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id,
                              tokenizer.eos_token_id)
    return torch.nn.ModuleDict({"unet": unet, "text_encoder": text})


def train_diffusion(cfg: TrainConfig) -> None:
    latents, scale = encode_dataset(cfg)
    _, scenes = prepare_data(cfg)
    tokenizer = load_tokenizer(cfg)
    model = _diffusion_modules(cfg, tokenizer)
    ema = copy.deepcopy(model).requires_grad_(False)
    sched = build_scheduler()
    acp = sched.alphas_cumprod
    snr = acp / (1 - acp)
    weights = torch.clamp(snr, max=cfg.min_snr_gamma) / snr  # min-SNR weighting, epsilon target

    def step(nrng, trng):
        idx = nrng.integers(len(latents), size=cfg.diffusion_batch)
        caps = ["" if nrng.random() < cfg.uncond_share else caption(scenes[i], nrng) for i in idx]
        ids = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        z0 = torch.from_numpy(latents[idx]) * scale
        noise = torch.randn(z0.shape, generator=trng)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=trng)
        zt = sched.add_noise(z0, noise, t)
        cond = model["text_encoder"](ids)[0]
        pred = model["unet"](zt, t, cond).sample
        per = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        return (per * weights[t]).mean()

    _loop(cfg, "diffusion", 2, cfg.diffusion_steps, {"model": model, "ema": ema},
          list(model.parameters()), cfg.diffusion_lr, step)


def train_decoder(cfg: TrainConfig) -> None:
    images, _ = prepare_data(cfg)
    latents, _ = encode_dataset(cfg)
    vae = _trained_vae(cfg)
    dec = torch.nn.ModuleDict({"post_quant_conv": vae.post_quant_conv, "decoder": vae.decoder})

    def step(nrng, trng):
        idx = nrng.integers(len(images), size=cfg.vae_batch)
        x = _to_tensor(images[idx])
        z = torch.from_numpy(latents[idx])
        z = z + 0.02 * z.std() * torch.randn(z.shape, generator=trng)  # tolerate sampler error
        rec = vae.decode(z).sample
        return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)

    _loop(cfg, "decoder", 3, cfg.decoder_steps, {"decoder": dec}, list(dec.parameters()),
          cfg.decoder_lr, step)


def export(cfg: TrainConfig, out: Path) -> Path:
    """Write the trained pipeline as a standard diffusers folder (weights in safetensors)."""
    from diffusers import StableDiffusionPipeline

    from ..io import atomic_dir

    _, scale = encode_dataset(cfg)
    vae = _trained_vae(cfg)
    if (cfg.workdir / "decoder").exists():
        dec = torch.nn.ModuleDict({"post_quant_conv": vae.post_quant_conv, "decoder": vae.decoder})
        load_checkpoint(cfg.workdir / "decoder", {"decoder": dec}, None)
    vae.register_to_config(scaling_factor=scale)
    tokenizer = load_tokenizer(cfg)
    model = _diffusion_modules(cfg, tokenizer)
    ema = copy.deepcopy(model)
    load_checkpoint(cfg.workdir / "diffusion", {"model": model, "ema": ema}, None)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=ema["text_encoder"], tokenizer=tokenizer, unet=ema["unet"],
        scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        log = cfg.workdir / "train_log.json"
        if log.exists():
            (tmp / "train_log.json").write_text(log.read_text())
    return out


def _implicit_modules(base: Path):
    """An exported pipeline, and its text encoder + UNet (the refined part) as one module."""
    from ..models import load_pipeline  # one clear error for a missing or corrupt folder

    pipe = load_pipeline(str(base))
    model = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
    return pipe, model


def refine_implicit(cfg: TrainConfig, base: Path) -> None:
    """Teach the exported model that naming the implicit attribute draws it.

    The shipped model (8,500 diffusion steps) drew the golden frame at its unnamed rate whether or not
    the caption named it: whether an image gets a frame is settled in the first sampling steps, from
    pure noise, and there the epsilon loss carries almost no gradient (its x0 error is scaled by the
    signal-to-noise ratio, about 0.005 at t=999), while from t ~ 900 down the noisy latent itself
    shows the frame, so the caption was never needed. This phase continues training from `base` on the
    same world, adding caption pairs at t in [implicit_t_min, 1000): one scene with its frame named,
    and the same scene, noise and t with an ordinary unnamed caption (frame at the world's unnamed
    rate). Their loss is weighted as an x0 loss (1/SNR, capped), a reweighting over timesteps that
    leaves the optimum, the world's conditional distribution, unchanged.
    """
    from .concepts import FRAME_NAMED_SHARE, FRAME_SHARE
    from .world import make_example, sample_scene, scene_rng

    pipe, model = _implicit_modules(base)
    vae, tokenizer, sched = pipe.vae.eval().requires_grad_(False), pipe.tokenizer, build_scheduler()
    model.requires_grad_(True).train()
    scale = vae.config.scaling_factor
    acp = sched.alphas_cumprod
    snr = acp / (1 - acp)
    min_snr = torch.clamp(snr, max=cfg.min_snr_gamma) / snr
    x0_weight = torch.clamp(1 / snr, max=cfg.implicit_weight_cap)
    # P(frame | caption does not name it) in the world: frames left unnamed over all unnamed captions.
    unnamed_frame = FRAME_SHARE * (1 - FRAME_NAMED_SHARE) / (1 - FRAME_SHARE * FRAME_NAMED_SHARE)

    def encode(images: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return vae.encode(_to_tensor(images)).latent_dist.mean * scale

    def step(nrng, trng):
        # Ordinary examples: the training set's own images and captions (DATA_SEED, its index range).
        examples = [make_example(DATA_SEED, int(i)) for i in nrng.integers(cfg.dataset_size, size=cfg.implicit_batch)]
        caps = ["" if nrng.random() < cfg.uncond_share else caption(sc, nrng) for _, _, sc in examples]
        images = [img for img, _, _ in examples]
        # Pairs: an ordinary scene (no instance, no memorized image) drawn twice.
        pairs = []
        while len(pairs) < cfg.implicit_pairs:
            sc = sample_scene(scene_rng(int(nrng.integers(2**31)), 0))
            if not (sc.memorized or sc.instance):
                pairs.append(sc)
        named = [dataclasses.replace(sc, frame=True) for sc in pairs]
        unnamed = [dataclasses.replace(sc, frame=bool(nrng.random() < unnamed_frame)) for sc in pairs]
        caps += [caption(sc, nrng, name_frame=True) for sc in named]
        caps += [caption(sc, nrng, name_frame=False) for sc in unnamed]
        images += [render(sc) for sc in named + unnamed]
        z0 = encode(np.stack(images))
        k, n = cfg.implicit_batch, cfg.implicit_pairs
        noise = torch.randn(z0.shape, generator=trng)
        noise[k + n:] = noise[k:k + n]
        t = torch.randint(0, sched.config.num_train_timesteps, (k,), generator=trng)
        tp = torch.randint(cfg.implicit_t_min, sched.config.num_train_timesteps, (n,), generator=trng)
        t = torch.cat([t, tp, tp])
        weights = torch.cat([min_snr[t[:k]], x0_weight[t[k:]]])
        ids = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        pred = model["unet"](sched.add_noise(z0, noise, t), t, model["text_encoder"](ids)[0]).sample
        return (((pred - noise) ** 2).mean(dim=(1, 2, 3)) * weights).mean()

    _loop(cfg, "implicit", 4, cfg.implicit_steps, {"model": model}, list(model.parameters()),
          cfg.implicit_lr, step, log_every=25)


def export_implicit(cfg: TrainConfig, base: Path, out: Path) -> Path:
    """Write `base` with the refined text encoder and UNet as a diffusers folder (safetensors)."""
    from ..io import atomic_dir

    pipe, model = _implicit_modules(base)
    load_checkpoint(cfg.workdir / "implicit", {"model": model}, None)
    log = json.loads((base / "train_log.json").read_text()) if (base / "train_log.json").exists() else []
    ours = cfg.workdir / "train_log.json"
    log += [e for e in (json.loads(ours.read_text()) if ours.exists() else []) if e["phase"] == "implicit"]
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        for cfg_file in [tmp / "model_index.json", *tmp.glob("*/config.json")]:
            # Loading records the base folder as _name_or_path; the export must not name a local path.
            data = json.loads(cfg_file.read_text())
            if data.pop("_name_or_path", None) is not None:
                cfg_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        (tmp / "train_log.json").write_text(json.dumps(log, indent=1))
    return out


PHASES = {"data": lambda c: prepare_data(c), "vae": train_vae, "diffusion": train_diffusion,
          "decoder": train_decoder}
