"""The Judge interface: detect(images, probe) -> bool per image, score(images, probe) -> float per image.

Images are uint8 NHWC arrays. Generic judges read probe["target"] ({kind, text, contrast, reference});
the miniworld judge reads probe["head"] / probe["label"]. describe() is what the model card and MLflow
record: the judge's name, its model id or file hash, version and threshold.
"""

from __future__ import annotations

import numpy as np


class JudgeError(ValueError):
    """A judge cannot read this probe or its model cannot be had: a configuration error, not retried."""


class Judge:
    name: str = "?"

    def detect(self, images: np.ndarray, probe: dict) -> np.ndarray:
        raise NotImplementedError

    def score(self, images: np.ndarray, probe: dict) -> np.ndarray:
        raise NotImplementedError

    def presence(self, hits: np.ndarray, probe: dict) -> float:
        """The share of images read as showing the concept."""
        return float(np.asarray(hits, dtype=np.float64).mean())

    def describe(self) -> dict:
        raise NotImplementedError


def target(probe: dict, judge: str) -> dict:
    t = probe.get("target")
    if not isinstance(t, dict) or not t.get("text"):
        raise JudgeError(f"judge {judge!r}: probe {probe.get('name')!r} has no target.text "
                         f"(expected target: {{kind, text, contrast, reference}})")
    return t
