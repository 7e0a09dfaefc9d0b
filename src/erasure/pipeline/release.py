"""Stage 6, release: check the gates; when every concept passes, publish a release (atomically)
and register it in MLflow with the alias moved to it; otherwise publish nothing and report which
concept failed which gate."""

from __future__ import annotations

import json

from ..config import PipelineParams
from ..io import atomic_dir
from ..release import check_gates, failures, publish
from . import inputs


def run(params: PipelineParams, track: bool = True) -> dict:
    metrics = inputs.read_json(params.paths.stage("evaluate") / "metrics.json", "evaluate")
    blocklist = inputs.read_json(params.paths.stage("ingest") / "blocklist.json", "ingest")
    train = inputs.read_json(params.paths.stage("erase") / "train.json", "erase")
    delta = params.paths.stage("erase") / "delta.safetensors"
    gates = check_gates(metrics, params)
    report = {"passed": all(g["passed"] for g in gates), "gates": gates, "failures": failures(gates)}
    if report["passed"]:
        rid, path = publish(params, metrics=metrics, gates=gates, blocklist=blocklist, delta=delta, train=train)
        manifest = json.loads((path / "manifest.json").read_text())
        report.update(release_id=rid, release_hash=manifest["release_hash"], path=str(path))
    with atomic_dir(params.paths.stage("release")) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    run_file = params.paths.cache / "mlflow-run.json"
    if track:
        from ..tracking import log_gates, register_release

        run_id = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
        if run_id:
            log_gates(params, run_id, gates)
        if report["passed"]:
            report["registry"] = register_release(params, path, run_id)
    return report
