"""Stage 7, release: check the gates (the evaluation's, and attack_max on the attack stage's
figures); when every concept passes, publish a release (atomically) and register it in MLflow with
the alias moved to it; otherwise publish nothing and report which concept failed which gate."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..config import PipelineParams
from ..io import atomic_dir
from ..release import check_gates, failures, publish
from ..report import failed_gates
from . import inputs


def run(params: PipelineParams, track: bool = True) -> dict:
    metrics_path = params.paths.stage("evaluate") / "metrics.json"
    metrics = inputs.read_json(metrics_path, "evaluate")
    _check_metrics(metrics, metrics_path)
    blocklist = inputs.read_json(params.paths.stage("ingest") / "blocklist.json", "ingest")
    train = inputs.read_json(params.paths.stage("erase") / "train.json", "erase")
    delta = params.paths.stage("erase") / "delta.safetensors"
    if not delta.is_file():
        raise inputs.StageInputError(f"{delta}: missing; run the 'erase' stage first")
    attacks = attack_metrics(params, delta)
    gates = check_gates(metrics, params, attacks)
    if attacks is not None:  # the model card's attack table; metrics.json itself is the evaluate stage's
        metrics = {**metrics, "attacks": attacks}
    report = {"passed": all(g["passed"] for g in gates), "gates": gates, "failures": failures(gates),
              # The failed gates with the neighbour that fell and the phase that caused it (the console's table).
              "failed": failed_gates(gates, metrics, train, blocklist.get("entries") or [], attacks)}
    if report["passed"]:
        rid, path = publish(params, metrics=metrics, gates=gates, blocklist=blocklist, delta=delta, train=train)
        manifest = json.loads((path / "manifest.json").read_text())
        report.update(release_id=rid, release_hash=manifest["release_hash"], path=str(path))
    with atomic_dir(params.paths.stage("release")) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    if track:
        from ..tracking import log_gates, register_release

        run_id = parent_run(params)
        if run_id:
            log_gates(params, run_id, gates)
        if report["passed"]:
            report["registry"] = register_release(params, path, run_id)
    return report


def attack_metrics(params: PipelineParams, delta: Path) -> dict | None:
    """The attack stage's figures for this delta: required when a gate bounds attack_max; else read
    when present (for the model card), ignored when they were taken on another delta."""
    path = params.paths.stage("attack") / "metrics.json"
    gated = any(g.attack_max is not None for g in params.release.gates.values())
    if not path.is_file():
        if gated:
            raise inputs.StageInputError(f"{path}: missing; run the 'attack' stage first (release.gates bound "
                                         "attack_max)")
        return None
    attacks = json.loads(path.read_text())
    if attacks.get("delta_sha256") != hashlib.sha256(delta.read_bytes()).hexdigest():
        if gated:
            raise inputs.StageInputError(f"{path}: taken on another delta than {delta}; rerun the 'attack' stage")
        print(f"{path}: taken on another delta than {delta}; not in this release")
        return None
    return attacks


def parent_run(params: PipelineParams) -> str | None:
    metrics_path = params.paths.stage("evaluate") / "metrics.json"
    if not metrics_path.is_file():
        return None
    return _parent_run(params, json.loads(metrics_path.read_text()), metrics_path)


def _parent_run(params: PipelineParams, metrics: dict, metrics_path: Path) -> str | None:
    """The pipeline's parent MLflow run: named in metrics.json, or (as the evaluate stage does, to keep
    run ids out of work/) in the cache's mlflow-run.json; None when evaluate ran untracked, or when
    that run logged other metrics than these (e.g. `dvc checkout` restored an older metrics.json)."""
    if (metrics.get("mlflow") or {}).get("run_id"):
        return metrics["mlflow"]["run_id"]
    run_file = params.paths.cache / "mlflow-run.json"
    if not run_file.is_file():
        return None
    run = json.loads(run_file.read_text())
    if run.get("metrics_sha256") != hashlib.sha256(metrics_path.read_bytes()).hexdigest():
        print(f"{run_file}: its MLflow run logged other metrics than {metrics_path}; gates and registry not "
              "tracked (rerun the 'evaluate' stage to track this release)")
        return None
    return run.get("run_id")


def _check_metrics(metrics: dict, path: Path) -> None:
    """What the gates and the model card read; one clear error (exit 2) instead of a KeyError."""
    if not isinstance(metrics, dict) or not isinstance(metrics.get("concepts"), dict):
        raise ValueError(f"{path}: expected an object with a 'concepts' mapping; rerun the 'evaluate' stage")
    for key in ("base_hash", "global", "images_per_probe"):
        if key not in metrics:
            raise ValueError(f"{path}: no {key!r}; rerun the 'evaluate' stage")
    for concept, m in metrics["concepts"].items():
        summary = m.get("summary") if isinstance(m, dict) else None
        missing = [k for k in ("kind", "method") if not isinstance(m, dict) or k not in m]
        missing += [f"summary.{k}" for k in ("target_before", "target_after", "target_reduction")
                    if not isinstance(summary, dict) or summary.get(k) is None]
        if missing:
            raise ValueError(f"{path}: concept {concept!r} has no {', '.join(missing)}; rerun the 'evaluate' stage")
