"""The miniworld concept detector: one small CNN with a head per concept kind, plus copy similarity.

Heads: object, color, style (plain or an artist), instance (none or a name), frame (the implicit
attribute). Copy similarity to each memorized image is a blurred-pixel correlation, scored against
a threshold calibrated on augmented copies versus ordinary world images (see `COPY_THRESHOLD`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .concepts import COLORS, INSTANCES, MEMORIZED, OBJECTS, STYLES

HEADS: dict[str, tuple[str, ...]] = {
    "object": OBJECTS,
    "color": tuple(COLORS),
    "style": ("plain",) + tuple(STYLES),
    "instance": ("none",) + tuple(INSTANCES),
    "frame": ("no", "yes"),
}

# Correlation of blurred 16x16 images above which a generation counts as a copy of a memorized
# image. Calibrated by `erasure.miniworld.detector_train.calibrate_copy_threshold` (see the card).
COPY_THRESHOLD = 0.80

WEIGHTS = Path(__file__).resolve().parent / "shipped" / "detector.safetensors"


class DetectorNet(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU())

        w = width
        self.features = nn.Sequential(block(3, w), nn.MaxPool2d(2), block(w, 2 * w), nn.MaxPool2d(2),
                                      block(2 * w, 4 * w), nn.MaxPool2d(2))  # -> 4w x 4 x 4
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 256), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(256, len(v)) for k, v in HEADS.items()})

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.features(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.embed(x)
        return {k: head(h) for k, head in self.heads.items()}


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) -> float (N, 3, 32, 32) in [-1, 1]."""
    t = torch.as_tensor(np.array(images))  # a copy: decoded images may be read-only views
    if t.ndim == 3:
        t = t[None]
    return t.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _blur16(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None, :]) / 256.0
    k = k.expand(3, 1, 5, 5)
    return F.avg_pool2d(F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k, groups=3), 2)


_REFERENCES: dict[str, torch.Tensor] = {}


def memorized_references() -> dict[str, torch.Tensor]:
    if not _REFERENCES:
        from .render import render_memorized

        for key, m in MEMORIZED.items():
            _REFERENCES[key] = to_input(render_memorized(m))
    return _REFERENCES


def copy_similarity(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of blurred, 2x-downsampled images; x (N,3,32,32), reference (1,3,32,32)."""
    a = _blur16(x).flatten(1)
    b = _blur16(reference).flatten(1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)


@dataclass
class Detection:
    labels: dict[str, str]
    probabilities: dict[str, dict[str, float]]
    copy_similarity: dict[str, float]

    @property
    def copies(self) -> list[str]:
        return [k for k, v in self.copy_similarity.items() if v > COPY_THRESHOLD]

    def as_dict(self) -> dict:
        return {"labels": self.labels, "copy_of": self.copies, "copy_similarity": self.copy_similarity,
                "copy_threshold": COPY_THRESHOLD, "probabilities": self.probabilities}


class DetectorError(RuntimeError):
    pass


class MiniworldDetector:
    """Reads object, color, style, instance, frame and memorized-copy from 32x32 miniworld images."""

    def __init__(self, net: DetectorNet):
        self.net = net.eval()

    @classmethod
    def load(cls, path: Path | None = None) -> "MiniworldDetector":
        path = Path(path or WEIGHTS)
        if not path.is_file():
            raise DetectorError(f"detector weights not found at {path}; train them with "
                                "`erasure miniworld train-detector`")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise DetectorError(f"detector weights at {path} are unreadable: {exc}") from exc
        from ..models import LOADING

        with LOADING:  # built while another thread loads a pipeline, it would land on the meta device
            net = DetectorNet()
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise DetectorError(f"detector weights at {path} do not match the detector: {exc}") from exc
        return cls(net)

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Per-head probabilities (N, classes) and copy similarity per memorized key (N,)."""
        x = to_input(images) if not torch.is_floating_point(torch.as_tensor(images)) else images
        out: dict[str, list] = {k: [] for k in HEADS}
        sims: dict[str, list] = {k: [] for k in MEMORIZED}
        refs = memorized_references()
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size]
            for k, logits in self.net(xb).items():
                out[k].append(logits.softmax(-1).numpy())
            for key, ref in refs.items():
                sims[key].append(copy_similarity(xb, ref).numpy())
        result = {k: np.concatenate(v) for k, v in out.items()}
        result.update({f"copy:{k}": np.concatenate(v) for k, v in sims.items()})
        return result

    def detect(self, images: np.ndarray) -> list[Detection]:
        pred = self.predict(images)
        n = len(pred["object"])
        found = []
        for i in range(n):
            labels = {k: HEADS[k][int(pred[k][i].argmax())] for k in HEADS}
            probs = {k: {c: round(float(p), 4) for c, p in zip(HEADS[k], pred[k][i])} for k in HEADS}
            sims = {k: round(float(pred[f"copy:{k}"][i]), 4) for k in MEMORIZED}
            found.append(Detection(labels, probs, sims))
        return found
