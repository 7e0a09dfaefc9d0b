"""Gates, the release folder (byte-identical rebuilds, manifest), atomic publish, LATEST, `release show`,
and the release stage's entry point (exit 0 / 1 / 2)."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from erasure.cli import app
from erasure.config import PipelineParams
from erasure.delta import save_delta
from erasure.models import load_pipeline, weights_hash
from erasure.release import check_gates, failures, publish, show

ROOT = Path(__file__).resolve().parents[1]
GATES = {"default": {"target_max": 0.1, "neighbour_max_drop": 0.1}, "implicit": {"reduction_min": 0.7}}


def _concept(kind, before, after, drop, slug, neighbours=True):
    probes = {"target": {"before": before, "after": after, "n": 4, "example_prompt": "x"}}
    if neighbours:
        probes["neighbour:A"] = {"before": 1.0, "after": 1.0 - drop, "n": 4, "example_prompt": "y"}
    return {"kind": kind, "method": "esd", "anchor": None, "slug": slug, "probes": probes,
            "summary": {"target_before": before, "target_after": after,
                        "target_reduction": (before - after) / before, "paraphrase_after": None,
                        "misspelling_after": None, "neighbour_max_drop": drop if neighbours else None,
                        "worst_neighbour": "A" if neighbours else None},
            "grids": {"before": f"grids/{slug}-before.png", "after": f"grids/{slug}-after.png"}}


def _metrics(base_hash: str, pip_after: float = 0.05) -> dict:
    return {"model": "tiny", "base_hash": base_hash, "images_per_probe": 4,
            "concepts": {"Pip": _concept("instance", 1.0, pip_after, 0.02, "pip"),
                         "with a golden frame": _concept("implicit", 0.4, 0.1, 0.05, "frame")},
            "global": {"generic_drift": 0.01, "fid_base": 0.5, "fid_erased": 0.6, "fid_ratio": 1.2, "n_generic": 8,
                       "phases": [{"phase": 0, "concepts": ["Pip"], "fid": 0.55, "drift": 0.005},
                                  {"phase": 1, "concepts": ["with a golden frame"], "fid": 0.6, "drift": 0.01}],
                       "costliest_phase": {"phase": 0, "concepts": ["Pip"], "fid_rise": 0.05}}}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def release_inputs(tiny_pipeline_dir, tmp_path):
    """A real delta (one changed UNet tensor) on the tiny pipeline, and the other inputs of a release."""
    pipe = load_pipeline(str(tiny_pipeline_dir))
    name, p = next(iter(pipe.unet.named_parameters()))
    base_hash = weights_hash(tiny_pipeline_dir)
    delta = tmp_path / "delta.safetensors"
    save_delta(delta, {f"unet.{name}": p.detach() + 0.01}, method="esd", params={}, concepts=[], base_hash=base_hash)
    params = PipelineParams(model=str(tiny_pipeline_dir), release={"gates": GATES, "quality": {"fid_max_ratio": None}})
    params.paths.releases = tmp_path / "releases"
    blocklist = {"entries": [{"concept": "Pip", "kind": "instance"}], "sha256": "abc"}
    return params, dict(metrics=_metrics(base_hash), blocklist=blocklist, delta=delta, train={"mode": "sequential"})


def test_gates_name_the_concept_and_the_bound():
    params = PipelineParams(release={"gates": {"default": {"target_max": 0.1, "neighbour_max_drop": 0.1},
                                               "implicit": {"reduction_min": 0.8}}})
    gates = check_gates(_metrics("h", pip_after=0.22), params)
    assert {(g["concept"], g["gate"]) for g in gates} == {("Pip", "target_max"), ("Pip", "neighbour_max_drop"),
                                                          ("with a golden frame", "reduction_min"),
                                                          ("generic prompts", "fid_max_ratio"),
                                                          ("generic prompts", "drift_max")}
    assert failures(gates) == ["concept 'Pip' (instance) failed target_max: 0.22 > 0.10",
                               "concept 'with a golden frame' (implicit) failed reduction_min: 0.75 < 0.80"]
    pip = {g["gate"]: g for g in gates if g["concept"] == "Pip"}
    assert pip["target_max"] == {"concept": "Pip", "kind": "instance", "gate": "target_max", "value": 0.22,
                                 "bound": 0.1, "passed": False}
    assert pip["neighbour_max_drop"]["passed"] and pip["neighbour_max_drop"]["value"] == 0.02


def test_the_quality_gate_refuses_a_release_that_draws_everything_else_worse_and_names_the_phase():
    from erasure.release import require_every_gate

    metrics = _metrics("h")
    g = metrics["global"]
    g.update(fid_erased=1.5, fid_ratio=3.0, generic_drift=0.2)
    g["phases"][1]["fid"] = 1.5
    g["costliest_phase"] = {"phase": 1, "concepts": ["with a golden frame"], "fid_rise": 0.95}
    params = PipelineParams()  # the shipped bounds: FID ratio 2.0, drift 0.15
    gates = check_gates(metrics, params)
    quality = {x["gate"]: x for x in gates if x["kind"] == "quality"}
    assert not quality["fid_max_ratio"]["passed"] and not quality["drift_max"]["passed"]
    assert failures(gates) == [
        "quality on the generic prompts failed fid_max_ratio: 3.00 > 2.00; the phase that cost the most: 2 "
        "('with a golden frame', FID +0.95)",
        "quality on the generic prompts failed drift_max: 0.20 > 0.15; the phase that cost the most: 2 "
        "('with a golden frame', FID +0.95)"]
    with pytest.raises(ValueError, match="not passed: 'generic prompts' drift_max, 'generic prompts' fid_max_ratio"):
        require_every_gate(metrics, gates, params)
    # dropping the quality records does not get a release past the check either
    with pytest.raises(ValueError, match="a release needs every gate passed"):
        require_every_gate(metrics, [x for x in gates if x["kind"] != "quality"], params)
    # a bound nobody measured is an error, not a pass
    del g["fid_ratio"]
    with pytest.raises(ValueError, match="release.quality.fid_max_ratio: the evaluation has no fid_ratio"):
        check_gates(metrics, params)
    # within the bounds it passes, and null bounds are not gated
    g.update(fid_ratio=1.9, generic_drift=0.1)
    assert all(x["passed"] for x in check_gates(metrics, params) if x["kind"] == "quality")
    off = PipelineParams(release={"quality": {"fid_max_ratio": None, "drift_max": None}})
    assert [x for x in check_gates(metrics, off) if x["kind"] == "quality"] == []


def test_quality_ratio_is_refused_in_params_off_the_miniworld(tmp_path):
    from erasure.config import ParamsError, load_params

    path = tmp_path / "p.yaml"
    path.write_text("model: some/sd-model\n")
    with pytest.raises(ParamsError, match="release.quality.fid_max_ratio: needs the world's true renders"):
        load_params(path)
    path.write_text("model: some/sd-model\nrelease: {quality: {fid_max_ratio: null, fid_to_base_max: 5.0}}\n")
    assert load_params(path).release.quality.fid_to_base_max == 5.0


def test_gate_edges_no_neighbours_float_noise_and_close_calls():
    metrics = _metrics("h")
    metrics["concepts"]["Lone"] = _concept("style", 1.0, 0.0, 0.0, "lone", neighbours=False)
    # (0.4 - 0.1) / 0.4 is 0.7499999...: a 0.75 bound must still pass.
    params = PipelineParams(release={"gates": {"default": {"neighbour_max_drop": 0.05, "target_max": 0.0499},
                                               "implicit": {"reduction_min": 0.75}}})
    gates = check_gates(metrics, params)
    lone = next(g for g in gates if g["concept"] == "Lone" and g["gate"] == "neighbour_max_drop")
    assert lone["value"] == 0 and lone["passed"]
    assert next(g for g in gates if g["gate"] == "reduction_min")["passed"]
    # Two decimals would print "0.05 > 0.05": the line shows as many as tell them apart.
    assert failures(gates) == ["concept 'Pip' (instance) failed target_max: 0.0500 > 0.0499"]


def test_release_is_reproducible_with_a_true_manifest(release_inputs, tmp_path):
    params, inputs = release_inputs
    # A run id in metrics.json (the pipeline's MLflow run) must not reach the release.
    inputs["metrics"]["mlflow"] = {"run_id": "r123", "experiment": "erasure", "uri": f"sqlite:///{tmp_path}/m.db"}
    gates = check_gates(inputs["metrics"], params)
    rid, folder = publish(params, gates=gates, **inputs)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (params.paths.releases / "LATEST").read_text().strip() == rid == manifest["release_hash"][:12]
    assert folder == params.paths.releases / rid

    # The manifest lists every file but itself, each with its true sha256, and hashes that list.
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == list(manifest["files"]) == [f for f in on_disk if f != "manifest.json"]
    assert all(_sha256(folder / f) == h for f, h in manifest["files"].items())
    canonical = json.dumps(manifest["files"], sort_keys=True).encode()
    assert manifest["release_hash"] == hashlib.sha256(canonical).hexdigest()
    assert {"delta.safetensors", "MODEL_CARD.md", "model/model_index.json", "lineage.json", "gates.json",
            "metrics.json", "blocklist.json"} <= set(manifest["files"])
    assert (folder / "delta.safetensors").read_bytes() == inputs["delta"].read_bytes()

    lineage = json.loads((folder / "lineage.json").read_text())
    assert lineage["base_hash"] == inputs["metrics"]["base_hash"] and lineage["blocklist_sha256"] == "abc"
    assert "paths" not in lineage["params"] and lineage["params"]["release"]["gates"]["implicit"]["reduction_min"] == 0.7
    assert lineage["code_version"] == "unknown" or len(lineage["code_version"].removesuffix("-dirty")) == 40
    assert "mlflow" not in json.loads((folder / "metrics.json").read_text())
    for f in manifest["files"]:  # no absolute paths, run ids or temporary folder names in any text file
        if f.endswith((".json", ".md")):
            text = (folder / f).read_text()
            assert str(tmp_path) not in text and "r123" not in text and ".tmp-" not in text, f

    card = (folder / "MODEL_CARD.md").read_text()
    assert "| Pip | instance | esd | target | x | 1.00 | 0.05 |" in card and "| Pip | target_max | 0.050 |" in card
    assert inputs["metrics"]["base_hash"] in card and "sha256 `abc`" in card
    from diffusers import StableDiffusionPipeline

    assert StableDiffusionPipeline.from_pretrained(str(folder / "model")) is not None

    # Built again elsewhere from the same inputs: the same bytes, the same hash, the same id.
    other = params.model_copy(deep=True)
    other.paths.releases = tmp_path / "again"
    rid2, folder2 = publish(other, gates=gates, **inputs)
    assert rid2 == rid and all((folder / f).read_bytes() == (folder2 / f).read_bytes() for f in on_disk)


def test_publish_is_atomic_repoints_latest_and_is_shown(release_inputs, tmp_path, monkeypatch):
    params, inputs = release_inputs
    releases = params.paths.releases
    rid_a, folder_a = publish(params, gates=check_gates(inputs["metrics"], params), **inputs)
    changed = dict(inputs, metrics=_metrics(inputs["metrics"]["base_hash"], pip_after=0.0))
    rid_b, _ = publish(params, gates=check_gates(changed["metrics"], params), **changed)
    assert rid_b != rid_a and (releases / "LATEST").read_text().strip() == rid_b
    # The first release again: the folder already there is kept, LATEST moves back to it.
    before = {f: f.stat().st_mtime_ns for f in folder_a.rglob("*")}
    assert publish(params, gates=check_gates(inputs["metrics"], params), **inputs) == (rid_a, folder_a)
    assert (releases / "LATEST").read_text().strip() == rid_a
    assert {f: f.stat().st_mtime_ns for f in folder_a.rglob("*")} == before
    assert sorted(p.name for p in releases.iterdir()) == sorted([rid_a, rid_b, "LATEST"])

    # A failure while building leaves nothing behind (not even hidden temporaries) and LATEST where it was.
    import erasure.delta

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(erasure.delta, "export", broken)
    third = dict(inputs, metrics=_metrics(inputs["metrics"]["base_hash"], pip_after=0.01))
    with pytest.raises(OSError, match="disk full"):
        publish(params, gates=check_gates(third["metrics"], params), **third)
    assert sorted(p.name for p in releases.iterdir()) == sorted([rid_a, rid_b, "LATEST"])
    assert (releases / "LATEST").read_text().strip() == rid_a

    res = CliRunner().invoke(app, ["release", "show", "--releases", str(releases), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["path"] == str(folder_a.resolve()) and info["release_id"] == rid_a
    assert info["concepts"]["Pip"]["target_after"] == 0.05 and info["concepts"]["Pip"]["kind"] == "instance"
    assert {(g["concept"], g["gate"], g["passed"]) for g in info["gates"]} >= {("Pip", "target_max", True)}
    assert info["global"]["n_generic"] == 8 and info == show(releases)
    assert info["release_hash"] == json.loads((folder_a / "manifest.json").read_text())["release_hash"]
    res = CliRunner().invoke(app, ["release", "show", "--releases", str(releases)])
    assert res.exit_code == 0 and rid_a in res.output and "Pip" in res.output


def test_publish_removes_a_killed_publishs_staging_but_never_a_live_ones(release_inputs):
    from erasure.io import owner_tag

    params, inputs = release_inputs
    releases = params.paths.releases
    host = owner_tag().rsplit("-", 1)[0]
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid now names no process: what a killed run leaves
    stale = [releases / f".staging-{host}-{proc.pid}-0123456789ab",
             releases / f"..staging-{host}-{proc.pid}-ba9876543210.tmp-{host}-{proc.pid}-x1y2z3"]
    live = releases / f".staging-{owner_tag()}-aaaaaaaaaaaa"  # a concurrent publish in this process
    for d in (*stale, live):
        d.mkdir(parents=True)
        (d / "MODEL_CARD.md").write_text("half")
    rid, folder = publish(params, gates=check_gates(inputs["metrics"], params), **inputs)
    assert sorted(p.name for p in releases.iterdir()) == sorted([rid, "LATEST", live.name])
    assert (live / "MODEL_CARD.md").read_text() == "half" and (folder / "manifest.json").is_file()


def test_release_show_without_a_release_exits_2(tmp_path):
    res = CliRunner().invoke(app, ["release", "show", "--releases", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no release yet" in res.output
    (tmp_path / "LATEST").write_text("0123456789ab\n")  # names a release that is not there
    res = CliRunner().invoke(app, ["release", "show", "--releases", str(tmp_path), "--json"])
    assert res.exit_code == 2 and "0123456789ab" in res.output


def _work(tmp_path: Path, metrics: dict, delta: Path | None, gates: dict, model: str = "miniworld") -> Path:
    """The files earlier stages leave in work/, and a params.yaml naming them; returns the params path."""
    work = tmp_path / "work"
    for stage in ("evaluate", "erase", "ingest"):
        (work / stage).mkdir(parents=True, exist_ok=True)
    (work / "evaluate" / "metrics.json").write_text(json.dumps(metrics))
    (work / "erase" / "train.json").write_text(json.dumps({"mode": "sequential", "history": []}))
    if delta is not None:
        (work / "erase" / "delta.safetensors").write_bytes(delta.read_bytes())
    (work / "ingest" / "blocklist.json").write_text(json.dumps({"entries": [{"concept": "Pip"}], "sha256": "abc"}))
    params = {"model": model, "paths": {"work": str(work), "releases": str(tmp_path / "releases"),
                                        "cache": str(tmp_path / "cache")},
              "release": {"gates": gates, **({} if model == "miniworld" else {"quality": {"fid_max_ratio": None}})},
              "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "params.yaml"


def _stage(params_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "stages" / "release.py"), "--params", str(params_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_stage_entry_exits_1_on_a_failed_gate_and_2_on_bad_input(tmp_path):
    params_path = _work(tmp_path, _metrics("h", pip_after=0.22), None, GATES)
    (tmp_path / "work" / "erase" / "delta.safetensors").write_bytes(b"not read: no gate passes")
    res = _stage(params_path)
    assert res.returncode == 1, res.stderr
    # The failed gate as a table (tests/test_console.py checks its columns): concept, gate, value, bound.
    assert res.stderr.startswith("release refused: 1 gate failed")
    assert re.search(r"^Pip +target_max +0\.22 +0\.10 +- +unknown", res.stderr, re.M), res.stderr
    report = json.loads((tmp_path / "work" / "release" / "report.json").read_text())
    assert report["passed"] is False and report["failures"] == ["concept 'Pip' (instance) failed target_max: "
                                                                "0.22 > 0.10"]
    assert [(r["concept"], r["gate"], r["value"], r["bound"]) for r in report["failed"]] == [("Pip", "target_max", 0.22,
                                                                                            0.1)]
    assert "release_id" not in report and not (tmp_path / "releases").exists()

    (tmp_path / "work" / "erase" / "delta.safetensors").unlink()
    res = _stage(params_path)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "delta.safetensors: missing" in res.stderr
    metrics = _metrics("h")
    del metrics["concepts"]["Pip"]["summary"]["target_after"]
    (tmp_path / "work" / "evaluate" / "metrics.json").write_text(json.dumps(metrics))
    res = _stage(params_path)
    assert res.returncode == 2 and "concept 'Pip' has no summary.target_after" in res.stderr
    (tmp_path / "work" / "evaluate" / "metrics.json").unlink()
    res = _stage(params_path)
    assert res.returncode == 2 and "metrics.json: missing; run the 'evaluate' stage first" in res.stderr


def test_stage_publishes_registers_and_logs_the_gates(release_inputs, tmp_path):
    """Gates pass: a release, the report naming it, a model version under the alias, and the gates
    on the parent run that metrics.json names."""
    from mlflow import MlflowClient

    from erasure.config import load_params
    from erasure.pipeline import release as stage

    params, inputs = release_inputs
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    parent = client.create_run(client.create_experiment("erasure")).info.run_id
    metrics = dict(inputs["metrics"], mlflow={"run_id": parent, "experiment": "erasure", "uri": uri})
    params_path = _work(tmp_path, metrics, inputs["delta"], GATES, model=params.model)
    report = stage.run(load_params(params_path))

    assert report["passed"] and report["failures"] == []
    folder = Path(report["path"])
    assert folder.parent == tmp_path / "releases" and (tmp_path / "releases" / "LATEST").read_text().strip() == \
        report["release_id"] == folder.name
    written = json.loads((tmp_path / "work" / "release" / "report.json").read_text())
    assert written["release_hash"] == report["release_hash"] == json.loads((folder / "manifest.json").read_text())[
        "release_hash"]
    v = client.get_model_version_by_alias("miniworld-erased", "production")
    assert report["registry"] == {"name": "miniworld-erased", "version": str(v.version), "alias": "production"}
    assert v.run_id == parent and v.tags["release_hash"] == report["release_hash"]
    run = client.get_run(parent)
    assert run.data.metrics["gates_passed"] == 1.0 and run.data.tags["release_hash"] == report["release_hash"]
    assert {a.path for a in client.list_artifacts(parent, "release")} >= {"release/MODEL_CARD.md",
                                                                         "release/manifest.json"}


def test_the_release_stage_tracks_only_the_mlflow_run_that_logged_these_metrics(tmp_path):
    """A metrics.json restored by `dvc checkout` must not be filed under the last evaluate's run."""
    from erasure.pipeline.release import _parent_run

    params = PipelineParams()
    params.paths.cache = tmp_path
    metrics_path = tmp_path / "metrics.json"
    metrics_path.write_text('{"concepts": {}}')
    assert _parent_run(params, {}, metrics_path) is None  # evaluate ran untracked
    run = {"run_id": "r1", "metrics_sha256": _sha256(metrics_path)}
    (tmp_path / "mlflow-run.json").write_text(json.dumps(run))
    assert _parent_run(params, {}, metrics_path) == "r1"
    metrics_path.write_text('{"concepts": {"other": {}}}')
    assert _parent_run(params, {}, metrics_path) is None


