"""The miniworld detector behind the Judge interface, and the miniworld's FID (on the detector's features,
to the world's true renders).

A miniworld probe names a detector head and a label: an image shows the concept when the detector
reads it as that label; for "copy" probes, when its copy similarity to the reference image exceeds the
detector's calibrated threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import Judge, JudgeError


class MiniworldJudge(Judge):
    name = "miniworld"

    def __init__(self, detector=None):
        from ..miniworld.detector import MiniworldDetector

        self.detector = detector if detector is not None else MiniworldDetector.load()

    def detect(self, images: np.ndarray, probe: dict) -> np.ndarray:
        from ..miniworld.detector import COPY_THRESHOLD, HEADS, copy_similarity, memorized_references, to_input

        if "head" not in probe or not probe["head"]:
            raise JudgeError(f"miniworld judge: probe {probe.get('name')!r} has no detector head (it reads only "
                             "the miniworld's own probes)")
        if probe["head"] == "copy":
            label = probe["label"]
            if label.startswith("@"):  # one of the miniworld's own memorized images
                ref = memorized_references()[label[1:]]
            else:
                from PIL import Image

                ref = to_input(np.asarray(Image.open(Path(label)).convert("RGB")))
            return (copy_similarity(to_input(images), ref) > COPY_THRESHOLD).numpy().reshape(-1)
        pred = self.detector.predict(images)[probe["head"]]
        return np.asarray(pred.argmax(-1) == HEADS[probe["head"]].index(probe["label"])).reshape(-1)

    def score(self, images: np.ndarray, probe: dict) -> np.ndarray:
        return self.detect(images, probe).astype(np.float64)

    def presence(self, hits: np.ndarray, probe: dict) -> float:
        # Copy probes have always averaged in float32 (torch): kept, so metrics stay the same numbers.
        return float(torch.from_numpy(hits).float().mean()) if probe["head"] == "copy" else float(hits.mean())

    def fid(self, real: np.ndarray, fake: np.ndarray) -> float:
        """FID between two image sets on the detector's features (the miniworld has no Inception)."""
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(feature=_Features(self.detector), normalize=False)
        to = lambda a: torch.as_tensor(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731 (uint8 NCHW)
        metric.update(to(real), real=True)
        metric.update(to(fake), real=False)
        return float(metric.compute())

    def describe(self) -> dict:
        from ..miniworld.detector import COPY_THRESHOLD

        return {"judge": self.name, "model": "miniworld detector (shipped)", "copy_threshold": COPY_THRESHOLD}


class _Features(torch.nn.Module):
    """The detector's class probabilities over all its heads (26 numbers), as torchmetrics' FID wants a feature
    extractor. Its 256-wide penultimate layer would need thousands of images for a stable covariance."""

    def __init__(self, detector):
        super().__init__()
        self.net = detector.net
        with torch.no_grad():  # else torchmetrics probes the width with a 299x299 Inception-sized image
            self.num_features = self.forward(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = self.net(x.float() / 127.5 - 1.0)
        return torch.cat([heads[k].softmax(-1) for k in sorted(heads)], dim=-1).double()
