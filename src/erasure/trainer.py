"""The one training loop every erasure method runs on: Accelerate (DeepSpeed ZeRO 1-3), checkpoints, deltas.

    jobs = plan(concepts, settings)             # method, rule, options, steps, lr per concept
    result = erase(pipe, jobs, settings, workdir, out="delta.safetensors")

Multi-concept: `joint` trains all concepts at once (each step draws one concept); `sequential`
erases one after another, each starting from the last, and calls `on_phase_end` after each (to
record how every earlier concept holds up). Each phase first builds its methods' pools with the
model as it then is (the frozen reference), then trains. Everything random is drawn from
generators seeded by (seed, phase, step), and a checkpoint holds only the trainable tensors and
the optimizer state, so a resumed run ends in the same weights as an uninterrupted one.

This file is the loop; what it runs is decided in training/plan.py, finished phases are kept by
training/phase_cache.py, the workdir and its checkpoint by training/run_folder.py, and Accelerate /
DeepSpeed are set up in training/accelerate_setup.py.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from . import methods as method_registry
from .checkpoint import load_checkpoint
from .codehash import code_hash
from .concept import content_token_ids
from .delta import apply_delta, save_delta
from .editable import EditableModel
from .families import SDXL_EMBEDDING_RULE, added_conditioning, is_sdxl
from .frozen import FrozenOriginal
from .io import save_safetensors
from .methods.base import Bench, Pool, derived_seed
from .params import UNET_RULES, select_unet
from .progress import Progress
from .training.accelerate_setup import gathered, make_accelerator, save_main, zero3_external
from .training.phase_cache import TRAINING_CODE, cached_phase, phase_files, phase_key, store_phase
from .training.plan import (MAX_POOL, PER_CONCEPT, EraseSettings, Job, RobustSettings, check_prompts, closed_form,
                            phases_of, plan, robust_jobs)
from .training.run_folder import checkpoint, claim_workdir

# The plan, the phase cache and the settings are read from here too (erasure.trainer is the engine's API).
__all__ = ["MAX_POOL", "PER_CONCEPT", "TRAINING_CODE", "EraseResult", "EraseSettings", "Job", "RobustSettings",
           "check_prompts", "closed_form", "erase", "phase_files", "phases_of", "plan", "robust_jobs"]


@dataclass
class EraseResult:
    delta: Path | None
    jobs: list[Job]
    history: list[dict] = field(default_factory=list)  # sequential: one record per finished phase
    losses: list[float] = field(default_factory=list)
    seconds_pool: float = 0.0
    seconds_train: float = 0.0
    steps_run: int = 0
    peak_rss_mb: float = 0.0
    trainable_params: int = 0
    phases_from_cache: int = 0  # leading phases whose result came from `phase_cache`

    @property
    def seconds_per_step(self) -> float:
        return self.seconds_train / max(self.steps_run, 1)


def erase(pipe, jobs: list[Job], settings: EraseSettings, workdir: Path, out: Path | None = None, *,
          model_spec: str = "miniworld", base_hash: str | None = None,
          on_phase_end: Callable[[int, list[Job]], dict] | None = None, progress: bool = True,
          stop_after: int | None = None, phase_cache: Path | None = None,
          image_cache: Path | None = None) -> EraseResult:
    """Train the erasure; write the delta to `out` (atomically). `stop_after` ends early (tests).

    `phase_cache`: a folder of finished phases keyed by everything that determines them (base model
    hash, settings, the jobs of this phase and all before it). A run whose first phases match a
    cached prefix starts after it, so adding a concept to a sequential run trains only that concept,
    and ends in the same weights as a run from scratch.

    `image_cache`: the content-addressed image cache's folder (cache.py); with `base_hash`, the anchor
    images methods draw (CA's) are kept there, keyed by the weights the phase starts from, and found
    by every concept with the same anchor.
    """
    if is_sdxl(pipe) and any(j.rule == "embedding" for j in jobs):
        raise ValueError(SDXL_EMBEDDING_RULE)
    if is_sdxl(pipe) and settings.robust.rounds:
        raise ValueError("erase.robust: the robust phase learns attack tokens for one text encoder (SD 1.x / 2.x); "
                         "SDXL has two: set erase.robust.rounds to 0 for this model")
    added = added_conditioning(pipe)  # SDXL: time ids and pooled width (a bad UNet config fails here)
    check_prompts(pipe.tokenizer, jobs)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for j in jobs:
        if closed_form(j.method):
            continue
        if j.batch_size < world:
            raise ValueError(f"batch size {j.batch_size} is smaller than the {world} processes: each needs a sample")
        if settings.zero_stage and method_registry.get(j.method).needs_frozen(j.options):
            raise ValueError(f"method {j.method!r} with these options keeps originals of the trained tensors, "
                             "which ZeRO partitions: use zero_stage 0 (or ESD's default frozen sampler)")
    if out is not None and not base_hash:
        raise ValueError("writing a delta needs the base model's weights hash (base_hash): a delta without it "
                         "cannot be checked against a model")
    workdir = Path(workdir)
    phases = phases_of(jobs, settings)
    if phase_cache is not None and not base_hash:
        raise ValueError("phase_cache needs the base model's weights hash (base_hash) to key its entries")
    code = code_hash(*TRAINING_CODE)
    keys = [phase_key(base_hash, settings, phases[:k + 1], code) for k in range(len(phases))] if phase_cache else []
    cached = None
    # Preservation rows toward the base model after the first phase need its values of the trained
    # tensors (a copy of them; not taken when no later phase asks).
    keep_base = any(getattr(j.options, "preserve_prompts", 0) and getattr(j.options, "preserve_from", None) == "base"
                    for p in phases[1:] for j in p) or bool(settings.robust.rounds)  # robust: the base's images
    pristine: dict[str, torch.Tensor] = {}
    if phase_cache is not None and not (workdir / "checkpoint").exists():
        for k in reversed(range(len(phases))):  # the longest prefix whose file is sound
            found = cached_phase(Path(phase_cache) / f"{keys[k]}.safetensors")
            if found is not None:
                cached, (tensors, meta) = k, found
                break
        if cached is not None:  # into the plain pipeline, before any wrapper takes its copy
            if keep_base:  # the base values these cached phases overwrite
                params = {c: dict(getattr(pipe, c).named_parameters()) for c in ("unet", "text_encoder")}
                pristine = {k: params[k.split(".", 1)[0]][k.split(".", 1)[1]].detach().clone() for k in tensors}
            apply_delta(pipe, tensors, meta, None)
    accelerator = make_accelerator(settings, max(j.batch_size for j in jobs), cpu=pipe.unet.device.type == "cpu")
    rules = sorted({j.rule for p in phases for j in p})  # the robust phase's rule too
    token_ids = sorted({i for j in jobs if j.rule == "embedding"
                        for i in content_token_ids(pipe.tokenizer, j.concept.text)})
    model = EditableModel(pipe.unet, pipe.text_encoder, rules, token_ids, **added)
    if any(getattr(j.options, "stop_sot", False) for j in jobs):
        model.stop_gradient_first_token()
    if settings.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    bench = Bench(pipe, model, model_spec, progress=progress, seed=settings.seed,
                  image_cache=Path(image_cache) if image_cache is not None and base_hash else None)
    trainable = model.trainable()
    if keep_base:  # taken before a checkpoint's values are loaded: these are the base model's
        bench._base = FrozenOriginal(model, _base_values(model, trainable, pristine))
    names_by_rule = {r: _names(model, r) for r in rules}
    result = EraseResult(None, jobs, trainable_params=sum(p.numel() for p in trainable.values()))

    claim_workdir(workdir, jobs, settings, base_hash, accelerator, code)
    j0 = phases[0][0]
    optimizer = torch.optim.AdamW(trainable.values(), lr=j0.lr, weight_decay=j0.weight_decay)
    ckpt = workdir / "checkpoint"
    state = {"phase": 0, "step": 0, "history": [], "losses": []}
    if ckpt.exists():  # weights go in before prepare: DeepSpeed takes its own copy there
        state = load_checkpoint(ckpt, {"model": trainable}, None)["extra"]
    elif cached is not None:
        state.update(phase=cached + 1, history=meta["params"]["history"])
        result.phases_from_cache = cached + 1
    if settings.zero_stage == 3:
        zero3_external(model.text_encoder)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    rank, world = accelerator.process_index, accelerator.num_processes
    budget = stop_after
    for k, phase in enumerate(phases):
        if k < state["phase"]:
            continue
        resuming = k == state["phase"] and state["step"] > 0
        start = workdir / "phases" / str(k) / "start.safetensors"
        if any(method_registry.get(j.method).needs_frozen(j.options) for j in phase):
            if resuming:  # eps* is the model as this phase found it, not as the checkpoint left it
                _copy_into(trainable, load_file(str(start)))
            else:
                save_main(accelerator, lambda p: save_safetensors({k: v.detach() for k, v in trainable.items()}, p), start)
            phase_names = set().union(*(names_by_rule[j.rule] for j in phase if not closed_form(j.method)))
            bench.snapshot_frozen({n: p for n, p in trainable.items() if n in phase_names})  # what this phase moves
        # Preservation prompts avoid every concept erased so far, and none later: a phase depends
        # only on the phases up to it (what its phase-cache key holds).
        bench.run_concepts = tuple(j.concept for p in phases[:k + 1] for j in p)
        bench.phase_concepts = tuple(j.concept for j in phase)
        # The weights this phase starts from, by content: what it draws is cached under this.
        bench.state_id = None if not base_hash else base_hash if k == 0 else phase_key(base_hash, settings, phases[:k], code)
        t0 = time.time()
        solved = [j for j in phase if closed_form(j.method)]
        if solved and not resuming:  # a resumed phase's checkpoint already holds the solve
            _edit_closed_form(bench, solved, (settings.seed, k, "closed-form"), model)
        trained = [j for j in phase if not closed_form(j.method)]
        # Before the pools: a round's pool built on resuming must see the weights the checkpoint holds.
        if resuming and settings.zero_stage == 0:
            load_checkpoint(ckpt, {"model": trainable}, optimizer)
        else:  # under ZeRO a resumed phase restarts Adam's moments (weights were restored before prepare)
            _reset_optimizer(optimizer, (trained or phase)[0])
        total = sum(j.steps for j in trained)
        rounds = _rounds(trained)
        first = state["step"] if resuming else 0
        r0 = min(first * rounds // max(total, 1), rounds - 1)  # the round a resumed phase is in
        pools = [_pool(bench, j, workdir / "phases" / str(k), i, r0, (settings.seed, k, i),
                       accelerator) for i, j in enumerate(trained)]
        shares = _shares(trained, pools)
        result.seconds_pool += time.time() - t0
        model.set_trainable(set().union(*(names_by_rule[j.rule] for j in trained)))
        t0 = time.time()
        bar = Progress(total, f"erasing {k + 1}/{len(phases)} {_label(phase)}", "step", initial=first,
                       enabled=progress and accelerator.is_local_main_process)
        for step in range(first, total):
            if rounds > 1 and step > first and step * rounds % total == 0:  # a new round: pools from the model as it is
                t1 = time.time()
                pools = [_pool(bench, j, workdir / "phases" / str(k), i, step * rounds // total, (settings.seed, k, i),
                               accelerator, previous=pools[i]) for i, j in enumerate(trained)]
                shares = _shares(trained, pools)
                result.seconds_pool += time.time() - t1
            gen = torch.Generator().manual_seed(derived_seed(settings.seed, k, step))
            if shares is not None:  # a round method that splits its steps by what each concept has left
                i = int(torch.multinomial(shares, 1, generator=gen))
            else:
                i = int(torch.randint(0, len(trained), (1,), generator=gen)) if len(trained) > 1 else 0
            job = trained[i]
            idx = torch.randint(0, len(pools[i]), (job.batch_size,), generator=gen)[rank::world]
            batch = {key: v.to(accelerator.device) for key, v in pools[i].batch(idx).items()}  # pools live on the CPU
            loss = method_registry.get(job.method).loss(wrapped, batch, job.options, bench)
            accelerator.backward(loss)
            if settings.grad_clip and settings.zero_stage == 0:
                accelerator.clip_grad_norm_(list(trainable.values()), settings.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["losses"].append(round(float(loss.detach()), 6))
            bar.set_postfix(loss=f"{state['losses'][-1]:.4g}",
                            concept=job.concept.text[:24] if len(trained) > 1 else None)  # joint: which one
            bar.update()
            result.steps_run += 1
            state["phase"], state["step"] = k, step + 1
            if (step + 1) % settings.checkpoint_every == 0 and step + 1 < total:
                checkpoint(accelerator, ckpt, trainable, optimizer, state, settings)
            if budget is not None:
                budget -= 1
                if budget == 0:
                    bar.close()
                    checkpoint(accelerator, ckpt, trainable, optimizer, state, settings)
                    result.seconds_train += time.time() - t0
                    return _finish(result, state, model)
        bar.close()
        result.seconds_train += time.time() - t0
        if on_phase_end is not None:
            state["history"].append({"phase": k, "concepts": [j.concept.text for j in phase],
                                     **on_phase_end(k, [j for p in phases[:k + 1] for j in p])})
        state["phase"], state["step"] = k + 1, 0
        checkpoint(accelerator, ckpt, trainable, optimizer, state, settings)
        if phase_cache is not None:
            store_phase(accelerator, model, Path(phase_cache) / f"{keys[k]}.safetensors", phases[:k + 1], state,
                         base_hash)
    if out is not None:
        with gathered([*trainable.values(), *([model.patched.base.weight] if model.patched is not None else [])]):
            tensors = model.delta_tensors()  # copies, taken while ZeRO-3's partitions are gathered
        meta_method = ",".join(dict.fromkeys(j.method for j in jobs))
        save_main(accelerator, lambda p: save_delta(p, tensors, method=meta_method,
                                                      params={"settings": settings.model_dump(),
                                                              "jobs": [j.describe() for j in jobs]},
                                                      concepts=[j.concept.model_dump(mode="json") for j in jobs],
                                                      base_hash=base_hash), Path(out))
        result.delta = Path(out)
    return _finish(result, state, model)


def _finish(result: EraseResult, state: dict, model: EditableModel) -> EraseResult:
    extra = [model.patched.base.weight] if model.patched is not None else []
    with gathered([*model.trainable().values(), *extra], modify=True):
        model.release()  # the caller's pipeline is left a plain, edited pipeline
    result.history, result.losses = state["history"], state["losses"]
    result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _base_values(model: EditableModel, trainable: dict[str, torch.Tensor],
                 pristine: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base model's values of the trainable tensors: the current ones, except where cached
    phases overwrote them (`pristine`, by delta key; the patched embedding rows by table row)."""
    out = {n: pristine.get(n, p) for n, p in trainable.items()}
    table = pristine.get(f"text_encoder.{getattr(model, '_embedding_name', '')}")
    if model.patched is not None and table is not None:
        rows = next(n for n, p in trainable.items() if p is model.patched.rows)
        out[rows] = table[model.patched.token_ids]
    return out


def _edit_closed_form(bench: Bench, jobs: list[Job], seed_parts: tuple, model: EditableModel) -> None:
    """One solve for every closed-form job of a phase (UCE), on the weights as the phase finds them."""
    gen = torch.Generator().manual_seed(derived_seed(*seed_parts))
    by_method: dict[str, list[Job]] = {}
    for j in jobs:
        by_method.setdefault(j.method, []).append(j)
    with gathered(list(model.unet_trainable.values()), modify=True):
        for name, group in by_method.items():
            method_registry.get(name).edit(bench, [(j.concept, j.options) for j in group], bench.run_concepts, gen)


def _label(phase: list[Job]) -> str:
    if len(phase) == 1:
        return phase[0].concept.text
    return f"{len(phase)} concepts in one solve" if all(closed_form(j.method) for j in phase) else \
        f"{len(phase)} concepts jointly"


def _names(model: EditableModel, rule: str) -> set[str]:
    if rule in UNET_RULES:
        return {f"unet.{n}" for n in select_unet(model.unet, rule)}
    return {n for n, _ in model.named_parameters() if n.endswith("token_embedding.rows")}


def _rounds(trained: list[Job]) -> int:
    """How many pools a phase's training runs through: 1, or a round method's rounds (each one's
    steps split evenly between them)."""
    counts = {getattr(method_registry.get(j.method), "rounds", lambda o: 1)(j.options) for j in trained}
    if len(counts) > 1:
        raise ValueError(f"one phase trains methods with {sorted(counts)} rounds; expected one count")
    rounds = counts.pop() if counts else 1
    total = sum(j.steps for j in trained)
    if rounds > 1 and total % rounds:
        raise ValueError(f"a phase of {total} steps does not split into {rounds} rounds")
    return rounds


def _shares(trained: list[Job], pools: list[Pool]) -> torch.Tensor | None:
    """Each job's share of the phase's steps, where its method splits them by its pools (`shares`),
    or None: each step picks a job evenly."""
    methods = {j.method for j in trained}
    shares = getattr(method_registry.get(trained[0].method), "shares", None) if len(methods) == 1 else None
    return shares(pools, trained[0].options) if shares is not None else None


def _pool(bench: Bench, job: Job, folder: Path, i: int, r: int, seed_parts: tuple, accelerator,
          previous: Pool | None = None) -> Pool:
    """Load the phase's pool for job i in round r, or build it with the model as it is now and save
    it. A round method's pool grows from the last round's (`previous`; loaded when resuming)."""
    path = folder / (f"pool-{i}.safetensors" if r == 0 else f"pool-{i}-round{r}.safetensors")
    cached = path.exists()
    accelerator.wait_for_everyone()  # all ranks look before the main one writes it, or they disagree and deadlock
    if cached:
        return Pool.load(path)
    gen = torch.Generator().manual_seed(derived_seed(*seed_parts, *([r] if r else [])))
    method = method_registry.get(job.method)
    if r:
        if previous is None:
            previous = _pool(bench, job, folder, i, r - 1, seed_parts, accelerator)
        pool = method.build_pool(bench, job.concept, job.options, job.pool_size, gen, previous=previous)
    else:
        pool = method.build_pool(bench, job.concept, job.options, job.pool_size, gen)
    save_main(accelerator, pool.save, path)
    return pool


def _reset_optimizer(optimizer, job: Job) -> None:
    """Each sequential phase is a fresh fine-tune: no Adam moments carried over, its own lr."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if hasattr(inner, "state") and isinstance(inner.state, dict):
        inner.state.clear()
    for group in inner.param_groups:
        group["lr"], group["weight_decay"] = job.lr, job.weight_decay


def _copy_into(params: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, v in values.items():
            params[k].copy_(v)