def test_a_concept_whose_kind_has_no_gate_is_never_released(release_inputs):
    """Validation requires a gate for every kind; a params object changed after it cannot slip through."""
    from erasure.config import Gate

    params, inputs = release_inputs
    params.release.gates = {"implicit": Gate(reduction_min=0.7)}  # nothing for Pip's kind, no default
    with pytest.raises(ValueError, match=r"concept 'Pip' \(instance\): release.gates has no gate for its kind"):
        check_gates(inputs["metrics"], params)
    made_up = [{"concept": "with a golden frame", "kind": "implicit", "gate": "reduction_min", "value": 0.75,
                "bound": 0.7, "passed": True}]
    with pytest.raises(ValueError, match="no gate for its kind"):
        publish(params, gates=made_up, **inputs)
    assert not params.paths.releases.exists()


def test_publish_refuses_fewer_gate_records_than_concepts_times_their_gates(release_inputs):
    params, inputs = release_inputs
    gates = check_gates(inputs["metrics"], params)
    assert len(gates) == 4  # Pip: target_max and neighbour_max_drop; the frame: reduction_min; drift_max
    for short in (gates[:-1], [], [dict(gates[0], passed=False)] + gates[1:], gates + [gates[0]]):
        with pytest.raises(ValueError, match="a release needs every gate passed"):
            publish(params, gates=short, **inputs)
    with pytest.raises(ValueError, match="no concepts were evaluated"):
        publish(params, gates=[], **dict(inputs, metrics={**inputs["metrics"], "concepts": {}}))
    assert not params.paths.releases.exists()


def test_a_params_file_without_a_release_section_is_gated_as_the_shipped_one(tmp_path):
    """It used to publish with "gates": [] (Vasquez at 1.00 after erasure passed)."""
    from erasure.config import load_params
    from erasure.pipeline import release as stage

    params_path = _work(tmp_path, _metrics("h", pip_after=1.0), None, GATES)
    raw = yaml.safe_load(params_path.read_text())
    del raw["release"]
    params_path.write_text(yaml.safe_dump(raw))
    (tmp_path / "work" / "erase" / "delta.safetensors").write_bytes(b"")
    report = stage.run(load_params(params_path), track=False)
    assert not report["passed"] and "concept 'Pip' (instance) failed target_max: 1.00 > 0.10" in report["failures"]
    assert {(g["concept"], g["gate"]) for g in report["gates"]} == {
        ("Pip", "target_max"), ("Pip", "neighbour_max_drop"),
        ("with a golden frame", "reduction_min"), ("with a golden frame", "neighbour_max_drop"),
        ("generic prompts", "fid_max_ratio"), ("generic prompts", "drift_max")}
    assert not (tmp_path / "releases").exists()
