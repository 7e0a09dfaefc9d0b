"""Which probes a model is evaluated on: the miniworld model's own (miniworld/probes.py, which its detector
reads and whose generic prompts come with the world's true renders), and for any other model the generic
ones (erasure/probes.py: templates, the blocklist entry, an I2P file, everyday captions).

With the judge registry, the only place outside miniworld/ that reaches miniworld code for evaluation.
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


def reference_name(probe: dict) -> str | None:
    """The reference image a copy probe is measured against, by file name (for grids), else None."""
    ref = (probe.get("target") or {}).get("reference") or (probe["label"] if probe.get("head") == "copy" else None)
    return Path(str(ref).lstrip("@")).name if ref else None
