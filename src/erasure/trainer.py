"""The one training loop every erasure method runs on: Accelerate (DeepSpeed ZeRO 1-3), checkpoints, deltas.

    jobs = plan(concepts, settings)             # method, rule, options, steps, lr per concept
    result = erase(pipe, jobs, settings, workdir, out="delta.safetensors")

Multi-concept: `joint` trains all concepts at once (each step draws one concept); `sequential`
erases one after another, each starting from the last, and calls `on_phase_end` after each (to
record how every earlier concept holds up). Each phase first builds its methods' pools with the
model as it then is (the frozen reference), then trains. Everything random is drawn from
generators seeded by (seed, phase, step), and a checkpoint holds only the trainable tensors and
the optimizer state, so a resumed run ends in the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file

from . import methods as method_registry
from .checkpoint import load_checkpoint, save_checkpoint
from .concept import Concept, ConceptError, check_encodable, content_token_ids
from .codehash import code_hash
from .delta import DeltaError, apply_delta, load_delta, save_delta
from .editable import EditableModel
from .families import SDXL_EMBEDDING_RULE, added_conditioning, is_sdxl
from .frozen import FrozenOriginal
from .io import CacheWarning, atomic_file, digest_problem, save_safetensors, write_digest
from .methods.base import Bench, Options, Pool
from .params import RULES, UNET_RULES, select_unet
from .progress import Progress

# The EraseSettings fields one concept may set for itself (a params.yaml recipe), besides `options`.
PER_CONCEPT = ("rule", "steps", "lr", "batch_size", "weight_decay", "pool_size")
MAX_POOL = 512  # pool samples per concept by default (steps x batch when smaller)
# The modules whose code decides a run's weights (with every package module they import): the
# phase cache and run folders are keyed by their hash, so changed training code never reuses them.
TRAINING_CODE = ("trainer.py", "models.py")


class RobustSettings(BaseModel):
    """The robust phase (methods/adversarial.py): after every concept is erased, `rounds` rounds over
    all of them at once, each learning the attacks against the model as it is and training `steps`
    outer steps per concept on what they recover. rounds 0: no robust phase."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(0, ge=0)
    steps: int = Field(30, gt=0)  # outer steps per concept and round
    lr: float = Field(5e-4, gt=0)
    batch_size: int = Field(16, gt=0)
    # Cross-attention (q, k, v, out): on Pip after UCE, xattn-kv left soft prompts 0.31, xattn 0.12 (lr 2e-4)
    rule: str = "xattn"
    options: dict = {}  # methods/adversarial.py's AdversarialOptions (rounds comes from here)


class EraseSettings(BaseModel):
    """Every knob of an erasure run (params.yaml's `erase` section maps onto this)."""

    model_config = ConfigDict(extra="forbid")

    method: str = "esd"
    rule: str | None = None  # None: the method's default for the concept's kind
    # The method's own options (see methods/<method>.py); when concepts use several methods, key
    # them by method name: {"esd": {...}, "ca": {...}}.
    options: dict = {}
    steps: int | None = Field(None, gt=0)  # per concept; None: the method's reference default
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    mode: Literal["joint", "sequential"] = "joint"
    pool_size: int | None = Field(None, gt=0)  # None: min(steps x batch, MAX_POOL)
    seed: int = 0
    grad_clip: float = 1.0
    mixed_precision: Literal["no", "bf16"] = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = Field(50, gt=0)
    zero_stage: Literal[0, 1, 2, 3] = 0
    robust: RobustSettings = RobustSettings()


@dataclass
class Job:
    concept: Concept
    method: str
    rule: str
    options: Options
    steps: int
    lr: float
    batch_size: int
    weight_decay: float
    pool_size: int

    def describe(self) -> dict:
        return {"concept": self.concept.model_dump(mode="json"), "method": self.method, "rule": self.rule,
                "options": self.options.model_dump(), "steps": self.steps, "lr": self.lr,
                "batch_size": self.batch_size, "weight_decay": self.weight_decay, "pool_size": self.pool_size}


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


