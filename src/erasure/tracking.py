"""MLflow: one parent run per pipeline run (it spans the job), one nested run per concept, the
comparison with the previous release, the gates, and the release as a registered pyfunc model.

What the review shows, and where:
- the runs table: the parent run carries per-concept targets and gate results as metrics
  (`<concept>.target_after`, `<concept>.gate.target_max.pass`, ...), the bounds as params;
- a concept's run: its gates as params (`gate.<name>.bound`), metrics (`gate.<name>.value`,
  `gate.<name>.pass`) and tags (`gate.<name>`: "pass: 0.00 <= 0.10"), a gates table as the run's
  description, the training loss as the `loss` metric's history, `grids/<slug>-side-by-side.png`
  (prompt and judge's reading under each image), and `previous_release/` (delta table, old grid);
- the experiment is tagged `mlflow.experimentKind: custom_model_development` (MLflow 3's kind for
  model training); the UI's GenAI/model-training switch is per browser, `?workflowType=machine_learning`
  in the URL sets it; the runs table's columns are a saved view, "Release review" (`review_url`).

Artifacts of a SQLite store go to `mlartifacts/` beside the database (not MLflow's default,
`./mlruns` under whatever folder the process ran in). MLflow records them as absolute file URIs,
so a copied store is pointed at its own folder with `relocate` (README, "The review").

mlflow is imported inside the functions: it takes seconds to import and only these need it.
"""

from __future__ import annotations

import html
import json
import os
import re
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path

from .config import PipelineParams

ARTIFACTS = "mlartifacts"  # the artifact root, beside the SQLite database
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
MODEL_PATH = "model"  # the pyfunc model, inside the parent run's artifacts


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI (relative to the working folder), else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    db = sqlite_path(uri)
    return (db.resolve().parent / ARTIFACTS).as_uri() if db else None


def _mlflow(params: PipelineParams):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file logged
    import mlflow

    uri, name = params.tracking.uri, params.tracking.experiment
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root(uri)
        try:
            client.create_experiment(name, artifact_location=f"{root}/{_slug(name)}" if root else None,
                                     tags={KIND_TAG: KIND})
        except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
            pass
    elif exp.tags.get(KIND_TAG) != KIND:  # an experiment made before the kind was set
        client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
    mlflow.set_experiment(name)
    return mlflow


def experiment_id(params: PipelineParams) -> str:
    return _mlflow(params).get_experiment_by_name(params.tracking.experiment).experiment_id


def review_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in `mlflow ui` (the model-training view, not the GenAI overview)."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={REVIEW_VIEW}")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


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


from .config import GATE_HOLDS as SIGN  # noqa: E402 (the relation a passing value holds)


def _gate_text(g: dict) -> str:
    """"pass: 0.00 <= 0.10" / "FAIL: 0.22 > 0.10" (the relation that held)."""
    sign = SIGN[g["gate"]] if g["passed"] else {"<=": ">", ">=": "<"}[SIGN[g["gate"]]]
    return f"{'pass' if g['passed'] else 'FAIL'}: {g['value']:.2f} {sign} {g['bound']:.2f}"


def _gates_note(concept: str, gates: list[dict], previous: dict | None) -> str:
    """The concept run's description (markdown, shown first on its page)."""
    lines = [f"**{concept}**: release gates", "", "| gate | value | bound | result |", "|---|---|---|---|"]
    lines += [f"| {g['gate']} | {g['value']:.3f} | {SIGN[g['gate']]} {g['bound']} | "
              f"{'pass' if g['passed'] else '**FAIL**'} |" for g in gates]
    if previous:
        lines += ["", f"Compared with release `{previous.get('release_id')}` (run `{previous.get('run_id') or '-'}`): "
                  "see `previous_release/comparison.html`."]
    return "\n".join(lines)


def _comparison(old: dict, new: dict) -> list[dict]:
    """One row per probe and summary figure both runs have: previous, now, now - previous."""
    rows = []
    from .model_card import probe_order

    for p in sorted(set(old.get("probes", {})) | set(new.get("probes", {})), key=probe_order):
        for when in ("before", "after"):
            a, b = old.get("probes", {}).get(p, {}).get(when), new.get("probes", {}).get(p, {}).get(when)
            rows.append({"metric": f"{p} {when}", "previous": a, "now": b,
                         "delta": None if a is None or b is None else float(b) - float(a)})
    for k in ("target_reduction", "neighbour_max_drop"):  # target_after is the target probe's row
        a, b = old.get("summary", {}).get(k), new.get("summary", {}).get(k)
        rows.append({"metric": k, "previous": a, "now": b,
                     "delta": None if a is None or b is None else float(b) - float(a)})
    return rows


