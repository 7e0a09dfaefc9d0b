"""MLflow: one parent run with a nested run per concept (targets and gates as columns, gates on each
concept's run, the loss history, the side-by-side grid), the comparison with the previous release,
and the release as a pyfunc model that loads by `models:/<name>@<alias>` from a moved copy of the store."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from erasure.config import PipelineParams

GATES = {"default": {"target_max": 0.1, "neighbour_max_drop": 0.3}}


def _concept(kind, after, slug):
    probes = {"target": {"before": 1.0, "after": after, "n": 4, "example_prompt": "x"},
              "paraphrase": {"before": 0.9, "after": after + 0.1, "n": 4, "example_prompt": "p"},
              "neighbour:Okafor Jr.": {"before": 0.75, "after": 0.5, "n": 4, "example_prompt": "y"}}
    return {"kind": kind, "method": "esd", "anchor": None if kind == "style" else "a dog", "slug": slug,
            "probes": probes,
            "summary": {"target_before": 1.0, "target_after": after, "target_reduction": 1.0 - after,
                        "paraphrase_after": after + 0.1, "misspelling_after": None, "neighbour_max_drop": 0.25,
                        "worst_neighbour": "Okafor Jr."},
            "grids": {"before": f"grids/{slug}-before.png", "after": f"grids/{slug}-after.png",
                      "side_by_side": f"grids/{slug}-side-by-side.png"}}


def _metrics(pip_after=0.05):
    return {"model": "miniworld", "base_hash": "b" * 64, "images_per_probe": 4,
            "concepts": {"Vasquez": _concept("style", 0.0, "vasquez"), "Pip": _concept("instance", pip_after, "pip")},
            "global": {"generic_drift": 0.01, "fid_base": 0.5, "fid_erased": 0.6, "fid_ratio": 1.2, "n_generic": 8,
                       "phases": [{"phase": 0, "concepts": ["Pip"], "fid": 0.6, "drift": 0.01}]}}


def _grids(folder, colour):
    (folder / "grids").mkdir(parents=True, exist_ok=True)
    for slug in ("vasquez", "pip"):
        for when in ("before", "after", "side-by-side"):
            Image.new("RGB", (8, 8), colour).save(folder / "grids" / f"{slug}-{when}.png")
    return folder


@pytest.fixture
def tracked(tmp_path):
    from mlflow import MlflowClient

    params = PipelineParams(tracking={"uri": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
                                      "experiment": "test-erasure"}, release={"gates": GATES})
    (tmp_path / "store").mkdir()
    client = MlflowClient(tracking_uri=params.tracking.uri, registry_uri=params.tracking.uri)
    return params, _grids(tmp_path / "evaluate", "red"), client


def _release_folder(path, release_hash, model_dir=None):
    """The files register_release reads from a release (the real folder is tested in test_release.py)."""
    path.mkdir(parents=True)
    for name in ("MODEL_CARD.md", "gates.json", "metrics.json"):
        (path / name).write_text("{}")
    (path / "manifest.json").write_text(json.dumps({"files": {}, "release_hash": release_hash}))
    if model_dir is not None:
        shutil.copytree(model_dir, path / "model")
    else:
        (path / "model").mkdir()
        (path / "model" / "model_index.json").write_text("{}")
    return path


def test_runs_carry_targets_gates_losses_grids_and_the_comparison(tracked, tmp_path):
    from erasure.tracking import ARTIFACTS, KIND, KIND_TAG, log_gates, log_pipeline

    params, evaluate_dir, client = tracked
    first = log_pipeline(params, _metrics(pip_after=0.25), evaluate_dir, None, None, start_time_ms=1_000_000)
    exp = client.get_experiment_by_name("test-erasure")
    # The runs table, not the GenAI overview; artifacts beside the database, whatever the working folder.
    assert exp.tags[KIND_TAG] == KIND
    assert exp.artifact_location == (tmp_path / "store" / ARTIFACTS / "test-erasure").as_uri()
    assert client.get_run(first).info.start_time == 1_000_000  # the job's start, recorded by ingest
    # The runs table's columns, as a saved view the UI lists (and review_url opens).
    view = json.loads(exp.tags["mlflow.sharedViewState.release-review"])
    assert view["name"] == "Release review"
    assert {"metrics.`Pip.target_after`", "metrics.`Vasquez.gates_passed`", "metrics.`gates_passed`"} <= set(
        json.loads(view["state"])["selectedColumns"])
    # The previous release is the one registered from the first run.
    client.create_registered_model("miniworld-erased")
    client.create_model_version("miniworld-erased", source=f"runs:/{first}/model", run_id=first,
                                tags={"release_hash": "1" * 64})

    losses = [{"step": s, "phase": 0, "concept": "Pip", "loss": 1.0 / (s + 1)} for s in range(3)]
    losses += [{"step": 0, "phase": 1, "concept": "Vasquez", "loss": 0.5}]
    run_id = log_pipeline(params, _metrics(), _grids(tmp_path / "evaluate2", "blue"), {"mode": "sequential"},
                          _metrics(pip_after=0.25), blocklist_sha256="c" * 64, losses=losses,
                          previous_release={"release_id": "111111111111", "release_hash": "1" * 64})
    assert len(client.search_runs([exp.experiment_id])) == 6
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    assert sorted(r.info.run_name for r in children) == ["Pip", "Vasquez"]

    parent = client.get_run(run_id)
    assert parent.data.tags["blocklist_sha256"] == "c" * 64 and parent.data.tags["base_hash"] == "b" * 64
    assert parent.data.tags["previous_release"] == "111111111111" and parent.data.tags["previous_run_id"] == first
    assert parent.data.params["erase.mode"] == "consolidated" and parent.data.params["release.gates.default.target_max"] == "0.1"
    m = parent.data.metrics  # the runs table's columns: per concept targets and gates
    assert m["generic_drift"] == 0.01 and m["fid_erased"] == 0.6 and m["Pip.target_after"] == 0.05
    assert m["quality.gate.fid_max_ratio.value"] == 1.2 and m["quality.gate.drift_max.pass"] == 1.0
    assert m["Pip.gate.target_max.pass"] == 1.0 and m["Vasquez.gates_passed"] == 1.0 and m["gates_passed"] == 1.0
    assert "| Pip | instance | esd | 1.00 -> 0.05 |" in parent.data.tags["mlflow.note.content"]
    assert {a.path for a in client.list_artifacts(run_id)} >= {"comparison.json", "train.json"}

    pip = next(r for r in children if r.info.run_name == "Pip")
    assert pip.data.params == {"concept": "Pip", "kind": "instance", "method": "esd", "anchor": "a dog",
                               "gate.target_max.bound": "0.1", "gate.neighbour_max_drop.bound": "0.3"}
    assert pip.data.tags["gate.target_max"] == "pass: 0.05 <= 0.10" and pip.data.tags["gates"] == "pass"
    assert "| target_max | 0.050 | <= 0.1 | pass |" in pip.data.tags["mlflow.note.content"]
    m = pip.data.metrics
    assert m["target_before"] == 1.0 and m["target_after"] == 0.05 and m["paraphrase_after"] == pytest.approx(0.15)
    assert m["neighbour_Okafor Jr._before"] == 0.75 and m["neighbour_Okafor Jr._after"] == 0.5
    assert m["gate.target_max.value"] == 0.05 and m["gate.target_max.pass"] == 1.0 and "misspelling_after" not in m
    assert m["vs_previous_target_after"] == pytest.approx(-0.2)
    history = client.get_metric_history(pip.info.run_id, "loss")
    assert sorted((h.step, h.value) for h in history) == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert {a.path for a in client.list_artifacts(pip.info.run_id, "grids")} == {"grids/pip-side-by-side.png"}

    # The comparison: a delta table and the previous release's grid (red) beside this one (blue).
    assert {a.path for a in client.list_artifacts(pip.info.run_id, "previous_release")} == {
        "previous_release/comparison.json", "previous_release/comparison.html", "previous_release/pip-side-by-side.png"}
    old_grid = Image.open(client.download_artifacts(pip.info.run_id, "previous_release/pip-side-by-side.png", str(tmp_path)))
    assert old_grid.getpixel((0, 0)) == (255, 0, 0)
    rows = json.loads(open(client.download_artifacts(pip.info.run_id, "previous_release/comparison.json")).read())["rows"]
    target = next(r for r in rows if r["metric"] == "target after")
    assert target["previous"] == 0.25 and target["now"] == 0.05 and target["delta"] == pytest.approx(-0.2)
    comparison = json.loads(open(client.download_artifacts(run_id, "comparison.json")).read())
    assert comparison["per_concept"]["Pip"]["vs_previous_target_after"] == pytest.approx(-0.2)

    log_gates(params, run_id, [{"concept": "Pip", "gate": "target_max", "passed": False}])
    assert client.get_run(run_id).data.metrics["gates_passed"] == 0.0


def test_a_failed_gate_shows_on_the_concept_run_and_the_parent(tracked):
    from erasure.tracking import log_pipeline

    params, evaluate_dir, client = tracked
    run_id = log_pipeline(params, _metrics(pip_after=0.22), evaluate_dir, None, None)
    exp = client.get_experiment_by_name("test-erasure")
    pip = client.search_runs([exp.experiment_id], filter_string="tags.mlflow.runName = 'Pip'")[0]
    assert pip.data.tags["gate.target_max"] == "FAIL: 0.22 > 0.10" and pip.data.tags["gates"] == "FAIL: target_max"
    assert pip.data.metrics["gate.target_max.pass"] == 0.0
    m = client.get_run(run_id).data.metrics
    assert m["Pip.gate.target_max.pass"] == 0.0 and m["Pip.gates_passed"] == 0.0 and m["gates_passed"] == 0.0


def test_register_release_moves_the_alias_to_a_version_from_the_run(tracked, tmp_path):
    from erasure.tracking import log_pipeline, register_release

    params, evaluate_dir, client = tracked
    run_id = log_pipeline(params, _metrics(), evaluate_dir, None, None)
    first = register_release(params, _release_folder(tmp_path / "r1", "1" * 64), run_id)
    second = register_release(params, _release_folder(tmp_path / "r2", "2" * 64), None)
    assert first["name"] == second["name"] == "miniworld-erased" and second["alias"] == "production"
    assert (first["version"], second["version"]) == ("1", "2")
    v = client.get_model_version_by_alias("miniworld-erased", "production")
    assert str(v.version) == "2" and v.tags["release_hash"] == "2" * 64 and v.tags["release_id"] == "r2"
    assert v.source == f"runs:/{v.run_id}/model" and client.get_run(v.run_id).info.run_name == "release"
    assert client.get_model_version("miniworld-erased", "1").source == f"runs:/{run_id}/model"
    assert {a.path for a in client.list_artifacts(run_id, "release")} == {
        "release/MODEL_CARD.md", "release/manifest.json", "release/gates.json", "release/metrics.json"}
    assert {a.path for a in client.list_artifacts(run_id, "model")} >= {"model/MLmodel", "model/artifacts"}


def test_the_release_loads_by_alias_from_a_moved_copy_of_the_store(tracked, tiny_pipeline_dir, tmp_path, one_thread):
    """Copy mlflow.db and mlartifacts/ elsewhere, move the originals away, relocate the copy: the
    release loads through models:/<name>@<alias> there and draws an image."""
    import mlflow
    import pandas

    from erasure.tracking import ARTIFACTS, log_pipeline, register_release, relocate

    params, evaluate_dir, client = tracked
    run_id = log_pipeline(params, _metrics(), evaluate_dir, None, None)
    register_release(params, _release_folder(tmp_path / "r1", "1" * 64, tiny_pipeline_dir), run_id)
    shutil.copytree(tmp_path / "store", tmp_path / "elsewhere")
    (tmp_path / "store").rename(tmp_path / "gone")  # nothing may still read the original
    shutil.rmtree(tmp_path / "r1")
    uri = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with pytest.raises(Exception) as missing:  # the copy still names the original folder
            mlflow.pyfunc.load_model("models:/miniworld-erased@production")
        assert "MLmodel" in str(missing.value)  # nothing found where the database points
        assert relocate(uri, tmp_path / "store" / ARTIFACTS) > 0
        exp = mlflow.MlflowClient().get_experiment_by_name("test-erasure")
        assert exp.artifact_location == (tmp_path / "elsewhere" / ARTIFACTS / "test-erasure").as_uri()
        model = mlflow.pyfunc.load_model("models:/miniworld-erased@production")
        images = model.predict(pandas.DataFrame({"prompt": ["a red circle", "a red circle"], "seed": [3, 3]}))
        again = model.predict(["a red circle"])
    finally:
        mlflow.set_tracking_uri(params.tracking.uri)
    assert images.dtype == np.uint8 and images.shape[0] == 2 and images.shape[-1] == 3
    assert (images[0] == images[1]).all() and again.shape == images[:1].shape  # one image per (prompt, seed)
    source = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(
        "miniworld-erased", "production").source
    assert source == f"runs:/{run_id}/model"
    with pytest.raises(ValueError, match="expected a 'prompt' column"):
        model.predict(pandas.DataFrame({"text": ["x"]}))


def test_the_side_by_side_grid_shows_each_reading(tmp_path):
    """Per prompt: base and erased image, the judge's reading under each (a sighting after erasure in
    red), the prompt under the pair; and the evaluate stage writes it beside the other grids."""
    from erasure.pipeline.evaluate import _judged, write
    from erasure.sampling import side_by_side

    assert _judged({"head": "instance", "label": "Pip"}) == "'Pip'"
    assert _judged({"head": "copy", "label": "@garden-gate"}) == "a copy of 'garden-gate'"
    assert _judged({"head": "copy", "label": "/data/blocklists/images/lantern.png"}) == "a copy of 'lantern.png'"

    rng = np.random.default_rng(0)
    before, after = (rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8) for _ in range(2))
    prompts = ["a photo of Pip"] * 4

    def red(image):
        a = np.asarray(image).astype(int)
        return int(((a[..., 0] > 150) & (a[..., 1] < 80) & (a[..., 2] < 80)).sum())

    clean = side_by_side(before, after, prompts, {"before": [True] * 4, "after": [False] * 4}, "Pip", "Pip")
    seen = side_by_side(before, after, prompts, {"before": [True] * 4, "after": [True, False, False, False]},
                        "Pip", "Pip")
    assert clean.size == seen.size and clean.width > 8 * 32 * 4  # 4 pairs of 4x images a row, with margins
    assert red(seen) > red(clean)

    params = PipelineParams()
    params.paths.work = tmp_path / "work"
    concept = dict(_concept("instance", 0.25, "pip"), _images={
        "before": before, "after": after, "prompts": prompts, "label": "Pip",
        "readings": {"before": [True] * 4, "after": [True, False, False, False]}})
    metrics = write(params, "h", {"Pip": concept}, _metrics()["global"], track=False)
    written = json.loads((tmp_path / "work" / "evaluate" / "metrics.json").read_text())
    assert "_images" not in written["concepts"]["Pip"] and written == json.loads(json.dumps(metrics))
    for name in ("pip-before.png", "pip-after.png", "pip-side-by-side.png"):
        assert (tmp_path / "work" / "evaluate" / "grids" / name).is_file(), name


def test_the_parent_run_starts_when_this_jobs_ingest_ran(tmp_path):
    """ingest records the job's start in the cache; a record older than the last run logged is an
    earlier job's (DVC skipped an up-to-date ingest), and the run then starts now."""
    from erasure.pipeline.evaluate import JOB_START, _job_start

    params = PipelineParams()
    params.paths.cache = tmp_path
    assert _job_start(params) is None
    (tmp_path / JOB_START).write_text(json.dumps({"start_ms": 2_000}))
    assert _job_start(params) == 2_000
    (tmp_path / "mlflow-run.json").write_text(json.dumps({"run_id": "r", "logged_ms": 1_000}))
    assert _job_start(params) == 2_000
    (tmp_path / "mlflow-run.json").write_text(json.dumps({"run_id": "r", "logged_ms": 3_000}))
    assert _job_start(params) is None


def test_evaluate_logs_its_gates_when_attack_max_is_bound(tmp_path):
    """The evaluation is logged before the attack stage runs: a bound attack_max is not its to check
    (it used to raise "no figures for it", stopping the flow whenever attack_max was bound)."""
    from mlflow import MlflowClient

    from erasure.tracking import log_pipeline

    gates = {k: dict(v) | {"attack_max": 0.1} for k, v in GATES.items()}
    params = PipelineParams(tracking={"uri": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
                                      "experiment": "test-erasure"}, release={"gates": gates})
    (tmp_path / "store").mkdir()
    run_id = log_pipeline(params, _metrics(), _grids(tmp_path / "evaluate", "red"), None, None)
    run = MlflowClient(tracking_uri=params.tracking.uri).get_run(run_id)
    assert "gates_passed" in run.data.metrics
