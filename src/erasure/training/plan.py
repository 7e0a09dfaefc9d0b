"""What an erasure run will do, decided before any work: its settings, each concept's job (method,
rule, options, schedule), and its phases (joint, sequential, the robust phase). Every impossible
combination is refused here, so a run fails on bad input before it loads or trains anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import methods as method_registry
from ..concept import Concept, ConceptError, check_encodable
from ..config import RobustParams as RobustSettings  # params.yaml's erase.robust, one schema
from ..methods.base import Options
from ..params import RULES

# The EraseSettings fields one concept may set for itself (a params.yaml recipe), besides `options`.
PER_CONCEPT = ("rule", "steps", "lr", "batch_size", "weight_decay", "pool_size")
MAX_POOL = 512  # pool samples per concept by default (steps x batch when smaller)


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
    # joint: every concept in one phase; sequential: one phase per concept, in the order given;
    # consolidated: the trained concepts one phase each in that order, then every closed-form concept
    # in one solve (so where a closed-form concept stands in the list changes nothing).
    mode: Literal["joint", "sequential", "consolidated"] = "joint"
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
    if base.mode in ("joint", "consolidated"):
        for name in dict.fromkeys(j.method for j in jobs if closed_form(j.method)):  # one solve per method
            check = getattr(method_registry.get(name), "check_joint", None)
            if check is not None:
                check([j.options for j in jobs if j.method == name])
    return jobs


def robust_jobs(jobs: list[Job], settings: EraseSettings) -> list[Job]:
    """The robust phase's jobs: one per concept, method `adversarial`, `rounds x steps` steps."""
    r = settings.robust  # its rule and options were checked when the settings were built (config.RobustParams)
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


def phases_of(jobs: list[Job], settings: EraseSettings) -> list[list[Job]]:
    """The run's phases: all jobs at once (joint); one per concept in the order they came (sequential:
    adding a concept at the end trains only it); or consolidated: the trained jobs one phase each in
    that order, then every closed-form job in one solve, sorted by name.

    Consolidated makes a run's weights independent of where its closed-form concepts stand in the
    list (bit for bit when at most one concept is trained), and adding a concept trains only it: the
    trained phases come from the phase cache and the final solve (under a second per concept) is redone
    whole, since a closed-form solve over several concepts is one linear system. On the ten-concept
    default (README, status) the sequential reverse order was refused; consolidated, both orders end in
    the same weights. With `settings.robust.rounds`, one more phase: every concept at once, trained
    against attacks (methods/adversarial.py)."""
    if settings.mode == "joint":
        phases = [jobs]
    elif settings.mode == "consolidated":
        solved = sorted((j for j in jobs if closed_form(j.method)), key=lambda j: j.concept.text.casefold())
        phases = [[j] for j in jobs if not closed_form(j.method)] + ([solved] if solved else [])
    else:
        phases = [[j] for j in jobs]
    return phases + [robust_jobs(jobs, settings)] if settings.robust.rounds else phases
