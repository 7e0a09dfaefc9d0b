"""What a model's world supplies beyond its weights: the miniworld model's own probes (miniworld/probes.py,
which its detector reads and whose generic prompts come with the world's true renders), prompts and
anchor-image filters; for any other model the generic ones (erasure/probes.py: templates, the blocklist
entry, an I2P file, everyday captions; erasure/prompts.py's templates).

With the judge registry (judges/registry.py) and the CLI's `miniworld` commands, the only place outside
miniworld/ that reaches miniworld code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import PipelineParams


def concept_probes(params: PipelineParams, entry: dict, anchor: str | None, blocked: set[str]) -> list[dict]:
    """Every probe of one blocklist entry (the first is the target), as dicts (the probe contract:
    name, prompts, seeds, target; the miniworld's also head and label)."""
    g = params.generate
    if params.model == "miniworld":
        from .miniworld import probes

        found = probes.probes_for(
            entry["concept"], entry["kind"], anchor=anchor, paraphrases=entry.get("paraphrases") or [],
            eval_prompts=entry.get("eval_prompts") or [], reference_images=entry.get("reference_images") or [],
            blocked=blocked, n=g.images_per_probe, seed=params.seed, misspellings=g.misspellings)
    else:
        from . import probes

        found = probes.probes_for(entry, anchor=anchor, blocked=blocked, n=g.images_per_probe, seed=params.seed,
                                  misspellings=g.misspellings, i2p=params.evaluate.i2p)
    return [p.as_dict() for p in found]


def generic(params: PipelineParams, blocked: set[str]) -> tuple[list[str], list[int], np.ndarray | None]:
    """Prompts naming no blocklisted concept and their seeds (drift, FID, CLIP score), and the world's
    true renders of them where the world has them (the miniworld), else None."""
    n = params.generate.generic_images
    if params.model == "miniworld":
        from .miniworld import probes

        return probes.generic(n, params.seed, blocked)
    from . import probes

    prompts, seeds = probes.generic(n, params.seed, blocked)
    return prompts, seeds, None


def promised_renders(params: PipelineParams, blocked: set[str], erased: set[str]) -> np.ndarray | None:
    """The world's true renders of `generic`'s prompts as a model without the `erased` concepts should
    draw them (an erased implicit attribute absent), where the world has renders; else None."""
    if params.model != "miniworld":
        return None
    from .miniworld import probes

    return probes.promised_renders(params.generate.generic_images, params.seed, blocked, erased)


def reference_name(probe: dict) -> str | None:
    """The reference image a copy probe is measured against, by file name (for grids), else None."""
    ref = (probe.get("target") or {}).get("reference") or (probe["label"] if probe.get("head") == "copy" else None)
    return Path(str(ref).lstrip("@")).name if ref else None


def world_prompts(model_spec: str):
    """The module with the world's anchor_prompts / preservation_prompts (the miniworld's), else None."""
    if model_spec == "miniworld":
        from .miniworld import prompts

        return prompts
    return None


def recipe(model_spec: str, method: str, kind: str) -> dict:
    """The world's measured EraseSettings for (method, kind) (miniworld/recipes.py), else {} (the
    method's own defaults, which are for SD-scale models)."""
    if model_spec != "miniworld":
        return {}
    from .miniworld.recipes import recipe as world_recipe

    return world_recipe(method, kind)


def attribute_reader(model_spec: str):
    """images (uint8 NHWC) -> bool per image, "shows the implicit attribute", where the world has a reader
    (the miniworld detector's frame head) for filtering CA's anchor images; else None (kept unfiltered)."""
    if model_spec != "miniworld":
        return None
    from .miniworld.detector import MiniworldDetector

    detector = MiniworldDetector.load()
    return lambda images: detector.predict(images)["frame"][:, 1] >= 0.5


def not_copies(images: np.ndarray, references: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Per image, whether it copies none of `references` (same size, uint8 NHWC): the blurred-pixel
    correlation of miniworld/detector.py below `threshold` (default: its COPY_THRESHOLD, calibrated on the
    miniworld). Pixel correlation only catches near-exact copies; on other models it is what CA's anchor
    filter has, set `copy_threshold` to tune it."""
    import torch

    from .miniworld.detector import COPY_THRESHOLD, copy_similarity, to_input

    x, refs = to_input(images), to_input(references)
    sim = torch.stack([copy_similarity(x, r[None]) for r in refs]).amax(0).numpy()
    return sim < (COPY_THRESHOLD if threshold is None else threshold)
