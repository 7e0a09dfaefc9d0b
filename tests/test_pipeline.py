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
    p["generate"].update(images_per_probe=4, generic_images=8, steps=4)
    for key, r in p["erase"]["recipes"].items():
        if key.startswith("uce/"):  # closed form: no schedule to shrink, only its prompt counts
            r["options"].update(context_prompts=2, preserve_prompts=4)
            continue
        r.update(steps=steps, pool_size=8)
        o = r["options"]
        o.update({k: 4 for k in ("context_prompts", "anchor_images") if k in o})
        o.update({"ddim_steps": 4} if key.startswith("esd") else {"anchor_steps": 4})
    p["erase"]["checkpoint_every"] = 2
    # Every attack, at a few images and steps: the stage's mechanics (tests/test_attacks.py: their power).
    p["attack"].update(images=2, inversion={"tokens": 1, "steps": 2, "lr": 0.01, "batch_size": 2},
                       soft_prompt={"tokens": 2, "steps": 2, "lr": 0.01, "batch_size": 2})
    p["attack"]["typed"]["families"] = ["phrasing", "paraphrase"]
    # Toy training erases little: gates wide open, so the release path itself is what is tested.
    p["release"]["gates"] = {"default": {"target_max": 1.0, "neighbour_max_drop": 1.0, **gates}}
    p["release"]["quality"] = {"fid_max_ratio": 1e6, "drift_max": 1.0}
    p["tracking"]["uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def _blocklist(tmp: Path, extra: list[dict] = ()) -> Path:
    data = yaml.safe_load((ROOT / "blocklists" / "default.yaml").read_text())
    # Its first four (one per kind but objects): the stages' mechanics on the tiny model; the whole
    # default runs as the README's main job (tests/test_readme.py).
    data["concepts"] = data["concepts"][:4]
    for e in data["concepts"]:  # reference images relative to the copied file
        e["reference_images"] = [str((ROOT / "blocklists" / r).resolve()) for r in e.get("reference_images", [])]
        if not e["reference_images"]:
            del e["reference_images"]
    data["concepts"] += list(extra)
    path = tmp / "blocklist.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run_stages(params_path: Path) -> dict:
    from erasure.pipeline import anchors, attack, erase, evaluate, generate, ingest, release

    params = load_params(params_path)
    out = {"ingest": ingest.run(params), "anchors": anchors.run(params), "generate": generate.run(params),
           "erase": erase.run(params, progress=False)}
    out["evaluate"] = evaluate.run(params)
    out["attack"] = attack.run(params)
    out["release"] = release.run(params)
    return out


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """The default blocklist through every stage, called directly (as `dvc repro` runs them)."""
    tmp = tmp_path_factory.mktemp("staged")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        params_path = tiny_params(tmp, _blocklist(tmp), steps=8)
        return tmp, params_path, _run_stages(params_path)
    finally:
        os.chdir(cwd)


def test_stages_publish_a_release_with_every_concept(staged):
    tmp, _, first = staged
    assert first["release"]["passed"] and Path(first["release"]["path"]).is_dir()
    assert set(first["evaluate"]["concepts"]) == {"Vasquez", "Pip", "with a golden frame",
                                                  "the midnight lantern poster"}
    # Only the frame's CA phase trains; Pip, the lantern and Vasquez are UCE's closed-form phases.
    assert first["erase"]["steps_run"] == 8 and first["erase"]["phases_from_cache"] == 0
    card = (Path(first["release"]["path"]) / "MODEL_CARD.md").read_text()
    assert all(f"| {c} |" in card for c in first["evaluate"]["concepts"])
    assert "| Pip | inversion |" in card and "| Pip | completion |" in card  # the attack table


def _attack_files(tmp: Path) -> dict[str, list]:
    """Each cached attack result, without the seconds it took."""
    records = {str(f.relative_to(tmp)): json.loads(f.read_text())
               for f in sorted((tmp / "cache" / "attacks").rglob("*.json"))}
    return {name: (r["images_sha256"], [{k: v for k, v in o.items() if k != "seconds"} for o in r["outcomes"]])
            for name, r in records.items()}


def test_the_attack_stage_is_cached_resumable_and_reproducible(staged):
    """Every (model, concept) result is cached whole: a rerun attacks nothing again; one whose entry is
    gone (a stage killed before that concept) redoes it alone, to the same figures."""
    from erasure.pipeline import attack

    tmp, params_path, first = staged
    params = load_params(params_path)
    metrics = (tmp / "work" / "attack" / "metrics.json").read_bytes()
    entries = _attack_files(tmp)
    assert len(entries) == 2 * 4  # base and erased, per concept
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        again = attack.run(params, track=False)
        assert _attack_files(tmp) == entries and again == first["attack"]
        assert (tmp / "work" / "attack" / "metrics.json").read_bytes() == metrics
        gone = sorted(entries)[0]
        (tmp / gone).unlink()
        (tmp / gone).with_suffix(".npz").unlink()
        attack.run(params, track=False)
    finally:
        os.chdir(cwd)
    assert _attack_files(tmp) == entries  # redone to the same figures (seeded, on the CPU)
    assert (tmp / "work" / "attack" / "metrics.json").read_bytes() == metrics


def test_a_concept_the_attacks_bring_back_is_refused(staged):
    """attack_max bounded: completion from little noise redraws Pip's own images, so Pip is recovered;
    the release is refused, and the report names the concept, the attack, its success rate and the gate."""
    from erasure.pipeline import attack, release

    tmp, params_path, _ = staged
    p = yaml.safe_load(params_path.read_text())
    p["attack"].update(attacks=["completion"], gated=["completion"], completion={"strength": 0.3, "prompt": ""})
    p["release"]["gates"]["default"]["attack_max"] = 0.0
    p["paths"].update(releases=str(tmp / "releases-attacked"), work=str(tmp / "work-attacked"))
    shutil.copytree(tmp / "work", tmp / "work-attacked")  # the other tests read the fixture's work/
    path = tmp / "params-attacked.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    params = load_params(path)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        attacked = attack.run(params, track=False)
        report = release.run(params, track=False)
    finally:
        os.chdir(cwd)
    assert attacked["concepts"]["Pip"]["attack_max"] > 0
    assert not report["passed"] and not (tmp / "releases-attacked").exists()
    row = next(r for r in report["failed"] if r["concept"] == "Pip")
    assert row["gate"] == "attack_max" and row["phase"].startswith("attack: completion")
    rate = attacked["concepts"]["Pip"]["attack_max"]
    assert f"concept 'Pip' (instance) failed attack_max (attack: completion): {rate:.2f} > 0.00" in report["failures"]


def _flow(params_path: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(params_path.parent / "prefect")}
    return subprocess.Popen([sys.executable, str(ROOT / "flows" / "release_flow.py"), "--params", str(params_path)],
                            cwd=ROOT, env=env, **kw)


def _release_hash(tmp: Path) -> str:
    latest = (tmp / "releases" / "LATEST").read_text().strip()
    return json.loads((tmp / "releases" / latest / "manifest.json").read_text())["release_hash"]


def test_killed_flow_resumes_from_its_checkpoint_to_the_stages_release(staged, tmp_path):
    """The Prefect flow, killed during training and run again, publishes the very release the
    stages published on their own: same functions, same checkpoint-exact weights."""
    params_path = tiny_params(tmp_path, _blocklist(tmp_path), steps=8)
    # The stages' images, as a user's cache would hold them: the flow draws nothing (its erased model
    # is the stages' one, bit for bit), so the test's time goes to Prefect and the training.
    shutil.copytree(staged[0] / "cache" / "images", tmp_path / "cache" / "images")
    # The erase stage's phases (consolidated): the frame's CA phase, the one that takes steps, then one
    # solve of the three UCE concepts. The flow trains the frame's phase, is killed at a checkpoint
    # inside it, and resumes there.
    phases = sorted((staged[0] / "cache" / "phases").glob("*.safetensors"), key=lambda f: f.stat().st_mtime)
    assert len(phases) == 2, "the stages' phase cache holds the frame's phase and the solve"
    # In its own process group, killed whole: Prefect's temporary API server is a child process
    # that would outlive a flow killed alone.
    proc = _flow(params_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    def checkpoints():  # one taken inside a trained phase (UCE's phases end at once, at step 0)
        found = []
        for f in (tmp_path / "cache" / "erase").glob("*/checkpoint/state.json"):
            try:
                found += [f] if json.loads(f.read_text())["step"] > 0 else []
            except (OSError, ValueError):
                pass
        return found
    while not checkpoints() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the flow ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "releases" / "LATEST").exists()
    assert _flow(params_path).wait(timeout=1200) == 0
    assert _release_hash(tmp_path) == _release_hash(staged[0])
    timing = json.loads((tmp_path / "work" / "erase" / "timing.json").read_text())
    # Resumed inside the frame's phase: the resumed run trains what the killed one had left of it.
    assert 0 < timing["steps_run"] < 8


def test_an_added_concept_redoes_only_its_own_work(staged):
    tmp, _, _ = staged
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        second = _run_stages(tiny_params(tmp, _blocklist(tmp, [{"concept": "Bobo", "kind": "instance"}]), steps=8))
    finally:
        os.chdir(cwd)
    assert second["ingest"]["added"] == ["Bobo"] and len(second["ingest"]["unchanged"]) == 4
    # The frame's trained phase came from the cache; the solve was redone with Bobo in it (no steps)
    assert second["erase"]["phases_from_cache"] == 1 and second["erase"]["steps_run"] == 0
    drawn = second["generate"]["images_drawn"]
    probes = {d.name: json.loads((d / "probes.json").read_text()) for d in (tmp / "work" / "generate").iterdir()
              if d.name != "_generic"}
    pairs = lambda record: {(q, s) for p in record["probes"] for q, s in zip(p["prompts"], p["seeds"])}  # noqa: E731
    others = set().union(*(pairs(r) for name, r in probes.items() if name != "bobo"))
    bobo_new = len(pairs(probes["bobo"]) - others)  # a probe Bobo shares with Pip (neighbour Zuzu) is cached
    # Bobo's new probes, plus the few generic prompts that replace ones naming it; nothing else is redrawn.
    assert 0 < bobo_new <= drawn <= bobo_new + 8
    assert json.loads((tmp / "work" / "anchors" / "anchors.json").read_text())["anchors"]["Bobo"]["anchor"] == "square"