def plan(concepts: list[Concept], settings: EraseSettings, methods: list[str | None] | None = None,
         overrides: list[dict] | None = None) -> list[Job]:
    """Resolve each concept's method, rule, options and schedule; reject impossible combinations.

    `overrides[i]`: EraseSettings fields for concept i alone (rule, steps, lr, batch_size,
    weight_decay, pool_size, and `options` merged over the run's), e.g. a recipe per concept kind.
    """
    if not concepts:
        raise ConceptError("no concepts to erase")
    seen = set()
    for c in concepts:
        if c.text.lower() in seen:
            raise ConceptError(f"concept {c.text!r} is listed twice")
        seen.add(c.text.lower())
    jobs = []
    base = settings
    for i, concept in enumerate(concepts):
        name = (methods[i] if methods else None) or base.method
        own = dict(overrides[i]) if overrides else {}
        extra = own.pop("options", {})
        unknown = set(own) - set(PER_CONCEPT)
        if unknown:
            raise ValueError(f"settings for concept {concept.text!r}: unknown field(s) {', '.join(sorted(unknown))}; "
                             f"expected {', '.join(PER_CONCEPT)}, options")
        settings = EraseSettings(**{**base.model_dump(), **own})
        method = method_registry.get(name)
        try:
            options = method.Options(**{**_options_for(name, base.options), **extra})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"options for method {name!r}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        method.check(concept, options)
        rule = settings.rule or method.default_rule(concept.kind)
        if rule not in RULES:
            raise ValueError(f"rule {rule!r} unknown; expected one of {', '.join(RULES)}")
        d = method.defaults(concept.kind)
        if closed_form(name):  # no optimizer: a schedule set for this concept alone would be ignored
            ignored = sorted(set(own) - {"rule"})
            if ignored:
                raise ValueError(f"settings for concept {concept.text!r}: method {name!r} is closed-form (no "
                                 f"training steps); {', '.join(ignored)} do not apply to it")
            jobs.append(Job(concept, name, settings.rule or method.default_rule(concept.kind), options, 0, d.lr,
                            d.batch_size, d.weight_decay, 0))
            if jobs[-1].rule not in ("xattn-kv", "xattn"):
                raise ValueError(f"method {name!r} edits the cross-attention key/value projections; rule "
                                 f"{jobs[-1].rule!r} does not hold them (use xattn-kv)")
            continue
        steps = d.steps if settings.steps is None else settings.steps
        batch = d.batch_size if settings.batch_size is None else settings.batch_size
        jobs.append(Job(concept, name, rule, options, steps, d.lr if settings.lr is None else settings.lr, batch,
                        d.weight_decay if settings.weight_decay is None else settings.weight_decay,
                        # A pool larger than the samples the steps draw is never used: capped (a short run
                        # of a recipe with a large pool builds only what it trains on).
                        min(settings.pool_size or MAX_POOL, steps * batch)))
    if base.robust.rounds:
        robust_jobs(jobs, base)  # its options and rule checked now, before any work
    if base.mode == "joint":
        keys = {(j.lr, j.batch_size, j.weight_decay) for j in jobs if not closed_form(j.method)}
        if len(keys) > 1:
            raise ValueError("joint mode trains every concept with one optimizer: lr, batch size and weight decay "
                             f"must agree across concepts (got {sorted(keys)}); set them in the settings")
        for name in dict.fromkeys(j.method for j in jobs if closed_form(j.method)):  # one solve per method
            check = getattr(method_registry.get(name), "check_joint", None)
            if check is not None:
                check([j.options for j in jobs if j.method == name])
    return jobs


def robust_jobs(jobs: list[Job], settings: EraseSettings) -> list[Job]:
    """The robust phase's jobs: one per concept, method `adversarial`, `rounds x steps` steps."""
    r = settings.robust
    if r.rule not in UNET_RULES:
        raise ValueError(f"erase.robust.rule {r.rule!r}: expected a UNet rule ({', '.join(UNET_RULES)}); the robust "
                         "phase trains against attacks on the text encoder's input and must not train its rows")
    if any(j.rule == "embedding" for j in jobs):
        raise ValueError("erase.robust: a concept's rule is 'embedding' (text-encoder rows trained); the robust "
                         "phase learns attack tokens through the text encoder as it is: use UNet rules with it")
    method = method_registry.get("adversarial")
    try:
        options = method.Options(**{**r.options, "rounds": r.rounds})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"erase.robust.options: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    out = []
    for j in jobs:
        method.check(j.concept, options)
        steps = r.rounds * r.steps
        out.append(Job(j.concept, "adversarial", r.rule, options, steps, r.lr, r.batch_size, 0.0,
                       min(MAX_POOL, r.steps * r.batch_size)))  # one round's pool
    return out


