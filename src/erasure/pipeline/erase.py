"""Stage 4, erase: every blocklisted concept out of the base model, jointly or one after another.

Recipes (EraseSettings fields per "<method>/<kind>") come from params.yaml. A run works in a
folder keyed by everything that determines it, so a killed run resumes from its last checkpoint;
finished phases are kept in a cache, so a sequential run after adding one concept trains only it.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from ..codehash import code_hash
from ..config import PipelineParams
from ..io import atomic_dir
from .. import worlds
from ..trainer import TRAINING_CODE, EraseSettings, erase, phase_files, phases_of, plan
from . import inputs


def jobs_and_settings(params: PipelineParams, anchors: dict[str, dict] | None = None,
                      entries: list[dict] | None = None):
    """The erasure's plan (trainer.plan): from the ingest and anchors stages' outputs, or those given."""
    entries = inputs.entries(params) if entries is None else entries
    anchors = inputs.anchors(params) if anchors is None else anchors
    e = params.erase
    settings = EraseSettings(method="esd", mode=e.mode, seed=e.seed, checkpoint_every=e.checkpoint_every,
                             mixed_precision=e.mixed_precision, gradient_checkpointing=e.gradient_checkpointing,
                             zero_stage=e.zero_stage, robust=e.robust.model_dump())
    concepts = [inputs.concept(x, anchors[x["concept"]]["anchor"]) for x in entries]
    methods = [inputs.method_for(params, x) for x in entries]
    overrides = [dict(e.recipes.get(f"{m}/{x['kind']}", {})) for m, x in zip(methods, entries)]
    jobs = plan(concepts, settings, methods, overrides)
    _check_family(params, jobs)
    return jobs, settings


def _check_family(params: PipelineParams, jobs) -> None:
    """Rules the model's family cannot train, refused from its model_index.json before any work."""
    from ..families import SDXL_EMBEDDING_RULE
    from ..models import is_sdxl_folder

    embedding = [j for j in jobs if j.rule == "embedding"]
    if embedding and is_sdxl_folder(params.model):
        j = embedding[0]
        raise ValueError(f"params erase.recipes['{j.method}/{j.concept.kind}'].rule (concept "
                         f"{j.concept.text!r}) is 'embedding' on the SDXL model {params.model!r}: {SDXL_EMBEDDING_RULE}")


def run(params: PipelineParams, stop_after: int | None = None, progress: bool = True) -> dict:
    from ..models import load_pipeline, source_folder, weights_hash

    jobs, settings = jobs_and_settings(params)
    from ..device import resolve_device

    pipe = load_pipeline(params.model, device=str(resolve_device(params.device)))  # fp32 weights to train
    base_hash = weights_hash(source_folder(params.model))
    # Keyed by the code too: a run resumed after training code changed would mix two runs' weights.
    spec = json.dumps({"jobs": [j.describe() for j in jobs], "settings": settings.model_dump(mode="json"),
                       "base": base_hash, "code": code_hash(*TRAINING_CODE)}, sort_keys=True)
    workdir = params.paths.cache / "erase" / hashlib.sha256(spec.encode()).hexdigest()[:16]
    out_dir = params.paths.stage("erase")
    phases = phases_of(jobs, settings)
    t0 = time.time()
    with atomic_dir(out_dir) if stop_after is None else _nowhere() as tmp:
        result = erase(pipe, jobs, settings, workdir, None if tmp is None else tmp / "delta.safetensors",
                       model_spec=params.model, base_hash=base_hash, progress=progress, stop_after=stop_after,
                       phase_cache=params.paths.cache / "phases", image_cache=params.paths.cache / "images")
        summary = {"concepts": [j.concept.text for j in jobs], "mode": settings.mode,
                   "phases": [[j.concept.text for j in ph] for ph in phases],
                   "jobs": [j.describe() | {"concept": j.concept.text} for j in jobs],
                   "steps_run": result.steps_run, "phases_from_cache": result.phases_from_cache,
                   "trainable_params": result.trainable_params, "history": result.history}
        if tmp is not None:
            timing = {"seconds": round(time.time() - t0, 1), "seconds_pool": round(result.seconds_pool, 1),
                      "seconds_train": round(result.seconds_train, 1), "steps_run": result.steps_run,
                      "phases_from_cache": result.phases_from_cache, "workdir": str(workdir)}
            # Timings differ run to run: kept apart from train.json, which DVC and releases hash.
            run_specific = ("steps_run", "phases_from_cache")
            (tmp / "train.json").write_text(json.dumps({k: v for k, v in summary.items() if k not in run_specific},
                                                       indent=1, sort_keys=True))
            (tmp / "timing.json").write_text(json.dumps(timing, indent=1, sort_keys=True))
            # For `dvc plots` (loss vs step): the phases this run trained, not those from the phase cache;
            # kept out of train.json, which DVC and releases hash.
            (tmp / "losses.json").write_text(_losses(phases, result.losses))
            # The generic prompts' images after each phase but the last (evaluate draws the last):
            # evaluate measures what each phase cost on prompts naming no concept.
            np.savez_compressed(tmp / "phase_images.npz", **phase_images(params, jobs, settings, base_hash))
    return summary


def phase_images(params: PipelineParams, jobs, settings, base_hash: str) -> dict[str, np.ndarray]:
    """{phase index: uint8 images of the first generate.phase_images generic prompts} for every phase
    of a run of several phases but the last, drawn like the generate stage's (its dtype, device, sampler) from
    the phase cache's deltas, through the image cache (a rerun draws only phases it has not seen)."""
    from ..delta import apply_delta, load_delta
    from ..io import digest_problem
    from .generate import base_model, image_cache

    files = phase_files(params.paths.cache / "phases", base_hash, settings, jobs)[:-1]
    if not files:
        return {}
    prompts, seeds, _ = worlds.generic(params, {e["concept"] for e in inputs.entries(params)})
    m = params.generate.phase_count(len(prompts))  # evaluate measures each phase on these
    prompts, seeds = prompts[:m], seeds[:m]
    pipe, _ = base_model(params)
    out = {}
    for k, path in enumerate(files):
        problem = digest_problem(path) if path.exists() else "missing"
        if problem:  # the trainer has just written or checked every one of them
            raise RuntimeError(f"phase cache {path}: {problem}; rerun the erase stage")
        tensors, meta = load_delta(path)
        apply_delta(pipe, tensors, meta, base_hash)  # every phase's delta holds the run's whole tensor set
        cache = image_cache(params, f"{base_hash}+phase:{path.stem}", pipe)
        out[str(k)] = cache.images(pipe, prompts, seeds, desc=f"generic prompts after phase {k + 1}")
    return out


def _losses(phases, losses: list[float]) -> str:
    """[{"step", "phase", "concept", "loss"}, ...], one line each. `losses` holds the steps of the last
    phases (those before came from the phase cache): matched to phases from the end; `step` counts
    every phase's steps, cached ones included, so a partly cached run plots at the same x."""
    starts = [sum(j.steps for p in phases[:k] for j in p) for k in range(len(phases) + 1)]
    first = starts[-1] - len(losses)
    rows = []
    for i, loss in enumerate(losses):
        step = first + i
        k = max(k for k in range(len(phases)) if starts[k] <= step)
        rows.append(json.dumps({"step": step, "phase": k, "concept": " + ".join(j.concept.text for j in phases[k]),
                                "loss": loss}))
    return "[\n" + ",\n".join(rows) + "\n]\n"


class _nowhere:
    """`stop_after` (tests, kill-and-resume): train part-way, publish nothing."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
