"""The phase cache: every finished phase's edit (the run's delta up to it), keyed by everything that
determines it, so a run whose first phases match a cached prefix starts after it (adding a concept
to a sequential run trains only that concept). An entry that is missing, damaged or swapped is not
trusted: that phase is trained again."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from ..codehash import code_hash
from ..delta import DeltaError, load_delta, save_delta
from ..editable import EditableModel
from ..io import CacheWarning, digest_problem, write_digest
from .accelerate_setup import gathered, save_main
from .plan import EraseSettings, Job, phases_of

# The modules whose code decides a run's weights (with every package module they import): the
# phase cache and run folders are keyed by their hash, so changed training code never reuses them.
TRAINING_CODE = ("trainer.py", "models.py")


def phase_files(phase_cache: Path, base_hash: str, settings: EraseSettings, jobs: list[Job]) -> list[Path]:
    """Where `erase(..., phase_cache=...)` keeps each finished phase's delta (the run's edit up to it)."""
    phases, code = phases_of(jobs, settings), code_hash(*TRAINING_CODE)
    return [Path(phase_cache) / f"{phase_key(base_hash, settings, phases[:k + 1], code)}.safetensors"
            for k in range(len(phases))]


def phase_key(base_hash: str, settings: EraseSettings, phases: list[list[Job]], code: str) -> str:
    """What determines a phase's end weights: the base, the settings that shape training, every job
    up to it (reference images by content, since a path may be rewritten in place), and the code."""
    jobs = []
    for phase in phases:
        for j in phase:
            d = j.describe()
            d["concept"]["reference_images"] = [hashlib.sha256(Path(r).read_bytes()).hexdigest()
                                                for r in j.concept.reference_images]
            jobs.append(d)
    # The robust phase's settings shape only that phase: the phases before it are found with it on or off.
    robust = any(j.method == "adversarial" for p in phases for j in p)
    ignored = {"checkpoint_every"} | (set() if robust else {"robust"})
    spec = {"base_hash": base_hash, "settings": settings.model_dump(mode="json", exclude=ignored),
            "phases": [len(p) for p in phases], "jobs": jobs, "code": code}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def store_phase(accelerator, model: EditableModel, path: Path, done: list[list[Job]], state: dict,
                 base_hash: str) -> None:
    with gathered([*model.trainable().values(), *([model.patched.base.weight] if model.patched is not None else [])]):
        tensors = model.delta_tensors()
    params = {"history": state["history"], "jobs": [j.describe() for p in done for j in p]}

    def write(p: Path) -> None:
        save_delta(p, tensors, method=",".join(dict.fromkeys(j.method for p in done for j in p)), params=params,
                   concepts=[j.concept.model_dump(mode="json") for p in done for j in p], base_hash=base_hash)
        write_digest(p)  # after the file: a record always describes a whole one

    save_main(accelerator, write, path)


def cached_phase(path: Path) -> tuple[dict, dict] | None:
    """A finished phase's delta from the cache, or None when there is none or it cannot be trusted
    (its content hash is missing or differs, or it does not load): that phase is trained again."""
    if not path.exists():
        return None
    problem = digest_problem(path)
    if problem is None:
        try:
            return load_delta(path)
        except DeltaError as exc:
            problem = str(exc)
    warnings.warn(f"phase cache: {path}: {problem}; training that phase again", CacheWarning, stacklevel=3)
    return None