def closed_form(method: str) -> bool:
    """Whether a method edits the weights in one solve (`edit`) instead of training on a pool."""
    return getattr(method_registry.get(method), "closed_form", False)


def _options_for(method: str, options: dict) -> dict:
    if options and all(k in method_registry.METHODS for k in options):
        return dict(options.get(method, {}))
    return dict(options)


def check_prompts(tokenizer, jobs: list[Job]) -> None:
    """Every text a method will condition on must be encodable whole by this model's tokenizer."""
    for j in jobs:
        c = j.concept
        check_encodable(tokenizer, c.text, "concept")
        for name in ("anchor", "alternative", "erase_from"):
            if getattr(c, name):
                check_encodable(tokenizer, getattr(c, name), name)


def erase(pipe, jobs: list[Job], settings: EraseSettings, workdir: Path, out: Path | None = None, *,
          model_spec: str = "miniworld", base_hash: str | None = None,
          on_phase_end: Callable[[int, list[Job]], dict] | None = None, progress: bool = True,
          stop_after: int | None = None, phase_cache: Path | None = None) -> EraseResult:
    """Train the erasure; write the delta to `out` (atomically). `stop_after` ends early (tests).

    `phase_cache`: a folder of finished phases keyed by everything that determines them (base model
    hash, settings, the jobs of this phase and all before it). A run whose first phases match a
    cached prefix starts after it, so adding a concept to a sequential run trains only that concept,
    and ends in the same weights as a run from scratch.
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
    keys = [_phase_key(base_hash, settings, phases[:k + 1], code) for k in range(len(phases))] if phase_cache else []
    cached = None
    # Preservation rows toward the base model after the first phase need its values of the trained
    # tensors (a copy of them; not taken when no later phase asks).
    keep_base = any(getattr(j.options, "preserve_prompts", 0) and getattr(j.options, "preserve_from", None) == "base"
                    for p in phases[1:] for j in p) or bool(settings.robust.rounds)  # robust: the base's images
    pristine: dict[str, torch.Tensor] = {}
    if phase_cache is not None and not (workdir / "checkpoint").exists():
        for k in reversed(range(len(phases))):  # the longest prefix whose file is sound
            found = _cached_phase(Path(phase_cache) / f"{keys[k]}.safetensors")
            if found is not None:
                cached, (tensors, meta) = k, found
                break
        if cached is not None:  # into the plain pipeline, before any wrapper takes its copy
            if keep_base:  # the base values these cached phases overwrite
                params = {c: dict(getattr(pipe, c).named_parameters()) for c in ("unet", "text_encoder")}
                pristine = {k: params[k.split(".", 1)[0]][k.split(".", 1)[1]].detach().clone() for k in tensors}
            apply_delta(pipe, tensors, meta, None)
    accelerator = _accelerator(settings, max(j.batch_size for j in jobs), cpu=pipe.unet.device.type == "cpu")
    rules = sorted({j.rule for p in phases for j in p})  # the robust phase's rule too
    token_ids = sorted({i for j in jobs if j.rule == "embedding"
                        for i in content_token_ids(pipe.tokenizer, j.concept.text)})
    model = EditableModel(pipe.unet, pipe.text_encoder, rules, token_ids, **added)
    if any(getattr(j.options, "stop_sot", False) for j in jobs):
        model.stop_gradient_first_token()
    if settings.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    bench = Bench(pipe, model, model_spec, progress=progress)
    trainable = model.trainable()
    if keep_base:  # taken before a checkpoint's values are loaded: these are the base model's
        bench._base = FrozenOriginal(model, _base_values(model, trainable, pristine))
    names_by_rule = {r: _names(model, r) for r in rules}
    result = EraseResult(None, jobs, trainable_params=sum(p.numel() for p in trainable.values()))

    _claim_workdir(workdir, jobs, settings, base_hash, accelerator, code)
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
        _zero3_external(model.text_encoder)
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
                _save_main(accelerator, lambda p: save_safetensors({k: v.detach() for k, v in trainable.items()}, p), start)
            phase_names = set().union(*(names_by_rule[j.rule] for j in phase if not closed_form(j.method)))
            bench.snapshot_frozen({n: p for n, p in trainable.items() if n in phase_names})  # what this phase moves
        # Preservation prompts avoid every concept erased so far, and none later: a phase depends
        # only on the phases up to it (what its phase-cache key holds).
        bench.run_concepts = tuple(j.concept for p in phases[:k + 1] for j in p)
        bench.phase_concepts = tuple(j.concept for j in phase)
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
                result.seconds_pool += time.time() - t1
            gen = torch.Generator().manual_seed(_seed(settings.seed, k, step))
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
                _checkpoint(accelerator, ckpt, trainable, optimizer, state, settings)
            if budget is not None:
                budget -= 1
                if budget == 0:
                    bar.close()
                    _checkpoint(accelerator, ckpt, trainable, optimizer, state, settings)
                    result.seconds_train += time.time() - t0
                    return _finish(result, state, model)
        bar.close()
        result.seconds_train += time.time() - t0
        if on_phase_end is not None:
            state["history"].append({"phase": k, "concepts": [j.concept.text for j in phase],
                                     **on_phase_end(k, [j for p in phases[:k + 1] for j in p])})
        state["phase"], state["step"] = k + 1, 0
        _checkpoint(accelerator, ckpt, trainable, optimizer, state, settings)
        if phase_cache is not None:
            _store_phase(accelerator, model, Path(phase_cache) / f"{keys[k]}.safetensors", phases[:k + 1], state,
                         base_hash)
    if out is not None:
        with _gathered([*trainable.values(), *([model.patched.base.weight] if model.patched is not None else [])]):
            tensors = model.delta_tensors()  # copies, taken while ZeRO-3's partitions are gathered
        meta_method = ",".join(dict.fromkeys(j.method for j in jobs))
        _save_main(accelerator, lambda p: save_delta(p, tensors, method=meta_method,
                                                      params={"settings": settings.model_dump(),
                                                              "jobs": [j.describe() for j in jobs]},
                                                      concepts=[j.concept.model_dump(mode="json") for j in jobs],
                                                      base_hash=base_hash), Path(out))
        result.delta = Path(out)
    return _finish(result, state, model)


def phases_of(jobs: list[Job], settings: EraseSettings) -> list[list[Job]]:
    """The run's phases: all jobs at once (joint), or one per concept in the order they came
    (sequential: adding a concept at the end trains only it).

    Tried and measured on the ten-concept default (README, status): trained phases first, then the
    closed-form ones by name, which makes the result order-free; the frame's CA then ran first and the
    other memorized image fell to 0.75 in every variant tried. With `settings.robust.rounds`, one more
    phase: every concept at once, trained against attacks (methods/adversarial.py)."""
    phases = [jobs] if settings.mode == "joint" else [[j] for j in jobs]
    return phases + [robust_jobs(jobs, settings)] if settings.robust.rounds else phases


def phase_files(phase_cache: Path, base_hash: str, settings: EraseSettings, jobs: list[Job]) -> list[Path]:
    """Where `erase(..., phase_cache=...)` keeps each finished phase's delta (the run's edit up to it)."""
    phases, code = phases_of(jobs, settings), code_hash(*TRAINING_CODE)
    return [Path(phase_cache) / f"{_phase_key(base_hash, settings, phases[:k + 1], code)}.safetensors"
            for k in range(len(phases))]


def _phase_key(base_hash: str, settings: EraseSettings, phases: list[list[Job]], code: str) -> str:
    """What determines a phase's end weights: the base, the settings that shape training, every job
    up to it (reference images by content, since a path may be rewritten in place), and the code."""
    jobs = []
    for phase in phases:
        for j in phase:
            d = j.describe()
            d["concept"]["reference_images"] = [hashlib.sha256(Path(r).read_bytes()).hexdigest()
                                                for r in j.concept.reference_images]
            jobs.append(d)
    spec = {"base_hash": base_hash, "settings": settings.model_dump(mode="json", exclude={"checkpoint_every"}),
            "phases": [len(p) for p in phases], "jobs": jobs, "code": code}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _store_phase(accelerator, model: EditableModel, path: Path, done: list[list[Job]], state: dict,
                 base_hash: str) -> None:
    with _gathered([*model.trainable().values(), *([model.patched.base.weight] if model.patched is not None else [])]):
        tensors = model.delta_tensors()
    params = {"history": state["history"], "jobs": [j.describe() for p in done for j in p]}

    def write(p: Path) -> None:
        save_delta(p, tensors, method=",".join(dict.fromkeys(j.method for p in done for j in p)), params=params,
                   concepts=[j.concept.model_dump(mode="json") for p in done for j in p], base_hash=base_hash)
        write_digest(p)  # after the file: a record always describes a whole one

    _save_main(accelerator, write, path)


def _cached_phase(path: Path) -> tuple[dict, dict] | None:
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


def _finish(result: EraseResult, state: dict, model: EditableModel) -> EraseResult:
    extra = [model.patched.base.weight] if model.patched is not None else []
    with _gathered([*model.trainable().values(), *extra], modify=True):
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
    gen = torch.Generator().manual_seed(_seed(*seed_parts))
    by_method: dict[str, list[Job]] = {}
    for j in jobs:
        by_method.setdefault(j.method, []).append(j)
    with _gathered(list(model.unet_trainable.values()), modify=True):
        for name, group in by_method.items():
            method_registry.get(name).edit(bench, [(j.concept, j.options) for j in group], bench.run_concepts, gen)


def _label(phase: list[Job]) -> str:
    return phase[0].concept.text if len(phase) == 1 else f"{len(phase)} concepts jointly"


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:8], "little") & (2**63 - 1)


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


def _pool(bench: Bench, job: Job, folder: Path, i: int, r: int, seed_parts: tuple, accelerator,
          previous: Pool | None = None) -> Pool:
    """Load the phase's pool for job i in round r, or build it with the model as it is now and save
    it. A round method's pool grows from the last round's (`previous`; loaded when resuming)."""
    path = folder / (f"pool-{i}.safetensors" if r == 0 else f"pool-{i}-round{r}.safetensors")
    cached = path.exists()
    accelerator.wait_for_everyone()  # all ranks look before the main one writes it, or they disagree and deadlock
    if cached:
        return Pool.load(path)
    gen = torch.Generator().manual_seed(_seed(*seed_parts, *([r] if r else [])))
    method = method_registry.get(job.method)
    if r:
        if previous is None:
            previous = _pool(bench, job, folder, i, r - 1, seed_parts, accelerator)
        pool = method.build_pool(bench, job.concept, job.options, job.pool_size, gen, previous=previous)
    else:
        pool = method.build_pool(bench, job.concept, job.options, job.pool_size, gen)
    _save_main(accelerator, pool.save, path)
    return pool


def _reset_optimizer(optimizer, job: Job) -> None:
    """Each sequential phase is a fresh fine-tune: no Adam moments carried over, its own lr."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if hasattr(inner, "state") and isinstance(inner.state, dict):
        inner.state.clear()
    for group in inner.param_groups:
        group["lr"], group["weight_decay"] = job.lr, job.weight_decay


