"""Accelerate set-up for the trainer: one CPU or GPU, DDP, or DeepSpeed ZeRO 1-3 (on the CPU too), and
the collective helpers every rank must call together (writes on the main process, ZeRO-3 gathers)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from .plan import EraseSettings


def save_main(accelerator, write: Callable[[Path], None], path: Path, gather=()) -> None:
    """`write(path)` on the main process only; every process waits. `gather`: parameters `write` reads
    (ZeRO-3 splits them across ranks: every rank takes part in gathering them whole first)."""
    with gathered(gather):
        if accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
        accelerator.wait_for_everyone()


def zero3_external(module: torch.nn.Module) -> None:
    """ZeRO-3 gathers a module's own parameters as it is called, but CLIP's embeddings read their
    position table's shape before calling it (and find it empty): have them gather it too. (Not a
    z3 leaf module: DeepSpeed then never reduces the gradients of parameters inside it.)"""
    import deepspeed

    for mod in module.modules():
        table = getattr(mod, "position_embedding", None)
        if isinstance(table, torch.nn.Embedding):
            deepspeed.zero.register_external_parameter(mod, table.weight)


@contextmanager
def gathered(params, modify: bool = False):
    """Within: the full values of `params` on every rank, also under ZeRO-3 (read-only unless
    `modify`: then rank 0's changes are kept). Collective under ZeRO-3: every rank must enter with
    the same parameters. A no-op otherwise."""
    params = [p for p in params if hasattr(p, "ds_id")]  # ZeRO-3 marks the parameters it partitions
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None):
        yield


def make_accelerator(settings: EraseSettings, batch_size: int | None = None, cpu: bool | None = None):
    """The run's Accelerator. `batch_size`: the global batch of a step (the loop gives each rank
    `idx[rank::world]` of it), for DeepSpeed's per-rank micro batch. `cpu`: whether the run's device
    (where the pipeline was loaded) is the CPU; None: whether this machine lacks CUDA."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DeepSpeedPlugin, DistributedDataParallelKwargs, DistributedType, InitProcessGroupKwargs

    cpu = not torch.cuda.is_available() if cpu is None else cpu
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    if not distributed:  # several runs in one process (tests, benchmarks): start from a clean state
        AcceleratorState._reset_state(reset_partial_state=True)
    if not settings.zero_stage:  # an earlier DeepSpeed run in this process left this set: it would switch DeepSpeed on
        os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
        handlers = []
        if distributed:
            if cpu:
                handlers.append(InitProcessGroupKwargs(backend="gloo"))
            handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
        return Accelerator(cpu=cpu, mixed_precision=settings.mixed_precision, kwargs_handlers=handlers)
    # DeepSpeed without CUDA runs on its CPU accelerator. Accelerate silently drops the DeepSpeed plugin
    # when told to use the CPU (cpu=True or ACCELERATE_USE_CPU=true, which two-process CPU launches
    # need): neither may reach it. Without a backend named (gloo) it counts one process, whatever the world.
    per_rank = -(-(batch_size or settings.batch_size or 1) // world)  # rank 0 gets the most: ceil(B / world)
    plugin = DeepSpeedPlugin(hf_ds_config={
        "train_micro_batch_size_per_gpu": per_rank, "gradient_accumulation_steps": 1,
        "gradient_clipping": settings.grad_clip, "zero_optimization": {"stage": settings.zero_stage},
        "bf16": {"enabled": settings.mixed_precision == "bf16"}, "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
    })
    if not distributed:  # one process (python script.py): DeepSpeed still wants a process group of one
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(free_port())}.items():
            os.environ.setdefault(key, value)
    use_cpu = os.environ.pop("ACCELERATE_USE_CPU", None)
    try:
        accelerator = Accelerator(cpu=False, mixed_precision=settings.mixed_precision, deepspeed_plugin=plugin,
                                  kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if cpu else [])
    finally:
        if use_cpu is not None:
            os.environ["ACCELERATE_USE_CPU"] = use_cpu
    try:  # else transformers builds every model loaded later in this process partitioned (ZeRO-3's zero.Init)
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    except ImportError:
        pass
    if accelerator.distributed_type != DistributedType.DEEPSPEED or accelerator.num_processes != world:
        raise RuntimeError(f"zero_stage={settings.zero_stage} asked for DeepSpeed on {world} process(es), but "
                           f"Accelerate set up {accelerator.distributed_type} on {accelerator.num_processes}")
    return accelerator


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
