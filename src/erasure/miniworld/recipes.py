"""Erasure settings for the miniworld model, per method and concept kind.

Each method's own defaults are its paper's, for SD-scale models (ESD: lr 1e-5 for 1000 steps). The
miniworld has about 4M UNet parameters and learns at larger rates; these recipes are the ones
`benchmarks/methods.py` measures (results in benchmarks/results/methods.md). `erasure erase
--model miniworld` starts from them; any option given on the command line wins.
"""

from __future__ import annotations

COMMON = {"batch_size": 8, "pool_size": 256}
_NAMED = ("style", "object", "instance", "attribute")
_IMPLICIT = ("implicit", "nudity")

RECIPES: dict[tuple[str, str], dict] = {}
for kind in _NAMED:
    # Preservation rows keep the other concepts' prompts where they were (joint and sequential runs
    # damaged non-blocked styles without them: benchmarks/results/methods.md).
    # Trajectories of 25 DDIM steps, each read at 8 stops: the pool in an eighth of the time of 50-step
    # one-stop trajectories (benchmarks/results/methods.md: esd-x-style vs esd-x-style-one-stop).
    RECIPES["esd", kind] = {"rule": "xattn", "steps": 100, "lr": 2e-4,
                            "options": {"context_prompts": 64, "preserve_prompts": 64, "ddim_steps": 25,
                                        "stops_per_trajectory": 8}}
    RECIPES["abo", kind] = {"rule": "xattn", "steps": 200, "lr": 2e-4, "options": {"context_prompts": 64}}
    # Anchor images in 10 DDIM steps (the official code's 25 DPM-Solver steps; ours at 25 took 33 s of a
    # 65 s run): Pip 1.00 -> 0.00 either way (benchmarks/results/ca_official.md, methods.md ca-instance).
    RECIPES["ca", kind] = {"rule": "xattn-kv", "steps": 200, "lr": 5e-4,
                           "options": {"anchor_images": 128, "anchor_steps": 10}}
    RECIPES["loss-max", kind] = {"rule": "xattn-kv", "steps": 200, "lr": 5e-4, "options": {"images": 128}}
for kind in _IMPLICIT:
    # The in-scene direction (what naming the frame changes in each scene), eta 4: the unnamed frame
    # 0.46 -> 0.12 (-74%), objects within 6 points; the concept's own direction at eta 3 cut it 82%
    # but broke objects (cross -28 points). Measured in benchmarks/results/methods.md (esd-u-implicit).
    RECIPES["esd", kind] = {"rule": "noxattn", "steps": 200, "lr": 2e-4,
                            "options": {"eta": 4.0, "context_prompts": 64, "implicit_direction": "scene"}}
    # Anchor images drawn without the attribute (detector-filtered), denoised under the scene
    # prompts and the named prompts alike (benchmarks/results/methods.md, ca-implicit).
    RECIPES["ca", kind] = {"rule": "full", "steps": 300, "lr": 2e-4,
                           "options": {"anchor_images": 256, "loss": "noise", "regularization": 1.0}}
for kind in _NAMED + ("memorized",):
    # Closed form: options only (a schedule is refused). Measured in benchmarks/results/methods.md (uce-*).
    RECIPES["uce", kind] = {"options": {"context_prompts": 64, "preserve_prompts": 128}}
RECIPES["ca", "memorized"] = {"rule": "full", "steps": 200, "lr": 1e-4,
                              "options": {"anchor_images": 128, "regularization": 1.0}}


def recipe(method: str, kind: str) -> dict:
    """EraseSettings fields for this method and kind ({} when the miniworld has no recipe for it)."""
    found = RECIPES.get((method, kind))
    if not found:
        return {}
    common = {} if method == "uce" else COMMON  # no pool, no batch: a closed-form method takes neither
    return {**common, **found, "options": dict(found["options"])}
