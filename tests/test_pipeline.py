"""The pipeline's stages end to end on the miniworld, at toy sizes: a release, an added concept
that redoes only its own work, and a killed flow that resumes to the same release hash."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from erasure.config import load_params

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def tiny_params(tmp: Path, blocklist: Path, steps: int = 3, **gates) -> Path:
    """params.yaml at toy sizes (a few images and steps per concept), everything written under tmp."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["paths"] = {"blocklist": str(blocklist), "work": str(tmp / "work"), "releases": str(tmp / "releases"),
                  "cache": str(tmp / "cache")}
    p["generate"].update(images_per_probe=4, generic_images=8)
    for key, r in p["erase"]["recipes"].items():
        r.update(steps=steps, pool_size=8)
        o = r["options"]
        o.update({k: 4 for k in ("context_prompts", "anchor_images") if k in o})
        o.update({"ddim_steps": 4} if key.startswith("esd") else {"anchor_steps": 4})
    p["erase"]["checkpoint_every"] = 2
    # Toy training erases little: gates wide open, so the release path itself is what is tested.
    p["release"]["gates"] = {"default": {"target_max": 1.0, "neighbour_max_drop": 1.0, **gates}}
    p["tracking"]["uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def _blocklist(tmp: Path, extra: list[dict] = ()) -> Path:
    data = yaml.safe_load((ROOT / "blocklists" / "default.yaml").read_text())
    for e in data["concepts"]:  # reference images relative to the copied file
        e["reference_images"] = [str((ROOT / "blocklists" / r).resolve()) for r in e.get("reference_images", [])]
        if not e["reference_images"]:
            del e["reference_images"]
    data["concepts"] += list(extra)
    path = tmp / "blocklist.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run_stages(params_path: Path) -> dict:
    from erasure.pipeline import anchors, erase, evaluate, generate, ingest, release

    params = load_params(params_path)
    out = {"ingest": ingest.run(params), "anchors": anchors.run(params), "generate": generate.run(params),
           "erase": erase.run(params, progress=False)}
    out["evaluate"] = evaluate.run(params)
    out["release"] = release.run(params)
    return out


def test_stages_release_then_an_added_concept_redoes_only_its_own_work(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    params_path = tiny_params(tmp_path, _blocklist(tmp_path))
    first = _run_stages(params_path)
    assert first["release"]["passed"] and Path(first["release"]["path"]).is_dir()
    metrics = first["evaluate"]
    assert set(metrics["concepts"]) == {"Vasquez", "Pip", "with a golden frame", "the midnight lantern poster"}
    assert first["erase"]["steps_run"] == 4 * 3 and first["erase"]["phases_from_cache"] == 0

    params_path = tiny_params(tmp_path, _blocklist(tmp_path, [{"concept": "Bobo", "kind": "instance"}]))
    second = _run_stages(params_path)
    assert second["ingest"]["added"] == ["Bobo"]
    assert second["erase"]["phases_from_cache"] == 4 and second["erase"]["steps_run"] == 3  # only Bobo trained
    drawn = second["generate"]["images_drawn"]
    bobo = json.loads((tmp_path / "work" / "generate" / "bobo" / "probes.json").read_text())
    bobo_images = sum(len(p["prompts"]) for p in bobo["probes"])
    # Bobo's probes, plus the few generic prompts that replace ones naming it; nothing else is redrawn.
    assert bobo_images <= drawn <= bobo_images + 8
    assert json.loads((tmp_path / "work" / "anchors" / "anchors.json").read_text())["anchors"]["Bobo"]["anchor"] \
        == "square"


def _flow(params_path: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_HOME": str(params_path.parent / "prefect")}
    return subprocess.Popen([sys.executable, str(ROOT / "flows" / "release_flow.py"), "--params", str(params_path)],
                            cwd=ROOT, env=env, **kw)


def _release_hash(tmp: Path) -> str:
    latest = (tmp / "releases" / "LATEST").read_text().strip()
    return json.loads((tmp / "releases" / latest / "manifest.json").read_text())["release_hash"]


def test_killed_flow_resumes_from_its_checkpoint_to_the_same_release(tmp_path):
    params_path = tiny_params(tmp_path, _blocklist(tmp_path), steps=12)
    assert _flow(params_path).wait(timeout=1200) == 0
    whole = _release_hash(tmp_path)
    for d in ("work", "releases", "cache"):
        shutil.rmtree(tmp_path / d)

    proc = _flow(params_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    checkpoints = lambda: list((tmp_path / "cache" / "erase").glob("*/checkpoint/state.json"))  # noqa: E731
    while not checkpoints() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the flow ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "releases" / "LATEST").exists()
    assert _flow(params_path).wait(timeout=1200) == 0
    assert _release_hash(tmp_path) == whole
