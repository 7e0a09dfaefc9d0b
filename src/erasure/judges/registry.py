"""The closed set of judges; the only place outside miniworld/ that may reach miniworld code."""

from __future__ import annotations

from .base import Judge, JudgeError

JUDGES = ("miniworld", "clip", "nudenet", "copy")


def build(name: str, **params) -> Judge:
    if name not in JUDGES:
        raise JudgeError(f"unknown judge {name!r}; expected one of {', '.join(JUDGES)}")
    if name == "miniworld":
        from .miniworld import MiniworldJudge

        return MiniworldJudge(**params)
    if name == "clip":
        from .clip import ClipJudge

        if params.get("model") == "miniworld":  # the small CLIP trained on the miniworld, shipped with it
            from ..miniworld.clip_train import SHIPPED_CLIP

            params = {**params, "model": str(SHIPPED_CLIP)}
        return ClipJudge(**params)
    if name == "copy":
        from .copy import CopyJudge

        return CopyJudge(**params)
    if name == "nudenet":
        from .nudenet import NudenetJudge

        return NudenetJudge(**params)
    raise AssertionError(name)