def _worse(row: dict) -> bool:
    """Did this figure move the wrong way since the previous release?"""
    d, name = row["delta"], row["metric"]
    if not d:
        return False
    if name in ("neighbour_max_drop",):
        return d > 0
    if name == "target_reduction":
        return d < 0
    if not name.endswith(" after"):
        return False  # before-figures are the base model's
    kept = name.startswith(("neighbour:", "anchor:"))  # concepts that must stay
    return d < 0 if kept else d > 0


def _comparison_html(concept: str, rid: str, rows: list[dict]) -> str:
    def cell(v, fmt=".3f"):
        return "-" if v is None else format(v, fmt)

    body = "".join(
        f"<tr><td>{html.escape(r['metric'])}</td><td>{cell(r['previous'])}</td><td>{cell(r['now'])}</td>"
        f"<td style='color:{'#b00' if _worse(r) else '#000'}'>{cell(r['delta'], '+.3f')}</td></tr>" for r in rows)
    return (f"<html><body style='font-family:sans-serif'><h3>{html.escape(concept)}: this run vs release "
            f"{html.escape(rid)}</h3><table border=1 cellpadding=4 style='border-collapse:collapse'>"
            f"<tr><th>metric</th><th>previous release</th><th>this run</th><th>delta</th></tr>{body}</table>"
            "<p>Presence: the share of images in which the judge sees the concept (before: base model; after: "
            "erased). Red: worse than the previous release (the concept more present, or a neighbour less).</p>"
            "</body></html>")


REVIEW_VIEW = "release-review"  # a saved view of the runs table (experiment tag), in the UI's Views menu


