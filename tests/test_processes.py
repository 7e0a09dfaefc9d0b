"""The generate stage over two processes (`accelerate launch --num_processes 2`, CPU, gloo): each process
draws a share of the images, and the stage writes what one process writes, up to the rounding of drawing
an image in another batch (erasure/processes.py); evaluate's other processes write nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from erasure.config import load_params
from test_distributed import _free_port
from test_pipeline_families import _params, judge_files  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _launch(stage: str, params: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(ACCELERATE_USE_CPU="true", HF_HUB_OFFLINE="1", DO_NOT_TRACK="true", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(ROOT / "stages" / f"{stage}.py"), "--params", str(params)]
    proc = subprocess.run(cmd, cwd=params.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    # Each process prints its summary; two processes' lines may share one line of the pipe.
    decoder, out, text = json.JSONDecoder(), [], proc.stdout
    at = text.find('{"stage"')
    while at >= 0:
        try:
            obj, end = decoder.raw_decode(text, at)
            out.append(obj)
        except json.JSONDecodeError:  # a summary cut at 2000 characters (evaluate's metrics)
            end = at + 1
            out.append({"stage": stage, "cut": True})
        at = text.find('{"stage"', end)
    return out


def _setup(tmp: Path, family_dirs, judge_files) -> Path:
    from erasure.pipeline import anchors, ingest

    tmp.mkdir()
    path = _params(tmp, family_dirs["sd1"], "sd1", judge_files)
    p = yaml.safe_load(path.read_text())
    p["generate"].update(images_per_probe=3, generic_images=5)  # odd counts: uneven shares
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    params = load_params(path)
    ingest.run(params)
    anchors.run(params)
    return path


def test_two_processes_share_the_drawing_and_write_what_one_writes(family_dirs, judge_files, tmp_path, one_thread,
                                                                    monkeypatch):
    from erasure import processes
    from erasure.pipeline import erase, evaluate, generate, inputs

    one, two = _setup(tmp_path / "one", family_dirs, judge_files), _setup(tmp_path / "two", family_dirs, judge_files)
    p1, p2 = load_params(one), load_params(two)
    single = generate.run(p1)
    reports = _launch("generate", two)
    assert sorted(r["process"] for r in reports) == ["0/2", "1/2"]
    assert all(r["images_drawn"] == single["images_drawn"] for r in reports)
    shares = [r["images_drawn_here"] for r in reports]
    assert sum(shares) == single["images_drawn"] and min(shares) > 0, shares
    for folder in sorted(p1.paths.stage("generate").iterdir()):
        a, b = np.load(folder / "before.npz"), np.load(p2.paths.stage("generate") / folder.name / "before.npz")
        assert sorted(a) == sorted(b)
        for k in a:  # the same images, up to rounding: other batches, other kernels
            diff = np.abs(a[k].astype(int) - b[k].astype(int))
            assert diff.max() <= 2 and (diff > 0).mean() < 0.01, (folder.name, k, diff.max(), (diff > 0).mean())
        assert (folder / "probes.json").read_text() == (p2.paths.stage("generate") / folder.name / "probes.json").read_text()

    # evaluate shares drawing through the same cache; launched, only its main process writes and tracks
    # (the launch costs ~25 s of start-up, so here the other process's side is taken in-process).
    erase.run(p2, progress=False)
    monkeypatch.setattr(processes, "is_main", lambda: False)
    monkeypatch.setattr(processes, "wait", lambda: None)
    assert evaluate.run(p2) == {"concepts": sorted(e["concept"] for e in inputs.entries(p2)),
                                "written_by": "the main process"}
    assert not p2.paths.stage("evaluate").exists()
