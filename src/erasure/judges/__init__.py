"""Judges: "is this concept in these images, how strongly" for a probe (see notes' probe/judge contract)."""
from .base import Judge, JudgeError
from .registry import JUDGES, build

__all__ = ["Judge", "JudgeError", "JUDGES", "build"]