def _review_view(client, experiment_id: str, concepts: list[str]) -> None:
    """The runs table's columns for the review, saved as an MLflow saved view (`mlflow.sharedViewState.*`
    experiment tag; `viewStateShareKey=release-review` in the URL opens it)."""
    keys = ["gates_passed"] + [f"{_key(c)}.{k}" for c in concepts for k in ("target_after", "gates_passed")]
    keys += ["fid_base", "fid_erased", "fid_to_base", "kid_to_base", "clip_score_erased", "generic_drift"]
    columns = ["attributes.`Run Name`", "attributes.`Created`", "attributes.`Duration`"]
    metric_columns = [f"metrics.`{k}`" for k in keys]
    # Wide enough for "<concept>.target_after" (the UI orders metric columns by name).
    state = {"selectedColumns": columns + metric_columns,
             "columnWidths": {c: max(100, 7 * (len(c) - 10)) for c in metric_columns}}
    envelope = {"name": "Release review", "createdAt": 0, "updatedAt": 0, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{REVIEW_VIEW}", json.dumps(envelope))


def _previous_run(client, params: PipelineParams, release_hash: str | None) -> str | None:
    """The parent run of the model version registered for the previous release, if any."""
    if not release_hash:
        return None
    try:
        versions = client.search_model_versions(f"name = '{params.release.registry_name}'")
    except Exception:  # no registered model yet
        return None
    for v in versions:
        if v.tags.get("release_hash") == release_hash and v.run_id:
            return v.run_id
    return None


def _log_losses(client, run_id: str, rows: list[dict]) -> None:
    """The erase stage's per-step losses as the run's `loss` history (MLflow takes 1000 per batch)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric("loss", float(r["loss"]), now, int(r["step"])) for r in rows]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def log_pipeline(params: PipelineParams, metrics: dict, grids_root: Path, train: dict | None,
                 previous_metrics: dict | None, blocklist_sha256: str | None = None, *,
                 losses: list[dict] | None = None, start_time_ms: int | None = None,
                 previous_release: dict | None = None) -> str:
    """Parent run (settings, global metrics, per-concept targets and gates, comparison with the
    previous release) with a nested run per concept (see the module's docstring).

    `grids_root`: the folder the grid paths in metrics.json are relative to (work/evaluate).
    `previous_metrics`: the metrics.json of the release LATEST names, or None; `previous_release`:
    its {"release_id", "release_hash"}. `losses`: the erase stage's losses.json rows
    ({"step", "phase", "concept", "loss"}). `start_time_ms`: when the job began (the parent run's
    start). Returns the parent run id.
    """
    from .release import check_gates

    mlflow = _mlflow(params)
    client = mlflow.MlflowClient()
    exp = mlflow.get_experiment_by_name(params.tracking.experiment)
    tags = {"base_hash": metrics["base_hash"], "model": metrics["model"], "mode": params.erase.mode}
    if blocklist_sha256:
        tags["blocklist_sha256"] = blocklist_sha256
    previous = dict(previous_release or {}) if previous_metrics is not None else None
    if previous is not None:
        previous["run_id"] = _previous_run(client, params, previous.get("release_hash"))
        tags.update({"previous_release": str(previous.get("release_id")), "previous_run_id": previous["run_id"] or "-"})
    gates = check_gates(metrics, params, with_attacks=False)  # the attack stage runs after this, logs its own
    _review_view(client, exp.experiment_id, list(metrics["concepts"]))
    created = client.create_run(exp.experiment_id, start_time=start_time_ms, run_name="pipeline", tags=tags)
    by_concept: dict[str, list[dict]] = {}
    for g in gates:
        by_concept.setdefault(g["concept"], []).append(g)
    losses = losses or []
    with mlflow.start_run(run_id=created.info.run_id) as parent:
        # Recipes are nested per method and kind: the train.json artifact holds what each job ran with.
        settings = _flat("erase.", params.erase.model_dump(mode="json", exclude={"recipes"}))
        settings.update({f"generate.{k}": v for k, v in params.generate.model_dump().items()})
        settings.update({f"release.gates.{kind}.{k}": v for kind, gate in params.release.gates.items()
                         for k, v in gate.model_dump().items() if v is not None})
        settings.update({f"release.quality.{k}": v for k, v in params.release.quality.model_dump().items()
                         if v is not None})
        mlflow.log_params({_key(k): str(v)[:500] for k, v in settings.items()})
        top = _numbers(metrics["global"])
        for concept, m in metrics["concepts"].items():  # columns of the runs table
            c = _key(concept)
            top.update({f"{c}.{k}": v for k, v in _numbers(m["summary"]).items()})
            top.update({f"{c}.gate.{g['gate']}.pass": float(g["passed"]) for g in by_concept.get(concept, [])})
            top[f"{c}.gates_passed"] = float(all(g["passed"] for g in by_concept.get(concept, [])))
        for g in gates:  # the quality gates: on the generic prompts, not on a concept
            if g["kind"] == "quality":
                top.update({f"quality.gate.{g['gate']}.value": g["value"], f"quality.gate.{g['gate']}.pass": float(g["passed"])})
        for ph in metrics["global"].get("phases", []):  # quality after each phase, against the phase number
            mlflow.log_metrics({"quality.phase_fid": ph["fid"], "quality.phase_drift": ph["drift"]}, step=ph["phase"] + 1)
        top["gates_passed"] = float(all(g["passed"] for g in gates))
        mlflow.log_metrics({_key(k): v for k, v in top.items()})
        mlflow.set_tag("mlflow.note.content", _parent_note(metrics, gates, previous))
        if train:
            mlflow.log_dict(train, "train.json")
        concepts = set(metrics["concepts"])
        if [r for r in losses if r.get("concept") not in concepts]:  # joint training: one loss for all
            _log_losses(client, parent.info.run_id, [r for r in losses if r.get("concept") not in concepts])
        comparison = {}
        for concept, m in metrics["concepts"].items():
            with mlflow.start_run(run_name=concept, nested=True) as child:
                comparison[concept] = _log_concept(mlflow, client, child.info.run_id, concept, m,
                                                   by_concept.get(concept, []), grids_root,
                                                   [r for r in losses if r.get("concept") == concept],
                                                   previous_metrics, previous)
        if previous is not None:
            mlflow.log_dict({"previous_release": previous, "previous_release_concepts":
                             sorted(previous_metrics.get("concepts", {})), "per_concept": comparison},
                            "comparison.json")
        return parent.info.run_id


def _log_concept(mlflow, client, run_id, concept, m, gates, grids_root, losses, previous_metrics, previous) -> dict:
    mlflow.log_params({"concept": concept, "kind": m["kind"], "method": m["method"], "anchor": str(m["anchor"]),
                       **{f"gate.{g['gate']}.bound": g["bound"] for g in gates}})
    mlflow.set_tags({f"gate.{g['gate']}": _gate_text(g) for g in gates})
    mlflow.set_tag("gates", "pass" if all(g["passed"] for g in gates) else
                   "FAIL: " + ", ".join(g["gate"] for g in gates if not g["passed"]))
    # "neighbour:Okafor" -> "neighbour_Okafor_before": MLflow metric names take no colon.
    values = {f"{_key(p)}_{when}": float(v[when]) for p, v in m["probes"].items()
              for when in ("before", "after") if v.get(when) is not None}
    values.update(_numbers(m["summary"]))
    for g in gates:
        values.update({f"gate.{g['gate']}.value": g["value"], f"gate.{g['gate']}.pass": float(g["passed"])})
    delta = {}
    old = (previous_metrics or {}).get("concepts", {}).get(concept)
    if old:
        # This run minus the previous release: > 0 on target_after means the concept came back.
        new_s, old_s = m["summary"], old["summary"]
        delta = {f"vs_previous_{k}": float(new_s[k]) - float(old_s[k])
                 for k in ("target_after", "target_reduction", "neighbour_max_drop")
                 if old_s.get(k) is not None and new_s.get(k) is not None}
        values.update(delta)
        rows = _comparison(old, m)
        mlflow.log_dict({"previous_release": previous, "rows": rows}, "previous_release/comparison.json")
        mlflow.log_text(_comparison_html(concept, str(previous.get("release_id")), rows),
                        "previous_release/comparison.html")
        _copy_previous_grid(mlflow, client, previous, concept, m)
    mlflow.log_metrics(values)
    mlflow.set_tag("mlflow.note.content", _gates_note(concept, gates, previous if old else None))
    if losses:
        _log_losses(client, run_id, losses)
    grids = m["grids"]
    for key in ("side_by_side",) if "side_by_side" in grids else ("before", "after"):
        mlflow.log_artifact(str(Path(grids_root) / grids[key]), artifact_path="grids")
    return delta


def _copy_previous_grid(mlflow, client, previous: dict, concept: str, m: dict) -> None:
    """The previous release's side-by-side grid of this concept, from its run, beside this one's."""
    if not previous.get("run_id"):
        return
    try:
        runs = client.search_runs([client.get_run(previous["run_id"]).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{previous['run_id']}'")
    except Exception:  # that run was deleted since: the delta table still compares the metrics
        return
    old = next((r for r in runs if r.info.run_name == concept), None)
    name = Path(m["grids"].get("side_by_side", "")).name
    if old is None or not name:
        return
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(old.info.run_id, f"grids/{name}", tmp)
        except Exception:  # that run logged no such grid (an older version of the pipeline)
            return
        mlflow.log_artifact(path, artifact_path="previous_release")


def _parent_note(metrics: dict, gates: list[dict], previous: dict | None) -> str:
    lines = ["**Erasure pipeline run**: per concept, presence of the concept before -> after erasure, and "
             "the release gates.", "", "| concept | kind | method | target before -> after | gates |",
             "|---|---|---|---|---|"]
    for concept, m in metrics["concepts"].items():
        s, mine = m["summary"], [g for g in gates if g["concept"] == concept]
        result = ", ".join(f"{g['gate']} {_gate_text(g)}" for g in mine) or "-"
        lines.append(f"| {concept} | {m['kind']} | {m['method']} | {s['target_before']:.2f} -> "
                     f"{s['target_after']:.2f} | {result} |")
    if previous is not None:
        lines += ["", f"Previous release: `{previous.get('release_id')}` (run `{previous.get('run_id') or '-'}`); "
                  "each concept's run holds the comparison under `previous_release/`."]
    return "\n".join(lines)


def log_gates(params: PipelineParams, run_id: str, gates: list[dict]) -> None:
    """The release gates on the pipeline's parent run: gates.json, and gates_passed 1/0."""
    mlflow = _mlflow(params)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_dict(gates, "gates.json")
        mlflow.log_metric("gates_passed", float(all(g["passed"] for g in gates)))


def log_attacks(params: PipelineParams, run_id: str, attacks: dict, root: Path) -> None:
    """The attack stage's figures: on the parent run, `<concept>.attack.<attack>.base|erased` per attack
    and `<concept>.attack_max`, attacks.json; on each concept's run, the same metrics and the grid of
    what every attack drew on the erased model (grids/<slug>-attacks.png, beside the before/after grids)."""
    mlflow = _mlflow(params)
    client = mlflow.MlflowClient()
    children = {r.info.run_name: r.info.run_id for r in client.search_runs(
        [client.get_run(run_id).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")}
    parent = {}
    for concept, m in attacks["concepts"].items():
        values = {"attack_max": float(m["attack_max"])}
        for r in m["rows"]:
            for when in ("base", "erased"):
                if r.get(when) is not None:
                    values[f"attack.{_key(r['label'])}.{when}"] = float(r[when])
        parent.update({f"{_key(concept)}.{k}": v for k, v in values.items()})
        child = children.get(concept)
        grid = Path(root) / m["grid"]
        if child:
            with mlflow.start_run(run_id=child, nested=True):
                mlflow.log_metrics(values)
                if grid.is_file():
                    with tempfile.TemporaryDirectory() as tmp:
                        named = Path(tmp) / f"{Path(m['grid']).stem}-attacks.png"
                        named.write_bytes(grid.read_bytes())
                        mlflow.log_artifact(str(named), artifact_path="grids")
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(parent)
        mlflow.log_dict(attacks, "attacks.json")


def _requirements() -> list[str]:
    """Pinned to what built the release: what loading the pyfunc model needs (no inference run)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "diffusers", "torch", "transformers", "safetensors",
                                             "numpy", "pandas")]


def register_release(params: PipelineParams, release_dir: Path, run_id: str | None) -> dict:
    """The release as a pyfunc model in the parent run's artifacts (`model/`: MLmodel, the code, the
    diffusers folder), a model version whose source is `runs:/<run_id>/model`, and the alias moved to
    it. The release's small files go to the run under release/. Returns {"name", "version", "alias"}."""
    mlflow = _mlflow(params)
    client = mlflow.MlflowClient()
    name = params.release.registry_name
    release_dir = Path(release_dir)
    manifest = json.loads((release_dir / "manifest.json").read_text())
    if not run_id:  # evaluate ran untracked: a run of its own holds the model
        exp = mlflow.get_experiment_by_name(params.tracking.experiment)
        run_id = client.create_run(exp.experiment_id, run_name="release").info.run_id
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tag("release_hash", manifest["release_hash"])
        for f in ("MODEL_CARD.md", "manifest.json", "gates.json", "metrics.json"):
            mlflow.log_artifact(str(release_dir / f), artifact_path="release")
        with tempfile.TemporaryDirectory() as tmp:
            # Saved, then logged as the run's artifacts: the model lives inside the run, where the
            # version's `runs:/` source finds it (log_model would put it in a separate logged model).
            code = Path(__file__).with_name("mlflow_model.py")
            mlflow.pyfunc.save_model(Path(tmp) / MODEL_PATH, python_model=str(code),
                                     artifacts={"diffusers": str(release_dir / "model")},
                                     model_config={"steps": params.generate.steps,
                                                   "guidance": params.generate.guidance},
                                     pip_requirements=_requirements())
            mlflow.log_artifacts(str(Path(tmp) / MODEL_PATH), artifact_path=MODEL_PATH)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description="Erased models published by the erasure pipeline")
    version = client.create_model_version(name, source=f"runs:/{run_id}/{MODEL_PATH}", run_id=run_id,
                                          tags={"release_hash": manifest["release_hash"],
                                                "release_id": release_dir.name})
    client.set_registered_model_alias(name, params.release.alias, version.version)
    return {"name": name, "version": str(version.version), "alias": params.release.alias}


def relocate(uri: str, old_root: str | Path) -> int:
    """Point a copied SQLite store at the artifact folder beside it (`mlartifacts/`).

    MLflow writes absolute artifact URIs into the database (experiments, runs, logged models,
    model versions), so a store copied elsewhere still names the original folder. This rewrites
    every URI under `old_root` (the original artifact folder) to the copy's. Returns the rows changed.
    """
    db = sqlite_path(uri)
    if db is None or not db.is_file():
        raise FileNotFoundError(f"{uri}: expected a sqlite:/// tracking URI naming an existing database")
    old = Path(old_root).resolve()
    new = db.resolve().parent / ARTIFACTS
    columns = {"experiments": ["artifact_location"], "runs": ["artifact_uri"], "logged_models": ["artifact_location"],
               "model_versions": ["source", "storage_location"]}
    changed = 0
    with closing(sqlite3.connect(db)) as con, con:  # one transaction, and the file closed after
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, cols in columns.items():
            if table not in tables:
                continue
            for col in cols:
                for before, after in ((old.as_uri(), new.as_uri()), (str(old), str(new))):
                    # Exact prefixes (LIKE would ignore case): the folder itself, or a path inside it.
                    cur = con.execute(f"UPDATE {table} SET {col} = ? || substr({col}, ?) "  # noqa: S608
                                      f"WHERE {col} = ? OR substr({col}, 1, ?) = ?",
                                      (after, len(before) + 1, before, len(before) + 1, before + "/"))
                    changed += cur.rowcount
    return changed
