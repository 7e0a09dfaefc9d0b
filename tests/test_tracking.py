"""MLflow: one parent run with a nested run per concept (metrics, grids), the comparison with the
previous release, the gates, and the registry version the alias points to."""

import json

import pytest
from PIL import Image

from erasure.config import PipelineParams


def _concept(kind, after, slug):
    probes = {"target": {"before": 1.0, "after": after, "n": 4, "example_prompt": "x"},
              "paraphrase": {"before": 0.9, "after": after + 0.1, "n": 4, "example_prompt": "p"},
              "neighbour:Okafor Jr.": {"before": 0.75, "after": 0.5, "n": 4, "example_prompt": "y"}}
    return {"kind": kind, "method": "esd", "anchor": None if kind == "style" else "a dog", "slug": slug,
            "probes": probes,
            "summary": {"target_before": 1.0, "target_after": after, "target_reduction": 1.0 - after,
                        "paraphrase_after": after + 0.1, "misspelling_after": None, "neighbour_max_drop": 0.25,
                        "worst_neighbour": "Okafor Jr."},
            "grids": {"before": f"grids/{slug}-before.png", "after": f"grids/{slug}-after.png"}}


def _metrics(pip_after=0.05):
    return {"model": "miniworld", "base_hash": "b" * 64, "images_per_probe": 4,
            "concepts": {"Vasquez": _concept("style", 0.0, "vasquez"), "Pip": _concept("instance", pip_after, "pip")},
            "global": {"generic_drift": 0.01, "fid_base": 0.5, "fid_erased": 0.6, "n_generic": 8}}


@pytest.fixture
def tracked(tmp_path):
    from mlflow import MlflowClient

    params = PipelineParams(tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "test-erasure"})
    evaluate_dir = tmp_path / "evaluate"
    (evaluate_dir / "grids").mkdir(parents=True)
    for slug in ("vasquez", "pip"):
        for when in ("before", "after"):
            Image.new("RGB", (8, 8)).save(evaluate_dir / "grids" / f"{slug}-{when}.png")
    client = MlflowClient(tracking_uri=params.tracking.uri, registry_uri=params.tracking.uri)
    return params, evaluate_dir, client


def _release_folder(path, release_hash):
    """The files register_release reads from a release (the real folder is tested in test_release.py)."""
    path.mkdir(parents=True)
    for name in ("MODEL_CARD.md", "gates.json", "metrics.json"):
        (path / name).write_text("{}")
    (path / "manifest.json").write_text(json.dumps({"files": {}, "release_hash": release_hash}))
    return path


def test_one_parent_run_and_a_nested_run_per_concept(tracked):
    from erasure.tracking import log_gates, log_pipeline

    params, evaluate_dir, client = tracked
    previous = _metrics(pip_after=0.25)
    run_id = log_pipeline(params, _metrics(), evaluate_dir, {"mode": "sequential"}, previous,
                          blocklist_sha256="c" * 64)
    exp = client.get_experiment_by_name("test-erasure")
    assert len(client.search_runs([exp.experiment_id])) == 3
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    assert sorted(r.info.run_name for r in children) == ["Pip", "Vasquez"]

    parent = client.get_run(run_id)
    assert parent.data.tags["blocklist_sha256"] == "c" * 64 and parent.data.tags["base_hash"] == "b" * 64
    assert parent.data.tags["mode"] == "sequential" and parent.data.params["erase.mode"] == "sequential"
    assert parent.data.metrics["generic_drift"] == 0.01 and parent.data.metrics["fid_erased"] == 0.6
    assert {a.path for a in client.list_artifacts(run_id)} >= {"comparison.json", "train.json"}

    pip = next(r for r in children if r.info.run_name == "Pip")
    assert pip.data.params == {"concept": "Pip", "kind": "instance", "method": "esd", "anchor": "a dog"}
    m = pip.data.metrics
    assert m["target_before"] == 1.0 and m["target_after"] == 0.05 and m["paraphrase_after"] == pytest.approx(0.15)
    assert m["neighbour_Okafor Jr._before"] == 0.75 and m["neighbour_Okafor Jr._after"] == 0.5
    assert m["neighbour_max_drop"] == 0.25 and "misspelling_after" not in m
    assert m["vs_previous_target_after"] == pytest.approx(-0.2)
    assert {a.path for a in client.list_artifacts(pip.info.run_id, "grids")} == {"grids/pip-before.png",
                                                                                 "grids/pip-after.png"}
    comparison = json.loads(open(client.download_artifacts(run_id, "comparison.json")).read())
    assert comparison["per_concept"]["Pip"]["vs_previous_target_after"] == pytest.approx(-0.2)

    log_gates(params, run_id, [{"concept": "Pip", "gate": "target_max", "passed": False}])
    assert client.get_run(run_id).data.metrics["gates_passed"] == 0.0


def test_register_release_moves_the_alias_to_the_new_version(tracked, tmp_path):
    from erasure.tracking import log_pipeline, register_release

    params, evaluate_dir, client = tracked
    run_id = log_pipeline(params, _metrics(), evaluate_dir, None, None)
    first = register_release(params, _release_folder(tmp_path / "r1", "1" * 64), run_id)
    second = register_release(params, _release_folder(tmp_path / "r2", "2" * 64), run_id)
    assert first["name"] == second["name"] == "miniworld-erased" and second["alias"] == "production"
    assert (first["version"], second["version"]) == ("1", "2")
    v = client.get_model_version_by_alias("miniworld-erased", "production")
    assert str(v.version) == "2" and v.run_id == run_id and v.tags["release_hash"] == "2" * 64
    assert v.source == (tmp_path / "r2").resolve().as_uri()
    assert {a.path for a in client.list_artifacts(run_id, "release")} == {
        "release/MODEL_CARD.md", "release/manifest.json", "release/gates.json", "release/metrics.json"}
