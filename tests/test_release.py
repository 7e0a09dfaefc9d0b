"""Gates, the release folder (byte-identical rebuilds), atomic publish, MLflow structure, `release show`."""

import json

import pytest
from typer.testing import CliRunner

from erasure.cli import app
from erasure.config import PipelineParams
from erasure.delta import save_delta
from erasure.models import load_pipeline, weights_hash
from erasure.release import check_gates, failures, publish, show


def _metrics(base_hash: str, pip_after: float = 0.05) -> dict:
    def concept(kind, before, after, drop, slug):
        return {"kind": kind, "method": "esd", "anchor": None, "slug": slug,
                "probes": {"target": {"before": before, "after": after, "n": 4, "example_prompt": "x"},
                           "neighbour:A": {"before": 1.0, "after": 1.0 - drop, "n": 4, "example_prompt": "y"}},
                "summary": {"target_before": before, "target_after": after,
                            "target_reduction": (before - after) / before, "paraphrase_after": None,
                            "misspelling_after": None, "neighbour_max_drop": drop, "worst_neighbour": "A"},
                "grids": {"before": f"grids/{slug}-before.png", "after": f"grids/{slug}-after.png"}}

    return {"model": "tiny", "base_hash": base_hash, "images_per_probe": 4,
            "concepts": {"Pip": concept("instance", 1.0, pip_after, 0.02, "pip"),
                         "with a golden frame": concept("implicit", 0.4, 0.1, 0.05, "frame")},
            "global": {"generic_drift": 0.01, "fid_base": 0.5, "fid_erased": 0.6, "n_generic": 8}}


@pytest.fixture
def release_inputs(tiny_pipeline_dir, tmp_path):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    name, p = next(iter(pipe.unet.named_parameters()))
    base_hash = weights_hash(tiny_pipeline_dir)
    delta = tmp_path / "delta.safetensors"
    save_delta(delta, {f"unet.{name}": p.detach() + 0.01}, method="esd", params={}, concepts=[], base_hash=base_hash)
    params = PipelineParams(model=str(tiny_pipeline_dir), release={"gates": {
        "default": {"target_max": 0.1, "neighbour_max_drop": 0.1}, "implicit": {"reduction_min": 0.7}}})
    params.paths.releases = tmp_path / "releases"
    blocklist = {"entries": [{"concept": "Pip", "kind": "instance"}], "sha256": "abc"}
    return params, dict(metrics=_metrics(base_hash), blocklist=blocklist, delta=delta, train={"mode": "sequential"})


def test_gates_name_the_concept_and_the_bound():
    params = PipelineParams(release={"gates": {"default": {"target_max": 0.1, "neighbour_max_drop": 0.1},
                                               "implicit": {"reduction_min": 0.8}}})
    gates = check_gates(_metrics("h", pip_after=0.22), params)
    assert {(g["concept"], g["gate"]) for g in gates} == {("Pip", "target_max"), ("Pip", "neighbour_max_drop"),
                                                          ("with a golden frame", "reduction_min")}
    assert failures(gates) == ["concept 'Pip' (instance) failed target_max: 0.22 > 0.10",
                               "concept 'with a golden frame' (implicit) failed reduction_min: 0.75 < 0.80"]


def test_release_is_reproducible_atomic_and_shown(release_inputs, tmp_path, monkeypatch):
    params, inputs = release_inputs
    gates = check_gates(inputs["metrics"], params)
    rid, folder = publish(params, gates=gates, **inputs)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (params.paths.releases / "LATEST").read_text().strip() == rid == manifest["release_hash"][:12]
    assert {"delta.safetensors", "MODEL_CARD.md", "model/model_index.json", "lineage.json"} <= set(manifest["files"])
    card = (folder / "MODEL_CARD.md").read_text()
    assert "| Pip | instance |" in card and "target_max ✓" in card
    from diffusers import StableDiffusionPipeline

    assert StableDiffusionPipeline.from_pretrained(str(folder / "model")) is not None
    # Built again from the same inputs: the same bytes, the same hash, the same release.
    other = params.model_copy(deep=True)
    other.paths.releases = tmp_path / "again"
    rid2, folder2 = publish(other, gates=gates, **inputs)
    assert rid2 == rid and all((folder / f).read_bytes() == (folder2 / f).read_bytes() for f in manifest["files"])

    # A failure while building leaves no release and LATEST where it was.
    import erasure.delta

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(erasure.delta, "export", broken)
    changed = dict(inputs, metrics=_metrics(inputs["metrics"]["base_hash"], pip_after=0.0))
    with pytest.raises(OSError):
        publish(params, gates=check_gates(changed["metrics"], params), **changed)
    assert sorted(p.name for p in params.paths.releases.iterdir() if not p.name.startswith(".")) == \
        sorted([rid, "LATEST"])
    assert (params.paths.releases / "LATEST").read_text().strip() == rid

    res = CliRunner().invoke(app, ["release", "show", "--releases", str(params.paths.releases), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["path"] == str(folder.resolve()) and info["concepts"]["Pip"]["target_after"] == 0.05
    assert show(params.paths.releases)["release_hash"] == manifest["release_hash"]
    res = CliRunner().invoke(app, ["release", "show", "--releases", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no release yet" in res.output


def test_mlflow_holds_one_parent_and_a_nested_run_per_concept_and_the_alias(release_inputs, tmp_path):
    from mlflow import MlflowClient

    from erasure.tracking import log_pipeline, register_release

    params, inputs = release_inputs
    params.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    evaluate_dir = tmp_path / "evaluate"
    (evaluate_dir / "grids").mkdir(parents=True)
    from PIL import Image

    for slug in ("pip", "frame"):
        for when in ("before", "after"):
            Image.new("RGB", (8, 8)).save(evaluate_dir / "grids" / f"{slug}-{when}.png")
    run_id = log_pipeline(params, inputs["metrics"], evaluate_dir, {"mode": "sequential"}, previous=inputs["metrics"])
    client = MlflowClient(tracking_uri=params.tracking.uri, registry_uri=params.tracking.uri)
    exp = client.get_experiment_by_name(params.tracking.experiment)
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run_id]
    assert len(runs) == 3 and {r.info.run_name for r in children} == {"Pip", "with a golden frame"}
    pip = next(r for r in children if r.info.run_name == "Pip")
    assert pip.data.metrics["target_after"] == 0.05 and pip.data.metrics["vs_previous_target_after"] == 0.0
    assert {a.path for a in client.list_artifacts(pip.info.run_id, "grids")} == {"grids/pip-before.png",
                                                                                 "grids/pip-after.png"}
    _, folder = publish(params, gates=check_gates(inputs["metrics"], params), **inputs)
    reg = register_release(params, folder, run_id)
    v = client.get_model_version_by_alias(params.release.registry_name, params.release.alias)
    assert str(v.version) == reg["version"] and v.run_id == run_id
    assert v.tags["release_hash"] == json.loads((folder / "manifest.json").read_text())["release_hash"]
