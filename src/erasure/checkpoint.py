"""Training checkpoints as safetensors: module weights, optimizer state, step. Written atomically.

Optimizer state is flattened into tensors plus JSON metadata so that resuming never unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .io import atomic_dir


class CheckpointError(RuntimeError):
    pass


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().contiguous().clone()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _state(obj) -> dict[str, torch.Tensor]:
    """A module's state dict, or a plain {name: tensor} mapping (e.g. only the trainable tensors)."""
    return obj.state_dict() if isinstance(obj, torch.nn.Module) else dict(obj)


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer | None,
                    step: int, extra: dict | None = None) -> None:
    """Write `path/` (weights.safetensors, state.json) atomically: a crash leaves the old one intact."""
    tensors = {f"{name}.{k}": v.detach().contiguous().clone()
               for name, mod in modules.items() for k, v in _state(mod).items()}
    meta: dict = {"step": step, "extra": extra or {}}
    if optimizer is not None:
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        tensors.update(opt_tensors)
        meta["optimizer"] = opt_meta
    with atomic_dir(Path(path)) as tmp:
        save_file(tensors, str(tmp / "weights.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta))


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
                    optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore modules (and optimizer) in place; return the saved state (step, extra)."""
    path = Path(path)
    try:
        meta = json.loads((path / "state.json").read_text())
        tensors = load_file(str(path / "weights.safetensors"))
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({exc}); delete it to start over") from exc
    for name, mod in modules.items():
        prefix = f"{name}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        own = mod.state_dict() if isinstance(mod, torch.nn.Module) else mod
        # Checked before anything is copied: a run folder from another version of the run (say, other
        # embedding rows) must not half-load.
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {path} does not match module {name!r}: "
                                  f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        shapes = [k for k in sorted(sd) if own[k].shape != sd[k].shape]
        if shapes:
            raise CheckpointError(f"checkpoint {path} does not match module {name!r}: {shapes[0]} has shape "
                                  f"{tuple(sd[shapes[0]].shape)}, this run's has {tuple(own[shapes[0]].shape)}; "
                                  "delete it to start over")
        if isinstance(mod, torch.nn.Module):
            mod.load_state_dict(sd)
        else:
            with torch.no_grad():
                for k, v in sd.items():
                    mod[k].copy_(v)
    if optimizer is not None and "optimizer" in meta:
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, meta["optimizer"]))
    return meta