def _checkpoint(accelerator, path: Path, trainable, optimizer, state: dict, settings: EraseSettings) -> None:
    # Under ZeRO the optimizer state is partitioned across ranks: checkpoints keep weights only.
    opt = optimizer if settings.zero_stage == 0 else None
    _save_main(accelerator, lambda p: save_checkpoint(p, {"model": trainable}, opt, state["step"], extra=state), path,
               gather=trainable.values())


def _save_main(accelerator, write: Callable[[Path], None], path: Path, gather=()) -> None:
    """`write(path)` on the main process only; every process waits. `gather`: parameters `write` reads
    (ZeRO-3 splits them across ranks: every rank takes part in gathering them whole first)."""
    with _gathered(gather):
        if accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
        accelerator.wait_for_everyone()


def _zero3_external(module: torch.nn.Module) -> None:
    """ZeRO-3 gathers a module's own parameters as it is called, but CLIP's embeddings read their
    position table's shape before calling it (and find it empty): have them gather it too. (Not a
    z3 leaf module: DeepSpeed then never reduces the gradients of parameters inside it.)"""
    import deepspeed

    for mod in module.modules():
        table = getattr(mod, "position_embedding", None)
        if isinstance(table, torch.nn.Embedding):
            deepspeed.zero.register_external_parameter(mod, table.weight)


