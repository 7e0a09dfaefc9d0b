"""The miniature Stable Diffusion: component configs as plain data, and their constructors.

32x32 RGB images; the VAE downsamples 2x to 16x16x4 latents; UNet with cross-attention on the two
lower resolutions; a 3-layer CLIP text encoder of width 128. About 9 M parameters in all.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .tokenizer import MAX_LENGTH

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=32, layers_per_block=1,
    block_out_channels=(32, 64), norm_num_groups=16,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
)

UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(64, 128, 128), norm_num_groups=32, cross_attention_dim=128,
    attention_head_dim=(4, 4, 4),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
)

TEXT_CONFIG = dict(
    hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH, projection_dim=128, hidden_act="quick_gelu",
)

# Stable Diffusion's own schedule, so that method defaults (DDIM 50 steps, ...) carry over.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE_CONFIG)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET_CONFIG)


def build_text_encoder(vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> CLIPTextModel:
    cfg = CLIPTextConfig(vocab_size=vocab_size, pad_token_id=pad_id, bos_token_id=bos_id,
                         eos_token_id=eos_id, **TEXT_CONFIG)
    return CLIPTextModel(cfg)


def build_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULER_CONFIG)
