"""Copy detection for memorized images: SSCD descriptor cosine (the CA paper's metric, > 0.5) from a
TorchScript file the user gives, or CLIP image-embedding cosine when none is given. A probe without a
reference (a memorized image's neighbour: another caption that must still be drawn freely) is read by
CLIP accuracy instead: its text against its contrast, as the clip judge reads any concept.

torch.jit.load is the only non-safetensors load in the project: it runs only on the user's own file
named by path in params.yaml (evaluate.copy.sscd), never on anything downloaded or cached by us.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .base import Judge, JudgeError, target

# SSCD's own preprocessing (ImageNet mean/std, 288 px short side in its paper; the file fixes the size).
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class CopyJudge(Judge):
    name = "copy"

    def __init__(self, sscd: str | None = None, threshold: float = 0.5, clip=None, device: str = "cpu"):
        """`clip`: the clip judge, or a callable returning it (built only when a probe needs it)."""
        self.threshold = float(threshold)
        self.sscd_path = sscd
        self._clip = clip
        self.device = torch.device(device)
        if sscd is not None:
            p = Path(sscd)
            if not p.is_file():
                raise JudgeError(f"copy judge: evaluate.copy.sscd {sscd!r} is not a file (an SSCD TorchScript .pt)")
            self.sscd_hash = hashlib.sha256(p.read_bytes()).hexdigest()
            self.sscd = torch.jit.load(str(p), map_location=self.device).eval()
        elif clip is None:
            raise JudgeError("copy judge: no evaluate.copy.sscd file and no CLIP judge to embed with")

    @property
    def clip(self):
        if self._clip is not None and not isinstance(self._clip, Judge):
            self._clip = self._clip()
        return self._clip

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> torch.Tensor:
        if self.sscd_path is None:
            return self.clip.image_features(images)
        x = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).float() / 255.0
        x = ((x - _MEAN) / _STD).to(self.device)
        return torch.nn.functional.normalize(self.sscd(x).float(), dim=-1).cpu()

    def score(self, images: np.ndarray, probe: dict) -> np.ndarray:
        ref = target(probe, self.name).get("reference")
        if not ref:
            return self._caption(probe).score(images, probe)
        from PIL import Image

        r = Path(ref)
        if not r.is_file():
            raise JudgeError(f"copy judge: reference image {ref!r} of probe {probe.get('name')!r} is not a file")
        ref_img = np.asarray(Image.open(r).convert("RGB").resize(images.shape[2:0:-1]))[None]
        return (self.embed(images) @ self.embed(ref_img).T)[:, 0].numpy().astype(np.float64)

    def detect(self, images: np.ndarray, probe: dict) -> np.ndarray:
        if not target(probe, self.name).get("reference"):
            return self._caption(probe).detect(images, probe)
        return self.score(images, probe) > self.threshold

    def _caption(self, probe: dict):
        if self._clip is None:
            raise JudgeError(f"copy judge: probe {probe.get('name')!r} has no target.reference image, and no CLIP "
                             "judge reads its text instead")
        return self.clip

    def describe(self) -> dict:
        model = ({"model": "sscd", "sha256": self.sscd_hash, "path": self.sscd_path} if self.sscd_path
                 else {"model": "clip image cosine", "clip": self.clip.model_id})
        return {"judge": self.name, **model, "threshold": self.threshold,
                "neighbours": "clip accuracy (no reference image to copy)"}
