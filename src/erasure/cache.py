"""A content-addressed image cache: one PNG per (model weights, prompt, seed, sampler and its
settings, the code that draws images).

Re-running a stage, or adding a concept to the blocklist, regenerates nothing already drawn.
PNG is lossless, so a cached image is the generated one, bit for bit; each file is written
atomically, and the sha256 of its bytes is recorded beside it (`<key>.png.sha256`) once it is
whole. A file whose record is missing or does not match (damaged, truncated, swapped for another
image) is drawn again, with a warning naming it: never used, never fatal.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .codehash import code_hash
from .io import CacheWarning, atomic_file, digest_problem, write_digest
from .sampling import generate

# The modules whose code decides an image (with those they import): keys change when they do.
IMAGE_CODE = ("cache.py", "sampling.py", "models.py")


def sampler_id(pipe) -> str:
    """The pipeline's scheduler class and a hash of its configuration (timesteps, betas, eta, ...):
    the same weights drawn with another scheduler give other images."""
    sched = pipe.scheduler
    config = {k: v for k, v in dict(sched.config).items() if k != "_name_or_path"}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{type(sched).__name__}:{digest}"


class ImageCache:
    def __init__(self, root: Path, model_hash: str, steps: int, guidance: float, batch_size: int = 64, *,
                 sampler: str, code: str | None = None, processes=None):
        """`processes`: Accelerate's PartialState when several processes share the drawing
        (erasure/processes.py); every process then calls `images` with the same prompts, in the same order."""
        self.root = Path(root)
        self.processes = processes
        self.model_hash, self.steps, self.guidance, self.batch_size = model_hash, steps, guidance, batch_size
        self.sampler = sampler
        self.code = code if code is not None else code_hash(*IMAGE_CODE)
        self.hits = self.misses = 0
        self.drawn = 0  # by this process (misses, less the other processes' shares)

    def key(self, prompt: str, seed: int, guidance: float | None = None) -> str:
        g = self.guidance if guidance is None else guidance
        spec = [self.model_hash, prompt, int(seed), self.steps, float(g), self.sampler, self.code]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()

    def path(self, prompt: str, seed: int, guidance: float | None = None) -> Path:
        k = self.key(prompt, seed, guidance)
        return self.root / k[:2] / f"{k}.png"

    def images(self, pipe, prompts: list[str], seeds: list[int], progress: bool = True,
               desc: str = "generating", guidance: list[float] | None = None) -> np.ndarray:
        """uint8 (N, H, W, 3): cached images loaded, the rest generated (by `pipe`) and stored.
        `guidance`: a scale per image (an I2P file's own), else the cache's for all."""
        scales = [self.guidance] * len(prompts) if guidance is None else [float(g) for g in guidance]
        if len(scales) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(scales)} guidance scales")
        paths = [self.path(p, s, g) for p, s, g in zip(prompts, seeds, scales)]
        shared = self.processes is not None and self.processes.num_processes > 1
        found = [_read(p) for p in paths]
        missing = [i for i, img in enumerate(found) if img is None]
        if shared:  # every process has read the cache before any writes this call's images: one missing list
            self.processes.wait_for_everyone()
        self.hits += len(paths) - len(missing)
        self.misses += len(missing)
        mine = missing[self.processes.process_index::self.processes.num_processes] if shared else missing
        self.drawn += len(mine)
        if mine:
            if pipe is None:
                raise RuntimeError(f"{len(missing)} images are not cached and no pipeline was given to draw them")
            for g in dict.fromkeys(scales[i] for i in mine):  # one sampling run per guidance scale
                group = [i for i in mine if scales[i] == g]
                fresh = generate(pipe, [prompts[i] for i in group], [seeds[i] for i in group], steps=self.steps,
                                 guidance=g, batch_size=self.batch_size, progress=progress, desc=desc)
                self._store(group, fresh, paths, found)
        if shared:  # the others' shares are in the cache now
            self.processes.wait_for_everyone()
            for i in sorted(set(missing) - set(mine)):
                found[i] = _read(paths[i])
                if found[i] is None:
                    raise RuntimeError(f"image cache: {paths[i]}: another process should have drawn it; "
                                       "is the cache folder shared by every process?")
        return np.stack(found)

    @staticmethod
    def _store(indices: list[int], images, paths: list[Path], found: list) -> None:
        for i, img in zip(indices, images):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            with atomic_file(paths[i], "wb") as fh:
                fh.write(buf.getvalue())
            write_digest(paths[i], buf.getvalue())  # after the image: a record always describes a whole file
            found[i] = img


def _read(path: Path) -> np.ndarray | None:
    """The cached image at `path`, or None when there is none or it cannot be trusted (warned)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _distrust(path, f"unreadable ({exc})")
    problem = digest_problem(path, data)
    if problem:
        return _distrust(path, problem)
    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... on broken files
        return _distrust(path, f"not a readable PNG ({type(exc).__name__}: {exc})")


def _distrust(path: Path, why: str) -> None:
    warnings.warn(f"image cache: {path}: {why}; drawing it again", CacheWarning, stacklevel=3)
    return None
