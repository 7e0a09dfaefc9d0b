"""What training must know about a model's family: its scheduler config (SD 1.x / 2.x / XL) and, for
SDXL, its second text encoder and added conditioning.

- Prediction space (`prediction_type`): an epsilon model predicts the noise, a v-prediction model
  (SD 2.x 768) the velocity v = sqrt(acp_t) noise - sqrt(1 - acp_t) x0. A denoising loss targets
  the one the model predicts. Affine combinations of model outputs whose weights sum to 1 (ESD's
  target, CFG, All-but-One's difference of two outputs against another difference) are valid in
  either space, so methods that only combine outputs need no conversion.
- Forward process: x_t = sqrt(acp_t) x0 + sqrt(1 - acp_t) noise, the DDPM process of the training
  schedule (betas of the config), whatever sampler the folder ships. Euler's own `add_noise` is
  sigma space (x0 + sigma_t noise, not a UNet input) and indexes its sampling timesteps.
- Trajectory sampler: the model's own scheduler class where partial trajectories can step it in
  lockstep over a shrinking batch (DDIM, Euler: one model call per step, no history); other
  classes (PNDM, DPM-Solver, ...) keep a multistep history per batch, so trajectories run DDIM on
  the same training schedule (what ESD's reference code does for SD 1.4's PNDM).
- SDXL conditioning (as StableDiffusionXLPipeline.encode_prompt): both encoders' penultimate hidden
  states concatenated, the pooled (projected) embedding of text_encoder_2, and time ids (original
  size, crop (0, 0), target size: the UNet's default image size) with every UNet call. The pooled
  embedding travels as one extra last row of the conditioning tensor, so pools, tables and the
  methods handle one tensor per prompt on every family; EditableModel splits it off again.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")
SDXL_EMBEDDING_RULE = ("rule 'embedding' trains token-embedding rows of one text encoder; SDXL conditions on "
                       "two, so it is not supported there: use a UNet rule (xattn, xattn-kv, attn, noxattn, "
                       "noxattn-linear, full)")
TRAJECTORY_SCHEDULERS = ("DDIMScheduler", "EulerDiscreteScheduler")


class FamilyError(ValueError):
    pass


@dataclass(frozen=True)
class Family:
    """The training-relevant facts of one model (built from its scheduler config)."""

    scheduler_config: dict

    @property
    def prediction_type(self) -> str:
        kind = self.scheduler_config.get("prediction_type", "epsilon")
        if kind not in PREDICTION_TYPES:
            raise FamilyError(f"scheduler config prediction_type {kind!r} is not supported for training; "
                              f"expected one of {', '.join(PREDICTION_TYPES)}")
        return kind

    @property
    def scheduler_class(self) -> str:
        """The config's `_class_name` (Bench.scheduler_config sets it to the class in use); DDIM without."""
        return self.scheduler_config.get("_class_name", "DDIMScheduler")

    @cached_property
    def forward(self):
        """A DDPMScheduler on the training schedule: add_noise and get_velocity from alphas_cumprod."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler_config)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.forward.add_noise(x0, noise, t)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoising target in the model's prediction space (the noise itself for epsilon)."""
        if self.prediction_type == "epsilon":
            return noise
        return self.forward.get_velocity(x0, noise, t)

    def target_rows(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pool rows beside the raw `noise` row: the velocity on v-prediction models, none on epsilon
        models (their pools stay as they were)."""
        return {} if self.prediction_type == "epsilon" else {"velocity": self.target(x0, noise, t)}

    def trajectory_scheduler(self):
        """A fresh scheduler for partial trajectories: the model's own class where it steps in lockstep."""
        import diffusers

        name = self.scheduler_class if self.scheduler_class in TRAJECTORY_SCHEDULERS else "DDIMScheduler"
        return getattr(diffusers, name).from_config(self.scheduler_config)


def of(scheduler_config: dict) -> Family:
    family = Family(dict(scheduler_config))
    family.prediction_type  # noqa: B018 -- an unsupported prediction type fails here, before any work
    return family


def denoising_target(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A pool batch's denoising target: `velocity` where the pool holds one (v-prediction), else `noise`."""
    return batch["velocity"] if "velocity" in batch else batch["noise"]


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def added_conditioning(pipe) -> dict:
    """EditableModel's SDXL arguments (time ids, pooled width); none for SD 1.x / 2.x."""
    if not is_sdxl(pipe):
        return {}
    unet = pipe.unet
    if unet.config.addition_embed_type != "text_time":
        raise FamilyError(f"SDXL UNet addition_embed_type {unet.config.addition_embed_type!r}: training "
                          "supports 'text_time' (base SDXL models)")
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    pixels = size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    time_ids = torch.tensor([[pixels, pixels, 0, 0, pixels, pixels]], dtype=torch.float32)
    if (unet.config.projection_class_embeddings_input_dim
            != 6 * unet.config.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim):
        raise FamilyError("SDXL UNet projection_class_embeddings_input_dim does not match 6 time ids and "
                          "text_encoder_2's projection_dim (a refiner with aesthetic scores is not supported)")
    return {"time_ids": time_ids, "pooled_dim": int(pipe.text_encoder_2.config.projection_dim)}


@torch.no_grad()
def encode_sdxl(pipe, prompts: list[str]) -> torch.Tensor:
    """(N, seq + 1, dim): both encoders' penultimate hidden states, concatenated, and the pooled
    embedding of text_encoder_2 as the last row (zero-padded to dim). The empty prompt is zeros where
    the pipeline samples with zero unconditional embeddings (`force_zeros_for_empty_prompt`)."""
    states, pooled = [], None
    for tok, enc in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(enc.device)
        out = enc(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = out[0]  # the last encoder's: text_encoder_2's projected text embedding
    hidden = torch.cat(states, dim=-1)
    if pooled.shape[-1] > hidden.shape[-1]:
        raise FamilyError(f"SDXL pooled embedding ({pooled.shape[-1]}) wider than the hidden states "
                          f"({hidden.shape[-1]}): cannot carry it as a conditioning row")
    row = torch.nn.functional.pad(pooled, (0, hidden.shape[-1] - pooled.shape[-1]))[:, None]
    cond = torch.cat([hidden, row.to(hidden.dtype)], dim=1)
    if getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        cond[torch.as_tensor([p == "" for p in prompts])] = 0
    return cond.detach()
