"""Learned-embedding attacks: continuous token embeddings trained to bring an erased concept back.

Both train only a few input-embedding vectors of the text encoder (every weight frozen) with the
ordinary denoising loss on images of the concept, then prompt with them:
  - concept inversion (textual inversion): one new token, in prompts such as "a picture of *";
  - soft prompt: a few tokens appended to the prompt naming the concept ("Pip * * * *"),
    UnlearnDiffAtk's threat model without the discrete search.
Each `*` in a prompt is a placeholder whose input embedding is replaced, by a forward hook on the
text encoder's token embedding, with the next learned vector; the pipeline then encodes prompts as
usual, so any sampler or judge works on the result. SD 1.x / 2.x (one text encoder); SDXL is refused.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..families import is_sdxl, of as family_of
from ..methods.base import encode_images
from ..progress import Progress

PLACEHOLDER = "*"


class AttackError(ValueError):
    pass


@dataclass
class Learned:
    """The learned vectors (k, width) and the prompt template they were trained with."""

    vectors: torch.Tensor
    template: str | list[str]  # e.g. "a picture of *" or "Pip * * * *"; or one per training image
    losses: list[float]


def spaced(prompt: str) -> str:
    """Each placeholder a word of its own ("*," and "*'s" are other tokens than "*")."""
    return re.sub(rf"{re.escape(PLACEHOLDER)}(?=[^\s{re.escape(PLACEHOLDER)}])", f"{PLACEHOLDER} ", prompt)


def placeholder_id(tokenizer) -> int:
    ids = tokenizer(PLACEHOLDER, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise AttackError(f"the tokenizer splits the placeholder {PLACEHOLDER!r} into {len(ids)} tokens; expected one")
    return ids[0]


@contextmanager
def learned_tokens(pipe, vectors: torch.Tensor):
    """While active, the j-th placeholder of every prompt the text encoder reads takes vectors[j]
    (placeholders past the last vector take the last one)."""
    if is_sdxl(pipe):
        raise AttackError("learned-embedding attacks support one text encoder (SD 1.x / 2.x); SDXL has two")
    marker = placeholder_id(pipe.tokenizer)
    embedding = pipe.text_encoder.get_input_embeddings()

    def hook(module, args, output):
        ids = args[0]
        hits = (ids == marker).nonzero(as_tuple=False)
        if len(hits) == 0:
            return output
        out = output.clone()
        slot = torch.zeros(len(ids), dtype=torch.long)
        for row, col in hits.tolist():
            out[row, col] = vectors[min(int(slot[row]), len(vectors) - 1)].to(out.device, out.dtype)
            slot[row] += 1
        return out

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def learn(pipe, images: np.ndarray, template: str | list[str], *, tokens: int = 1, steps: int = 300,
          lr: float = 5e-3, batch_size: int = 8, seed: int = 0, init: str | None = None,
          start: torch.Tensor | None = None, latents: torch.Tensor | None = None,
          progress: bool = True) -> Learned:
    """Train `tokens` vectors so that `template` (holding that many placeholders) denoises `images`
    (uint8 NHWC, the concept's). A list of templates pairs each image with its own prompt (the prompts
    the images were drawn from, the concept's name replaced). `init`: a word whose embedding starts
    every vector (default: the mean token embedding); `start`: the vectors to continue from (a warm
    start, as robust erasure's inner attack does round after round). `latents`: the images already
    encoded (then `images` only counts them)."""
    templates = [template] * len(images) if isinstance(template, str) else list(template)
    if len(templates) != len(images):
        raise AttackError(f"{len(templates)} templates for {len(images)} images; expected one, or one per image")
    for t in dict.fromkeys(templates):
        if t.count(PLACEHOLDER) != tokens:
            raise AttackError(f"template {t!r} holds {t.count(PLACEHOLDER)} placeholders {PLACEHOLDER!r}; "
                              f"expected {tokens}")
    if len(images) == 0:
        raise AttackError("no images of the concept to learn from")
    marker = placeholder_id(pipe.tokenizer)
    for t in dict.fromkeys(templates):  # "*," may be one other token: then nothing would be learned
        seen = pipe.tokenizer(t).input_ids.count(marker)
        if seen != tokens:
            raise AttackError(f"template {t!r}: the tokenizer reads {seen} placeholder token(s) where it holds "
                              f"{tokens} (put a space after each {PLACEHOLDER!r})")
    gen = torch.Generator().manual_seed(seed)
    unet, text, vae, tok = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
    device = next(unet.parameters()).device
    table = text.get_input_embeddings().weight.detach()
    if start is not None:
        if tuple(start.shape) != (tokens, table.shape[1]):
            raise AttackError(f"start vectors of shape {tuple(start.shape)}; expected ({tokens}, {table.shape[1]})")
        vectors = start.detach().float().clone().to(table.device).requires_grad_(True)
    else:
        first = table[tok(init, add_special_tokens=False).input_ids].mean(0) if init else table.mean(0)
        vectors = first.float().repeat(tokens, 1).clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([vectors], lr=lr, weight_decay=0.0)
    family = family_of(dict(pipe.scheduler.config) | {"_class_name": type(pipe.scheduler).__name__})
    if latents is None:  # encoded once
        latents = torch.cat([encode_images(vae, images[s:s + 32]) for s in range(0, len(images), 32)])
    ids = tok(templates, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids.to(device)
    steps_total = int(family.forward.config.num_train_timesteps)
    frozen = [p for m in (unet, text, vae) for p in m.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    losses = []
    try:
        with learned_tokens(pipe, vectors), Progress(steps, "learning tokens", "step", enabled=progress) as bar:
            for _ in range(steps):
                pick = torch.randint(0, len(latents), (batch_size,), generator=gen)
                z = latents[pick]
                t = torch.randint(0, steps_total, (batch_size,), generator=gen)
                noise = torch.randn(z.shape, generator=gen)
                x_t = family.add_noise(z, noise, t)
                target = family.target(z, noise, t)
                cond = text(ids[pick.to(device)])[0]
                pred = unet(x_t.to(device, unet.dtype), t.to(device), cond.to(unet.dtype)).sample
                loss = torch.nn.functional.mse_loss(pred.float(), target.to(device).float())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                bar.update(1)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return Learned(vectors.detach().cpu(), templates[0] if len(set(templates)) == 1 else templates, losses)
