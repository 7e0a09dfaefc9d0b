"""One ESD erasure on the tiny pipeline, run by every process of a distributed launch (not a pytest file).

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 \
        tests/distributed_erase.py PIPE_DIR OUT_DIR --zero-stage {0,1,2,3}

PIPE_DIR is built (by the first process) when it holds no pipeline yet. Each rank writes
OUT_DIR/rank<r>.safetensors (its full trainable tensors after training, gathered under ZeRO-3) and
OUT_DIR/rank<r>.json (world size, rank, what Accelerate and DeepSpeed actually ran); rank 0 also
writes the delta OUT_DIR/delta.safetensors. tests/test_distributed.py launches it and compares.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def _ensure_pipeline(path: Path) -> None:
    """The first process builds the tiny pipeline (atomically); the others wait for it."""
    if (path / "model_index.json").exists():
        return
    if int(os.environ.get("RANK", "0")) == 0:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from conftest import build_tiny_pipeline

        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        build_tiny_pipeline(tmp)
        tmp.rename(path)
        return
    deadline = time.time() + 600
    while not (path / "model_index.json").exists():
        if time.time() > deadline:
            raise TimeoutError(f"{path}: no pipeline appeared")
        time.sleep(0.5)
    time.sleep(1.0)  # the rename is atomic; this only lets the file system settle


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pipe", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=0)
    ap.add_argument("--rule", default=None, help="parameter rule (default: the method's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--watchdog", type=float, default=0,
                    help="seconds after which every thread's stack is printed and the process exits (0: off)")
    args = ap.parse_args()
    if args.watchdog:  # a hung collective then shows where it hangs instead of timing out silently
        import faulthandler

        faulthandler.dump_traceback_later(args.watchdog, exit=True)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from accelerate.state import AcceleratorState

    from erasure.concept import Concept
    from erasure.models import load_pipeline, weights_hash
    from erasure.params import select_unet
    from erasure.trainer import EraseSettings, erase, plan

    _ensure_pipeline(args.pipe)
    pipe = load_pipeline(str(args.pipe))
    settings = EraseSettings(method="esd", steps=4, batch_size=2, pool_size=8, lr=1e-3,
                             zero_stage=args.zero_stage, options={"ddim_steps": 4}, rule=args.rule)
    jobs = plan([Concept(text="a red circle", kind="object")], settings)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = erase(pipe, jobs, settings, args.out / "work", out=args.out / "delta.safetensors",
                   model_spec="tiny", base_hash=weights_hash(args.pipe), progress=False)
    seconds = time.time() - t0

    state = AcceleratorState()
    rank, world = state.process_index, state.num_processes
    if jobs[0].rule == "embedding":  # after erase() the edited rows are merged back into the table
        table = pipe.text_encoder.get_input_embeddings().weight
        params = {f"text_encoder.{n}": p for n, p in pipe.text_encoder.named_parameters() if p is table}
    else:
        params = {f"unet.{n}": p for n, p in select_unet(pipe.unet, jobs[0].rule).items()}
    partitioned = any(hasattr(p, "ds_id") for p in params.values())  # ZeRO-3 split them across ranks
    absent = sum(p.data.numel() == 0 for p in params.values())  # ... and this rank holds only a slice now
    if partitioned:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            tensors = {n: p.detach().clone() for n, p in params.items()}
    else:
        tensors = {n: p.detach().clone() for n, p in params.items()}

    from safetensors.torch import save_file

    save_file(tensors, str(args.out / f"rank{rank}.safetensors"))
    plugin = state.deepspeed_plugin
    info = {
        "rank": rank, "world_size": world,
        "torch_world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "distributed_type": str(state.distributed_type).split(".")[-1],
        "zero_stage": plugin.zero_stage if plugin is not None else 0,
        "partitioned": partitioned, "absent_before_gather": absent, "losses": result.losses, "steps_run": result.steps_run,
        "seconds_erase": round(seconds, 2), "seconds_pool": round(result.seconds_pool, 2),
        "seconds_train": round(result.seconds_train, 2),
    }
    (args.out / f"rank{rank}.json").write_text(json.dumps(info, indent=1))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


if __name__ == "__main__":
    main()
