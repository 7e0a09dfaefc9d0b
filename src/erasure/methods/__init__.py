"""Erasure methods: small, comparable units over one trainer (see base.py for the contract)."""

from __future__ import annotations

from .ablation import ConceptAblation
from .adversarial import Adversarial
from .all_but_one import AllButOne
from .base import Bench, Defaults, Method, Options, Pool
from .esd import ESD
from .loss_max import LossMax
from .uce import UCE

METHODS: dict[str, Method] = {m.name: m for m in (ESD(), ConceptAblation(), AllButOne(), LossMax(), UCE())}
# Run by the trainer's robust phase (EraseSettings.robust), after the concepts' own: not a method a
# concept is erased with, so not among the choices above.
PHASE_METHODS: dict[str, Method] = {Adversarial.name: Adversarial()}


def get(name: str) -> Method:
    if name in PHASE_METHODS:
        return PHASE_METHODS[name]
    if name not in METHODS:
        raise ValueError(f"method {name!r} unknown; expected one of {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Bench", "Defaults", "Method", "Options", "Pool", "get"]
