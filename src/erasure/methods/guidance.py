"""Inference-time baselines: they change no weights, so anyone holding the weights can turn them off.

For comparison tables only:
  - negative prompt: the concept as the negative prompt (classifier-free guidance away from it);
  - SLD (Safe Latent Diffusion): safety guidance away from the concept, via diffusers'
    `StableDiffusionPipelineSafe` built from the same components (works for any SD 1.x/2.x-style
    pipeline); its `sld_*` knobs default to the paper's "medium" configuration.
"""

from __future__ import annotations

import numpy as np
import torch

from ..sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS, generate

SLD_MEDIUM = dict(sld_guidance_scale=1000.0, sld_warmup_steps=10, sld_threshold=0.01,
                  sld_momentum_scale=0.3, sld_mom_beta=0.4)
BASELINES = ("none", "negative-prompt", "sld")


def generate_with_baseline(pipe, baseline: str, concept: str, prompts: list[str], seeds: list[int],
                           steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
                           batch_size: int = 32, progress: bool = True, **sld) -> np.ndarray:
    if baseline == "none":
        return generate(pipe, prompts, seeds, steps, guidance, batch_size=batch_size, progress=progress)
    if baseline == "negative-prompt":
        return generate(pipe, prompts, seeds, steps, guidance, negative_prompt=concept, batch_size=batch_size,
                        progress=progress)
    if baseline == "sld":
        return _sld(pipe, concept, prompts, seeds, steps, guidance, batch_size, progress, {**SLD_MEDIUM, **sld})
    raise ValueError(f"baseline {baseline!r} unknown; expected one of {', '.join(BASELINES)}")


def _sld(pipe, concept, prompts, seeds, steps, guidance, batch_size, progress, knobs) -> np.ndarray:
    # SLD combines the UNet's outputs with weights summing to 1, valid for v-prediction outputs too;
    # only its elementwise sld_threshold was calibrated on epsilon outputs (velocity differs in scale).
    from diffusers import StableDiffusionPipelineSafe

    from ..progress import Progress

    safe = StableDiffusionPipelineSafe(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                       unet=pipe.unet, scheduler=pipe.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    safe.set_progress_bar_config(disable=True)
    safe.safety_concept = concept
    out = []
    with Progress(len(prompts), "sampling (SLD)", "img", enabled=progress) as bar:
        for s in range(0, len(prompts), batch_size):
            gens = [torch.Generator("cpu").manual_seed(int(x)) for x in seeds[s:s + batch_size]]
            with torch.no_grad():
                imgs = safe(prompt=prompts[s:s + batch_size], num_inference_steps=steps, guidance_scale=guidance,
                            generator=gens, output_type="np", **knobs).images
            out.append(np.clip(np.rint(np.asarray(imgs) * 255), 0, 255).astype(np.uint8))
            bar.update(len(gens))
    return np.concatenate(out)
