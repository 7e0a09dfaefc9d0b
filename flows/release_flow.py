"""The nightly blocklist run as a Prefect flow: the same stage functions `dvc repro` runs.

    python flows/release_flow.py [--params params.yaml]      # runs now, no server needed
    python flows/deploy.py                                   # serves it on a cron schedule

Concepts are independent while generating their evaluation data and while being evaluated, so
those are per-concept tasks; erasure is one task (sequential or joint over all concepts). Tasks
retry on transient failures; a retried or re-run erase resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys

for _var, _value in {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
                     # A first run creates Prefect's database; on 2 busy cores that outlasted the
                     # default 20 s wait for the temporary API server.
                     "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}.items():
    os.environ.setdefault(_var, _value)

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Failed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from erasure.config import ParamsError, PipelineParams, load_params  # noqa: E402
from erasure.pipeline import anchors as anchors_stage  # noqa: E402
from erasure.pipeline import attack as attack_stage  # noqa: E402
from erasure.pipeline import erase as erase_stage  # noqa: E402
from erasure.pipeline import evaluate as evaluate_stage  # noqa: E402
from erasure.pipeline import generate as generate_stage  # noqa: E402
from erasure.pipeline import ingest as ingest_stage  # noqa: E402
from erasure.pipeline import inputs  # noqa: E402
from erasure.pipeline import release as release_stage  # noqa: E402
from erasure.report import GatesFailed, print_failed_gates  # noqa: E402


def _transient(task, task_run, state) -> bool:
    """Retry unless the task failed on bad input: a malformed blocklist or a missing model fails the
    same way every time, and the user should see its one error at once."""
    from pydantic import ValidationError

    from erasure.blocklist import BlocklistError
    from erasure.concept import ConceptError
    from erasure.judges import JudgeError
    from erasure.models import ModelLoadError
    from erasure.pipeline.inputs import StageInputError

    return not isinstance(state.result(raise_on_failure=False), (BlocklistError, ConceptError, ModelLoadError,
                                                                  ValidationError, JudgeError, StageInputError))


# Inputs are params objects and pipelines, not hashable data: nothing is cached by Prefect (the
# pipeline's own caches decide what is redone). Retries cover transient failures (disk, a busy DB).
TASK = dict(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=_transient)


@task(**TASK)
def ingest(params: PipelineParams) -> dict:
    return ingest_stage.run(params)


@task(**TASK)
def choose_anchors(params: PipelineParams) -> dict:
    return anchors_stage.run(params)


# Each per-concept task loads its own pipeline: tasks run in parallel threads, and a diffusers
# scheduler keeps per-call state, so one pipeline cannot serve two threads (loading takes < 1 s;
# erasure.models serializes it, since diffusers patches torch.nn.Module process-wide meanwhile).
@task(**TASK, task_run_name="generate {entry[concept]}")
def generate_concept(params: PipelineParams, entry: dict, anchor: str | None, blocked: set[str]) -> dict:
    pipe, _, cache = generate_stage.model_and_cache(params)
    return generate_stage.generate_concept(params, entry, anchor, blocked, pipe, cache)


@task(**TASK)
def check_judges(params: PipelineParams, kinds: list[str]) -> None:
    """Every judge the evaluation will need, loaded once: a missing judge model fails before any image."""
    generate_stage.judges(params).check(kinds, quality=params.model != "miniworld")


@task(**TASK)
def generate_generic(params: PipelineParams, blocked: set[str]) -> dict:
    pipe, _, cache = generate_stage.model_and_cache(params)
    return generate_stage.generate_generic(params, blocked, pipe, cache)


@task(**TASK)
def erase(params: PipelineParams) -> dict:
    return erase_stage.run(params)  # a bar per phase, with its loss (in a log: a line every 30 s)


@task(**TASK, task_run_name="evaluate {entry[concept]}")
def evaluate_concept(params: PipelineParams, entry: dict) -> dict:
    pipe, _, cache = evaluate_stage.erased_model(params)
    return evaluate_stage.evaluate_concept(params, entry, pipe, cache, generate_stage.judges(params))


@task(**TASK)
def evaluate_generic(params: PipelineParams) -> tuple[str, dict]:
    pipe, base_hash, cache = evaluate_stage.erased_model(params)
    return base_hash, evaluate_stage.evaluate_generic(params, pipe, cache, generate_stage.judges(params))


@task(**TASK)
def record_evaluation(params: PipelineParams, base_hash: str, concepts: dict, generic: dict) -> dict:
    return evaluate_stage.write(params, base_hash, concepts, generic)


@task(**TASK)
def attack(params: PipelineParams) -> dict:
    return attack_stage.run(params)  # per concept: every attack on the base and the erased model


@task(**TASK)
def release(params: PipelineParams) -> dict:
    return release_stage.run(params)


# The per-concept sections are subflows with their own two workers: one concept's sampling overlaps
# another's file work without oversubscribing a small machine (the models are small: each task loads
# its own copy), and the workers end with their subflow. Idle workers that had run torch, left alive
# for the whole flow, slowed the main thread's training about 2x (the erase and attack stages: 4.0-4.8 s
# against 2.0-2.3 s for the same 30 attack steps, 2026-12-07).
@flow(name="generate", log_prints=True, validate_parameters=False,
      task_runner=ThreadPoolTaskRunner(max_workers=2))
def generate_all(params: PipelineParams, entries: list[dict], anchors: dict, blocked: set[str]) -> list[dict]:
    """The base model's images: every concept's probes, and the generic prompts."""
    futures = [generate_concept.submit(params, e, anchors[e["concept"]], blocked) for e in entries]
    futures.append(generate_generic.submit(params, blocked))
    return [f.result() for f in futures]  # raises here if a concept's generation failed for good


@flow(name="evaluate", log_prints=True, validate_parameters=False,
      task_runner=ThreadPoolTaskRunner(max_workers=2))
def evaluate_all(params: PipelineParams, entries: list[dict]) -> dict:
    """The erased model's images and their figures, recorded for the release stage."""
    per_concept = {e["concept"]: evaluate_concept.submit(params, e) for e in entries}
    base_hash, generic = evaluate_generic(params)
    return record_evaluation(params, base_hash, {c: f.result() for c, f in per_concept.items()}, generic)


