"""MLflow: one parent run per pipeline run, one nested run per concept, and the model registry.

mlflow is imported inside the functions: it takes seconds to import and only these need it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .config import PipelineParams


def _mlflow(params: PipelineParams):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import mlflow

    mlflow.set_tracking_uri(params.tracking.uri)
    mlflow.set_registry_uri(params.tracking.uri)
    mlflow.set_experiment(params.tracking.experiment)
    return mlflow


def _key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def _flat(prefix: str, d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(f"{prefix}{k}.", v))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _numbers(d: dict) -> dict:
    """The numeric values of `d` as floats (MLflow metrics take no None, text or bool)."""
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_pipeline(params: PipelineParams, metrics: dict, grids_root: Path, train: dict | None,
                 previous_metrics: dict | None, blocklist_sha256: str | None = None) -> str:
    """Parent run (settings, global metrics, comparison with the previous release) with a nested
    run per concept (its params, every probe before/after, its summary, before/after grids).

    `grids_root`: the folder the grid paths in metrics.json are relative to (work/evaluate).
    `previous_metrics`: the metrics.json of the release LATEST names, or None. Returns the parent run id.
    """
    mlflow = _mlflow(params)
    with mlflow.start_run(run_name="pipeline") as parent:
        tags = {"base_hash": metrics["base_hash"], "model": metrics["model"], "mode": params.erase.mode}
        if blocklist_sha256:
            tags["blocklist_sha256"] = blocklist_sha256
        mlflow.set_tags(tags)
        # Recipes are nested per method and kind: the train.json artifact holds what each job ran with.
        settings = _flat("erase.", params.erase.model_dump(mode="json", exclude={"recipes"}))
        settings.update({f"generate.{k}": v for k, v in params.generate.model_dump().items()})
        mlflow.log_params({_key(k): str(v)[:500] for k, v in settings.items()})
        mlflow.log_metrics({_key(k): v for k, v in _numbers(metrics["global"]).items()})
        if train:
            mlflow.log_dict(train, "train.json")
        comparison = {}
        for concept, m in metrics["concepts"].items():
            with mlflow.start_run(run_name=concept, nested=True):
                mlflow.log_params({"concept": concept, "kind": m["kind"], "method": m["method"],
                                   "anchor": str(m["anchor"])})
                # "neighbour:Okafor" -> "neighbour_Okafor_before": MLflow metric names take no colon.
                values = {f"{_key(p)}_{when}": float(v[when]) for p, v in m["probes"].items()
                          for when in ("before", "after") if v.get(when) is not None}
                values.update(_numbers(m["summary"]))
                if previous_metrics and concept in previous_metrics.get("concepts", {}):
                    # This run minus the previous release: > 0 on target_after means the concept came back.
                    old, new = previous_metrics["concepts"][concept]["summary"], m["summary"]
                    delta = {f"vs_previous_{k}": float(new[k]) - float(old[k])
                             for k in ("target_after", "target_reduction", "neighbour_max_drop")
                             if old.get(k) is not None and new.get(k) is not None}
                    values.update(delta)
                    comparison[concept] = delta
                mlflow.log_metrics(values)
                for when in ("before", "after"):
                    mlflow.log_artifact(str(Path(grids_root) / m["grids"][when]), artifact_path="grids")
        if previous_metrics is not None:
            mlflow.log_dict({"previous_release_concepts": sorted(previous_metrics.get("concepts", {})),
                             "per_concept": comparison}, "comparison.json")
        return parent.info.run_id


def log_gates(params: PipelineParams, run_id: str, gates: list[dict]) -> None:
    """The release gates on the pipeline's parent run: gates.json, and gates_passed 1/0."""
    mlflow = _mlflow(params)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_dict(gates, "gates.json")
        mlflow.log_metric("gates_passed", float(all(g["passed"] for g in gates)))


def register_release(params: PipelineParams, release_dir: Path, run_id: str | None) -> dict:
    """A model version whose source is the release folder, and the alias moved to it. The release's small
    files go to the parent run (when there is one) under release/. Returns {"name", "version", "alias"}."""
    mlflow = _mlflow(params)
    from mlflow import MlflowClient

    client = MlflowClient()
    name = params.release.registry_name
    manifest = json.loads((Path(release_dir) / "manifest.json").read_text())
    if run_id:
        with mlflow.start_run(run_id=run_id):
            mlflow.set_tag("release_hash", manifest["release_hash"])
            for f in ("MODEL_CARD.md", "manifest.json", "gates.json", "metrics.json"):
                mlflow.log_artifact(str(Path(release_dir) / f), artifact_path="release")
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description="Erased models published by the erasure pipeline")
    version = client.create_model_version(name, source=Path(release_dir).resolve().as_uri(), run_id=run_id,
                                          tags={"release_hash": manifest["release_hash"]})
    client.set_registered_model_alias(name, params.release.alias, version.version)
    return {"name": name, "version": str(version.version), "alias": params.release.alias}
