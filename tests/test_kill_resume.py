"""Kill `erasure erase` (SIGKILL) after a checkpoint, rerun the same command: same delta as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from erasure.delta import load_delta

pytestmark = pytest.mark.slow
ERASURE = Path(sys.executable).parent / "erasure"


def _command(pipe_dir, out, workdir):
    return [str(ERASURE), "erase", "--model", str(pipe_dir), "--out", str(out),
            "--workdir", str(workdir), "-c", "cat", "--kind", "style", "--steps", "300", "--batch-size", "2",
            "--option", "ddim_steps=4", "--lr", "1e-3", "--checkpoint-every", "10"]


def test_killed_run_resumes_to_the_uninterrupted_weights(tiny_pipeline_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    whole = tmp_path / "whole.safetensors"
    # The uninterrupted run alongside the killed one (one thread each: the machine's two cores).
    uninterrupted = subprocess.Popen(_command(tiny_pipeline_dir, whole, tmp_path / "whole.work"), env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    out, work = tmp_path / "killed.safetensors", tmp_path / "killed.work"
    proc = subprocess.Popen(_command(tiny_pipeline_dir, out, work), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (work / "checkpoint" / "state.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # a little further into the run, past the first checkpoint
    assert proc.poll() is None, "the run ended before it could be killed; give it more steps"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    step = int(json.loads((work / "checkpoint" / "state.json").read_text())["step"])
    assert 0 < step < 300

    res = subprocess.run(_command(tiny_pipeline_dir, out, work), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "this run" in res.stdout  # it resumed rather than starting over
    _, err = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, err[-2000:]
    a, _ = load_delta(whole)
    b, _ = load_delta(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
