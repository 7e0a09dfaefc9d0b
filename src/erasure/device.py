"""The run's device and dtype, from params or the command line ("auto": CUDA when there is one).

One device for the whole run. Random numbers are drawn on the CPU (torch CPU generators) and moved,
so a seed gives the same draws on any device; data the run keeps (pools, conditionings, latents
sampled for them) lives on the CPU, and each model call moves its inputs to the model's device.
"""

from __future__ import annotations

import os
import re

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_device(spec: str = "auto") -> torch.device:
    """"auto" | "cpu" | "cuda" | "cuda:N" -> the device; "auto" and "cuda" under a multi-process launch
    take this process's GPU (LOCAL_RANK). One clear ValueError for a device this machine lacks."""
    spec = str(spec).strip().lower()
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    m = re.fullmatch(r"(auto|cuda)(?::(\d+))?", spec)
    if m is None or (m.group(1) == "auto" and m.group(2) is not None):
        raise ValueError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r}: this machine has no CUDA device (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu")
    index = int(m.group(2)) if m.group(2) is not None else int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


def resolve_dtype(spec: str = "fp32") -> torch.dtype:
    if spec not in DTYPES:
        raise ValueError(f"dtype {spec!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[spec]


def model_device(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where a module's weights are, and their floating dtype (of its first parameter)."""
    p = next(module.parameters())
    return p.device, p.dtype


def placement_tag(module: torch.nn.Module) -> str:
    """"" on the CPU in fp32, else "@<device>-<dtype>": another device or dtype draws other images from
    the same seeds, so image cache keys name it (CPU fp32 keys as they always were)."""
    device, dtype = model_device(module)
    return "" if (device.type, dtype) == ("cpu", torch.float32) else f"@{device.type}-{str(dtype).split('.')[-1]}"
