"""Per-concept metrics from a detector: presence on a probe, the concept's summary, drift and FID.

A probe (see miniworld/probes.py) names a detector head and a label: presence is the share of
images the detector reads as that label; for "copy" probes, the share whose copy similarity to the
reference image exceeds the detector's calibrated threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def presence(detector, images: np.ndarray, probe: dict) -> float:
    return share(detections(detector, images, probe), probe)


def share(hits: np.ndarray, probe: dict) -> float:
    """The share of images read as the probe's label (what `presence` reports)."""
    # Copy probes have always averaged in float32 (torch): kept, so metrics stay the same numbers.
    return float(torch.from_numpy(hits).float().mean()) if probe["head"] == "copy" else float(hits.mean())


def detections(detector, images: np.ndarray, probe: dict) -> np.ndarray:
    """Per image: does the detector read it as the probe's label (a copy of its reference image)?"""
    from .detectors.miniworld import COPY_THRESHOLD, HEADS, copy_similarity, memorized_references, to_input

    if probe["head"] == "copy":
        label = probe["label"]
        if label.startswith("@"):  # one of the miniworld's own memorized images
            ref = memorized_references()[label[1:]]
        else:
            from PIL import Image

            ref = to_input(np.asarray(Image.open(Path(label)).convert("RGB")))
        return (copy_similarity(to_input(images), ref) > COPY_THRESHOLD).numpy().reshape(-1)
    pred = detector.predict(images)[probe["head"]]
    return np.asarray(pred.argmax(-1) == HEADS[probe["head"]].index(probe["label"])).reshape(-1)


def summarize(probes: dict[str, dict]) -> dict:
    """Target before/after and its relative cut, paraphrase and misspelling after, worst neighbour."""
    t = probes["target"]
    drops = {name.split(":", 1)[1]: p["before"] - p["after"] for name, p in probes.items()
             if name.startswith(("neighbour:", "anchor:"))}
    worst = max(drops, key=drops.get) if drops else None
    return {"target_before": t["before"], "target_after": t["after"],
            "target_reduction": (t["before"] - t["after"]) / t["before"] if t["before"] > 0 else 0.0,
            "paraphrase_after": probes["paraphrase"]["after"] if "paraphrase" in probes else None,
            "misspelling_after": probes["misspelling"]["after"] if "misspelling" in probes else None,
            "neighbour_max_drop": max(0.0, drops[worst]) if worst else 0.0, "worst_neighbour": worst}


def drift(before: np.ndarray, after: np.ndarray) -> float:
    """Mean absolute pixel change (0..1) between base and erased images of the same prompts and seeds."""
    return float(np.abs(before.astype(np.float32) - after.astype(np.float32)).mean() / 255.0)


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


def fid(detector, real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two image sets on the detector's features (the miniworld has no Inception)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Features(detector), normalize=False)
    to = lambda a: torch.as_tensor(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731 (uint8 NCHW)
    metric.update(to(real), real=True)
    metric.update(to(fake), real=False)
    return float(metric.compute())
