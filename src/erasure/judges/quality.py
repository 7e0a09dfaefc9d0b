"""Image-quality metrics for any model, on CLIP image features (a ClipJudge's `image_features`).

No Inception here (it needs torchvision / torch-fidelity, which do not run offline on these machines), so
FID and KID are computed by torchmetrics on CLIP features: comparable between runs that use the same CLIP
model, not with published Inception FIDs. Images are uint8 RGB NHWC arrays throughout.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import JudgeError

_BATCH = 32  # images per CLIP forward


class ClipFeatures(torch.nn.Module):
    """uint8 NCHW images -> the judge's unit-norm CLIP image features, as torchmetrics' `feature=` module."""

    def __init__(self, judge):
        super().__init__()
        self.judge = judge
        # Set so that torchmetrics does not probe the width with a 299x299 Inception-sized image.
        self.num_features = int(self.forward(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.permute(0, 2, 3, 1).cpu().numpy()
        return self.judge.image_features(images).double()


def _images(a: np.ndarray, what: str, at_least: int) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise JudgeError(f"{what}: expected uint8 RGB images (N, H, W, 3), got {a.dtype} {tuple(a.shape)}")
    if len(a) < at_least:
        raise JudgeError(f"{what}: {len(a)} images, at least {at_least} needed")
    return a


def _update(metric, images: np.ndarray, real: bool) -> None:
    for i in range(0, len(images), _BATCH):
        metric.update(torch.from_numpy(np.ascontiguousarray(images[i:i + _BATCH])).permute(0, 3, 1, 2), real=real)


def fid(judge, real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between the CLIP features of two image sets (each needs 2+ images for a covariance)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _images(real, "fid real", 2), _images(fake, "fid fake", 2)
    metric = FrechetInceptionDistance(feature=ClipFeatures(judge), normalize=False)
    _update(metric, real, True)
    _update(metric, fake, False)
    return float(metric.compute())


def kid(judge, real: np.ndarray, fake: np.ndarray, subset_size: int, subsets: int = 100,
        seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance on CLIP features: (mean, std) over `subsets` random subsets of `subset_size`.

    torchmetrics draws the subsets from torch's global generator; we seed a forked one so the result repeats
    and the caller's random state is left alone.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 2:
        raise JudgeError(f"kid: subset_size {subset_size!r} must be an integer >= 2 (the unbiased MMD needs pairs)")
    real = _images(real, f"kid real (subset_size {subset_size})", subset_size)
    fake = _images(fake, f"kid fake (subset_size {subset_size})", subset_size)
    metric = KernelInceptionDistance(feature=ClipFeatures(judge), subsets=subsets, subset_size=subset_size,
                                     normalize=False)
    _update(metric, real, True)
    _update(metric, fake, False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def clip_score(judge, images: np.ndarray, prompts: list[str]) -> float:
    """Mean over images of 100 * max(cos(image, its own prompt), 0)."""
    images = _images(images, "clip_score images", 1)
    prompts = list(prompts)
    if len(prompts) != len(images):
        raise JudgeError(f"clip_score: {len(images)} images but {len(prompts)} prompts (one prompt per image)")
    scores = np.concatenate([judge.clip_score(images[i:i + _BATCH], prompts[i:i + _BATCH])
                             for i in range(0, len(images), _BATCH)])
    return float(scores.mean())


def drift(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean absolute pixel change (0..1) per image pair (same prompt and seed before and after erasure), and
    its mean over the pairs (equal to erasure.evaluate.drift for same-sized images)."""
    before, after = _images(before, "drift before", 1), _images(after, "drift after", 1)
    if before.shape != after.shape:
        raise JudgeError(f"drift: before {tuple(before.shape)} and after {tuple(after.shape)} differ; expected "
                         "the same prompts and seeds, image for image")
    per = np.abs(before.astype(np.float32) - after.astype(np.float32)).mean(axis=(1, 2, 3)) / 255.0
    return per.astype(np.float64), float(per.mean())
