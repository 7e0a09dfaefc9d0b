"""A content-addressed image cache: one PNG per (model weights, prompt, seed, sampler settings).

Re-running a stage, or adding a concept to the blocklist, regenerates nothing already drawn.
PNG is lossless, so a cached image is the generated one, bit for bit; each file is written
atomically, so an interrupted run leaves only whole images behind.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .io import atomic_file
from .sampling import generate


class ImageCache:
    def __init__(self, root: Path, model_hash: str, steps: int, guidance: float, batch_size: int = 64):
        self.root = Path(root)
        self.model_hash, self.steps, self.guidance, self.batch_size = model_hash, steps, guidance, batch_size
        self.hits = self.misses = 0

    def key(self, prompt: str, seed: int) -> str:
        spec = [self.model_hash, prompt, int(seed), self.steps, float(self.guidance), "ddim"]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()

    def path(self, prompt: str, seed: int) -> Path:
        k = self.key(prompt, seed)
        return self.root / k[:2] / f"{k}.png"

    def images(self, pipe, prompts: list[str], seeds: list[int], progress: bool = True,
               desc: str = "generating") -> np.ndarray:
        """uint8 (N, H, W, 3): cached images loaded, the rest generated (by `pipe`) and stored."""
        paths = [self.path(p, s) for p, s in zip(prompts, seeds)]
        missing = [i for i, p in enumerate(paths) if not p.is_file()]
        self.hits += len(paths) - len(missing)
        self.misses += len(missing)
        if missing:
            if pipe is None:
                raise RuntimeError(f"{len(missing)} images are not cached and no pipeline was given to draw them")
            fresh = generate(pipe, [prompts[i] for i in missing], [seeds[i] for i in missing], steps=self.steps,
                             guidance=self.guidance, batch_size=self.batch_size, progress=progress, desc=desc)
            for i, img in zip(missing, fresh):
                with atomic_file(paths[i], "wb") as fh:
                    Image.fromarray(img).save(fh, format="PNG")
        return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
