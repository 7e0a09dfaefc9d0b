"""Tiny random-init diffusers folders of each Stable Diffusion family, for tests of real-model code.

Each builder writes a standard diffusers folder (safetensors weights) that the matching pipeline
class loads with `from_pretrained`:
  - sd1:        SD 1.x, DDIM (epsilon), with a safety checker and its feature extractor;
  - sd2-v:      SD 2.x, DDIM with v-prediction (the 768 models), linear projections in attention;
  - sd2-euler:  SD 2.x, Euler discrete scheduler (epsilon), as many SD 2.x fine-tunes ship;
  - sdxl:       SDXL, two text encoders (the second with projection), pooled embeddings and time ids,
                Euler discrete scheduler.
Sizes are the smallest diffusers accepts: a step takes milliseconds; the numbers mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("sd1", "sd2-v", "sd2-euler", "sdxl")


def tiny_tokenizer(max_length: int = 64):
    """A byte-level CLIP tokenizer without merges: any ASCII text encodes (one token per character)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
            vocab[ch + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                         unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=max_length)


def _text_config(vocab_size: int, hidden: int = 32, projection: int | None = None):
    from transformers import CLIPTextConfig

    extra = {"projection_dim": projection} if projection else {}
    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                          pad_token_id=1, bos_token_id=0, eos_token_id=1, **extra)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(16, 16), norm_num_groups=8, latent_channels=4, sample_size=16,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def _safety_checker():
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=100, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1),
                        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=8),
                        projection_dim=16)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return StableDiffusionSafetyChecker(config), processor


def build(family: str, path: Path) -> Path:
    """Write the tiny `family` pipeline to `path` (a new folder) and return it."""
    from diffusers import (DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    if family == "sdxl":
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32),
            norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
            cross_attention_dim=64)
        pipe = StableDiffusionXLPipeline(
            vae=_vae(), text_encoder=CLIPTextModel(_text_config(len(tok.get_vocab()))), tokenizer=tok,
            text_encoder_2=CLIPTextModelWithProjection(_text_config(len(tok.get_vocab()), projection=32)),
            tokenizer_2=tiny_tokenizer(), unet=unet,
            scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                             timestep_spacing="leading", steps_offset=1))
    else:
        sd2 = family.startswith("sd2")
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32),
            norm_num_groups=8, cross_attention_dim=32, attention_head_dim=(2, 4) if sd2 else 4,
            use_linear_projection=sd2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
        scheduler = {"sd1": DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False),
                     "sd2-v": DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False,
                                            prediction_type="v_prediction"),
                     "sd2-euler": EulerDiscreteScheduler(**common)}[family]
        checker, processor = _safety_checker() if family == "sd1" else (None, None)
        pipe = StableDiffusionPipeline(
            vae=_vae(), text_encoder=CLIPTextModel(_text_config(len(tok.get_vocab()))), tokenizer=tok,
            unet=unet, scheduler=scheduler, safety_checker=checker, feature_extractor=processor,
            requires_safety_checker=checker is not None)
    pipe.save_pretrained(str(path), safe_serialization=True)
    return Path(path)


def pipeline_class(family: str):
    """The diffusers class a user would load `family`'s folder with."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
