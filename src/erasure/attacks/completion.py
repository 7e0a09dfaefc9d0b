"""Diffusion completion, a probe that never touches the text: the concept's own images noised to an
intermediate step and denoised by the erased model ("When Are Concepts Erased From Diffusion
Models?", NeurIPS 2025). A model that still knows the concept completes it; one that has lost it
drifts toward something else. This is diffusers' image-to-image pipeline (SDEdit) over the same
components: `strength` is the share of the schedule the images are noised through.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..families import is_sdxl


def complete(pipe, images: np.ndarray, prompt: str, seeds: list[int], *, strength: float = 0.6, steps: int = 25,
             guidance: float = 5.0, batch_size: int = 32) -> np.ndarray:
    """uint8 (N, H, W, 3): each of `images` (uint8 NHWC) noised to `strength` and completed under
    `prompt` (use a neutral one, e.g. "" or the anchor's, so that only the image carries the concept),
    image i seeded with seeds[i]."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength {strength}: expected a share of the schedule in (0, 1]")
    if len(images) != len(seeds):
        raise ValueError(f"{len(images)} images but {len(seeds)} seeds")
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    cls = StableDiffusionXLImg2ImgPipeline if is_sdxl(pipe) else StableDiffusionImg2ImgPipeline
    parts = {k: v for k, v in pipe.components.items() if k in cls._get_signature_keys(cls)[0]}
    if "requires_safety_checker" in cls._get_signature_keys(cls)[1]:  # the model's own checker, as it shipped
        parts["requires_safety_checker"] = parts.get("safety_checker") is not None
    img2img = cls(**parts)
    img2img.set_progress_bar_config(disable=True)
    out = []
    for s in range(0, len(images), batch_size):
        chunk = [Image.fromarray(x) for x in images[s:s + batch_size]]
        gens = [torch.Generator("cpu").manual_seed(int(x)) for x in seeds[s:s + batch_size]]
        with torch.no_grad():
            res = img2img(prompt=[prompt] * len(chunk), image=chunk, strength=strength, num_inference_steps=steps,
                          guidance_scale=guidance, generator=gens, output_type="np").images
        out.append(np.clip(np.rint(res * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)
