"""Per-concept metrics from the judges' readings: a concept's summary over its probes, and pixel drift.

A probe's presence is the share of its images a judge (erasure/judges/) reads as showing the concept.
"""

from __future__ import annotations

import numpy as np


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
