"""What training must know about a model's family, read from its scheduler config (SD 1.x / 2.x / XL).

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
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")
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
