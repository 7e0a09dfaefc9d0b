"""The trainer on two CPU processes: plain DDP and DeepSpeed ZeRO 1, 2, 3 end in the same weights everywhere.

Each case launches tests/distributed_erase.py with `accelerate launch --multi_gpu --num_processes 2`
(ACCELERATE_USE_CPU=true: world size 2 over gloo) and compares what the two ranks wrote. The first
DeepSpeed run compiles its CPU communication op (a minute or two) into .cache/torch_extensions;
later runs reuse it.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 900  # seconds; the first DeepSpeed run compiles, and the CPU may be shared


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(pipe: Path, out: Path, stage: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                        "ACCELERATE_USE_DEEPSPEED")}
    env.update(ACCELERATE_USE_CPU="true", HF_HUB_OFFLINE="1", DO_NOT_TRACK="true", OMP_NUM_THREADS="1",
               TORCH_EXTENSIONS_DIR=str(ROOT / ".cache" / "torch_extensions"))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(ROOT / "tests" / "distributed_erase.py"),
           str(pipe), str(out), "--zero-stage", str(stage), "--watchdog", str(TIMEOUT - 60)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2, 3], ids=["ddp", "zero1", "zero2", "zero3"])
def test_two_processes_end_in_the_same_weights(stage, tiny_pipeline_dir, tmp_path):
    if stage:
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: ZeRO stages cannot run")
    from safetensors.torch import load_file

    t0 = time.time()
    proc = _launch(tiny_pipeline_dir, tmp_path, stage)
    seconds = time.time() - t0
    assert proc.returncode == 0, f"launch failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}"

    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["rank"] for i in infos] == [0, 1]
    assert all(i["world_size"] == 2 and i["torch_world_size"] == 2 for i in infos), infos
    expected = ("DEEPSPEED", stage) if stage else ("MULTI_CPU", 0)  # not silently plain data parallel
    assert all((i["distributed_type"], i["zero_stage"]) == expected for i in infos), infos
    if stage == 3:  # the weights really were split across the ranks, and gathered to be read
        assert all(i["partitioned"] and i["absent_before_gather"] > 0 for i in infos), infos

    a, b = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert a and sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a), "the ranks' trainable tensors differ"
    base = load_file(str(tiny_pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(a[k].shape == base[k.removeprefix("unet.")].shape for k in a)
    assert any(not torch.equal(a[k], base[k.removeprefix("unet.")]) for k in a), "training changed nothing"

    delta_path = tmp_path / "delta.safetensors"
    assert delta_path.is_file()
    delta = load_file(str(delta_path))
    assert sorted(delta) == sorted(a) and all(torch.equal(delta[k], a[k]) for k in a)
    ckpt = load_file(str(tmp_path / "work" / "checkpoint" / "weights.safetensors"))
    assert all(torch.equal(ckpt[f"model.{k}"], a[k]) for k in a)
    print(f"stage {stage}: {seconds:.1f}s launch to exit; ranks: {[i['seconds_erase'] for i in infos]}s in erase()")