@contextmanager
def _gathered(params, modify: bool = False):
    """Within: the full values of `params` on every rank, also under ZeRO-3 (read-only unless
    `modify`: then rank 0's changes are kept). Collective under ZeRO-3: every rank must enter with
    the same parameters. A no-op otherwise."""
    params = [p for p in params if hasattr(p, "ds_id")]  # ZeRO-3 marks the parameters it partitions
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None):
        yield


def _copy_into(params: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, v in values.items():
            params[k].copy_(v)


def _claim_workdir(workdir: Path, jobs: list[Job], settings: EraseSettings, base_hash: str | None,
                   accelerator, code: str) -> None:
    """A workdir belongs to one run: resuming with different settings or code would mix two runs."""
    spec = json.dumps({"jobs": [j.describe() for j in jobs], "settings": settings.model_dump(mode="json"),
                       "base_hash": base_hash, "code": code}, sort_keys=True)
    marker = workdir / "run.json"
    claimed = marker.exists()
    accelerator.wait_for_everyone()  # all ranks look before the main one writes it, or they disagree and deadlock
    if claimed:
        if json.loads(marker.read_text()) != json.loads(spec):
            raise ValueError(f"--workdir {workdir} holds a run with other settings (or made by other code); use "
                             "another workdir or delete it to start over")
        return
    if accelerator.is_main_process:
        workdir.mkdir(parents=True, exist_ok=True)
        with atomic_file(marker) as fh:
            fh.write(spec)
    accelerator.wait_for_everyone()


def _accelerator(settings: EraseSettings, batch_size: int | None = None, cpu: bool | None = None):
    """The run's Accelerator. `batch_size`: the global batch of a step (the loop gives each rank
    `idx[rank::world]` of it), for DeepSpeed's per-rank micro batch. `cpu`: whether the run's device
    (where the pipeline was loaded) is the CPU; None: whether this machine lacks CUDA."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DeepSpeedPlugin, DistributedDataParallelKwargs, DistributedType, InitProcessGroupKwargs

    cpu = not torch.cuda.is_available() if cpu is None else cpu
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    if not distributed:  # several runs in one process (tests, benchmarks): start from a clean state
        AcceleratorState._reset_state(reset_partial_state=True)
    if not settings.zero_stage:  # an earlier DeepSpeed run in this process left this set: it would switch DeepSpeed on
        os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
        handlers = []
        if distributed:
            if cpu:
                handlers.append(InitProcessGroupKwargs(backend="gloo"))
            handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
        return Accelerator(cpu=cpu, mixed_precision=settings.mixed_precision, kwargs_handlers=handlers)
    # DeepSpeed without CUDA runs on its CPU accelerator. Accelerate silently drops the DeepSpeed plugin
    # when told to use the CPU (cpu=True or ACCELERATE_USE_CPU=true, which two-process CPU launches
    # need): neither may reach it. Without a backend named (gloo) it counts one process, whatever the world.
    per_rank = -(-(batch_size or settings.batch_size or 1) // world)  # rank 0 gets the most: ceil(B / world)
    plugin = DeepSpeedPlugin(hf_ds_config={
        "train_micro_batch_size_per_gpu": per_rank, "gradient_accumulation_steps": 1,
        "gradient_clipping": settings.grad_clip, "zero_optimization": {"stage": settings.zero_stage},
        "bf16": {"enabled": settings.mixed_precision == "bf16"}, "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
    })
    if not distributed:  # one process (python script.py): DeepSpeed still wants a process group of one
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(_free_port())}.items():
            os.environ.setdefault(key, value)
    use_cpu = os.environ.pop("ACCELERATE_USE_CPU", None)
    try:
        accelerator = Accelerator(cpu=False, mixed_precision=settings.mixed_precision, deepspeed_plugin=plugin,
                                  kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if cpu else [])
    finally:
        if use_cpu is not None:
            os.environ["ACCELERATE_USE_CPU"] = use_cpu
    try:  # else transformers builds every model loaded later in this process partitioned (ZeRO-3's zero.Init)
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    except ImportError:
        pass
    if accelerator.distributed_type != DistributedType.DEEPSPEED or accelerator.num_processes != world:
        raise RuntimeError(f"zero_stage={settings.zero_stage} asked for DeepSpeed on {world} process(es), but "
                           f"Accelerate set up {accelerator.distributed_type} on {accelerator.num_processes}")
    return accelerator


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
