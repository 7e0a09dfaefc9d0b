"""The miniworld detector behind the Judge interface: exactly the numbers erasure.evaluate gives."""

from __future__ import annotations

import numpy as np

from .base import Judge


class MiniworldJudge(Judge):
    name = "miniworld"

    def __init__(self, detector=None):
        from ..detectors.miniworld import MiniworldDetector

        self.detector = detector if detector is not None else MiniworldDetector.load()

    def detect(self, images: np.ndarray, probe: dict) -> np.ndarray:
        from ..evaluate import detections

        return detections(self.detector, images, probe)

    def score(self, images: np.ndarray, probe: dict) -> np.ndarray:
        return self.detect(images, probe).astype(np.float64)

    def describe(self) -> dict:
        from ..detectors.miniworld import COPY_THRESHOLD

        return {"judge": self.name, "model": "miniworld detector (shipped)", "copy_threshold": COPY_THRESHOLD}
