"""Sampling with per-image seeds, progress (erasure/progress.py), and image grids.

Each image i gets its own generator seeded with `seed + i`, so an image does not depend on the
batch it was drawn in, and any single image can be regenerated alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .progress import Progress

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 5.0


def _run(pipe, prompts, seeds, steps, guidance, negative_prompt, batch_size, progress, desc, output_type):
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    out = []
    with Progress(len(prompts), desc, "img", enabled=progress) as bar:
        for s in range(0, len(prompts), batch_size):
            p, sd = prompts[s:s + batch_size], seeds[s:s + batch_size]
            gens = [torch.Generator("cpu").manual_seed(int(x)) for x in sd]
            neg = [negative_prompt] * len(p) if negative_prompt else None
            with torch.no_grad():
                out.append(pipe(prompt=p, negative_prompt=neg, num_inference_steps=steps,
                                guidance_scale=guidance, generator=gens, output_type=output_type).images)
            bar.update(len(p))
    return out


def generate(pipe, prompts: list[str], seeds: list[int], steps: int = DEFAULT_STEPS,
             guidance: float = DEFAULT_GUIDANCE, negative_prompt: str | None = None,
             batch_size: int = 32, progress: bool = True, desc: str = "generating") -> np.ndarray:
    """Return uint8 images (N, H, W, 3) for prompts[i] with seeds[i]."""
    out = _run(pipe, prompts, seeds, steps, guidance, negative_prompt, batch_size, progress, desc, "np")
    out = [np.clip(np.rint(imgs * 255), 0, 255).astype(np.uint8) for imgs in out]
    return np.concatenate(out) if out else np.empty((0, 0, 0, 3), dtype=np.uint8)


def generate_latents(pipe, prompts: list[str], seeds: list[int], steps: int = DEFAULT_STEPS,
                     guidance: float = DEFAULT_GUIDANCE, batch_size: int = 32, progress: bool = True,
                     desc: str = "sampling latents") -> torch.Tensor:
    """Final latents (scaled, as the UNet sees them) instead of decoded images: no VAE round trip."""
    out = _run(pipe, prompts, seeds, steps, guidance, None, batch_size, progress, desc, "latent")
    return torch.cat([o.float() for o in out])


def grid(images: np.ndarray, cols: int | None = None, zoom: int = 1, pad: int = 1) -> Image.Image:
    n, h, w, _ = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    out = Image.fromarray(canvas)
    if zoom > 1:
        out = out.resize((out.width * zoom, out.height * zoom), Image.NEAREST)
    return out


def load_images(paths: list[Path]) -> tuple[list[Path], np.ndarray]:
    """Read image files and the image files in folders (sorted), as uint8 RGB arrays."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image file or folder: {p}")
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, paths))}")
    arrays = []
    for f in files:
        try:
            arrays.append(np.asarray(Image.open(f).convert("RGB")))
        except OSError as exc:
            raise ValueError(f"{f} is not a readable image: {exc}") from exc
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images differ in size: {sorted(shapes)}")
    return files, np.stack(arrays)


def side_by_side(before: np.ndarray, after: np.ndarray, prompts: list[str], readings: dict[str, list[bool]],
                 label: str, title: str, cols: int = 4, zoom: int = 4) -> Image.Image:
    """Before/after pairs for the review: per prompt the base model's image beside the erased one, each
    with the judge's reading under it (whether it sees `label`, e.g. "'Pip'"), and the prompt under the pair."""
    import textwrap

    from PIL import ImageDraw, ImageFont

    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=13)
    n, h, w, _ = before.shape
    iw, ih, gap, pad = w * zoom, h * zoom, 6, 24  # pairs further apart than their two images
    pair_w = 2 * iw + gap
    chars = max(12, int(pair_w / small.getlength("n")))  # wrap prompts to the pair's width
    wrapped = [textwrap.wrap(p, chars)[:3] for p in prompts[:n]]
    cap_h = 20 + 16 * max((len(x) for x in wrapped), default=1)
    rows = math.ceil(n / cols)
    head_h = 46
    canvas = Image.new("RGB", (pad + cols * (pair_w + pad), head_h + rows * (ih + cap_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 8), title, fill="black", font=font)
    draw.text((pad, 27), f"left: base model, right: erased; under each: does the judge see {label}?",
              fill=(90, 90, 90), font=small)
    for i in range(n):
        r, c = divmod(i, cols)
        x, y = pad + c * (pair_w + pad), head_h + r * (ih + cap_h + pad)
        for j, (when, images) in enumerate((("before", before), ("after", after))):
            xi = x + j * (iw + gap)
            canvas.paste(Image.fromarray(images[i]).resize((iw, ih), Image.NEAREST), (xi, y))
            seen = bool(readings[when][i])
            # After erasure a sighting is the failure to look for: red; before, it is expected.
            colour = ((190, 30, 30) if seen else (20, 130, 50)) if when == "after" else (60, 60, 60)
            draw.text((xi, y + ih + 2), f"{when}: {'seen' if seen else 'not seen'}", fill=colour, font=small)
        for k, line in enumerate(wrapped[i]):
            draw.text((x, y + ih + 18 + 16 * k), line, fill="black", font=small)
    return canvas