@flow(name="erasure-release", log_prints=True)
def release_flow(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    blocklist = ingest(params)
    print(f"blocklist: {blocklist.get('concepts')} concepts; added {blocklist.get('added')}")
    anchors = choose_anchors(params)
    entries = inputs.entries(params)
    blocked = {e["concept"] for e in entries}
    check_judges(params, [e["kind"] for e in entries])

    counts = generate_all(params, entries, anchors, blocked)
    print("images drawn (from the cache): " + ", ".join(
        f"{c['concept']} {c['images_drawn']} ({c['images_from_cache']})" for c in counts))

    erased = erase(params)
    print(f"erased: {erased['steps_run']} steps; {erased['phases_from_cache']} phase(s) from the cache")

    evaluate_all(params, entries)
    attacked = attack(params)
    print("attacks (strongest on the erased model): " + ", ".join(
        f"{c} {a['attack_max']:.2f} ({a['strongest'] or '-'})" for c, a in attacked["concepts"].items()))
    report = release(params)
    if not report["passed"]:
        # Failed, not Completed: Prefect's log and UI name the gates; main() prints them as a table.
        refused = GatesFailed(report)
        return Failed(message=str(refused), data=refused)
    return report


def checked_params(path: str) -> PipelineParams:
    """The params file validated whole (its blocklist and model present) before a flow or server
    starts: on a mistake, its lines as `error: ...` and exit code 2."""
    from erasure.models import ModelLoadError, source_folder

    try:
        params = load_params(path)
    except ParamsError as exc:
        exit_with(exc.lines)
    if not params.paths.blocklist.is_file():
        exit_with([f"{path}: paths.blocklist: no such file {params.paths.blocklist}"])
    try:
        source_folder(params.model)  # a folder, or a hub id's snapshot in the local cache: no download
    except ModelLoadError as exc:
        exit_with([f"{path}: model: {exc}"])
    # The blocklist and the erasure's plan too (what the ingest and anchors stages check; nothing written):
    # a malformed entry or a method that cannot erase its concept is one error now, not a failed flow run.
    from erasure.blocklist import BlocklistError

    try:
        entries = ingest_stage.entries_of(ingest_stage.read(params))
    except (BlocklistError, ModelLoadError) as exc:
        exit_with([f"ingest: {line}" for line in str(exc).splitlines()])
    try:
        anchors_stage.choose_and_plan(params, entries)
    except (ValueError, ModelLoadError) as exc:  # ConceptError and the plan's refusals are ValueErrors
        exit_with([f"anchors: {str(exc).splitlines()[0]}"])
    return params


def exit_with(lines: list[str]) -> None:
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    path = ap.parse_args().params
    checked_params(path)
    try:
        report = release_flow(path)
    except GatesFailed as exc:
        print_failed_gates(exc.report["failed"])
        sys.exit(1)
    sys.exit(0 if report.get("passed") else 1)


if __name__ == "__main__":
    main()
