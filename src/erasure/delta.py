"""Erasure deltas: a safetensors file holding only the tensors a method changed, plus metadata.

Keys are `<component>.<parameter name>` (component: `unet` or `text_encoder`). Metadata records
the method, its parameters, the concepts and the sha256 of the base model's weights, so a delta is
never applied to a model it was not trained on: a delta without it, or holding a NaN or infinite
value, is refused when saved, loaded, applied and exported. No timestamps: the same run gives the
same bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .io import save_safetensors

COMPONENTS = ("unet", "text_encoder")
FORMAT = "erasure-delta/1"


class DeltaError(RuntimeError):
    pass


def save_delta(path: Path, tensors: dict[str, torch.Tensor], *, method: str, params: dict,
               concepts: list[dict], base_hash: str) -> None:
    for key in tensors:
        if key.split(".", 1)[0] not in COMPONENTS:
            raise ValueError(f"delta key {key!r} must start with one of {COMPONENTS}")
    if not base_hash:
        raise DeltaError(f"{path}: a delta needs its base model's weights hash (base_hash); none was given")
    _check_finite(tensors, f"{path}: not saved:")
    # One metadata entry: safetensors writes several in hash-map order, which varies run to run.
    meta = {"format": FORMAT, "method": method, "params": params, "concepts": concepts, "base_hash": base_hash}
    save_safetensors({k: v.detach().cpu() for k, v in sorted(tensors.items())}, Path(path),
                     metadata={"erasure": json.dumps(meta, sort_keys=True)})


def load_delta(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise DeltaError(f"--delta {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("erasure", "{}")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads(raw)
    except (SafetensorError, OSError, ValueError) as exc:
        raise DeltaError(f"--delta {path}: not a readable safetensors file ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise DeltaError(f"--delta {path}: expected metadata format {FORMAT!r}, found {found!r}")
    _check_base_hash(meta, f"--delta {path}")
    _check_finite(tensors, f"--delta {path}:")
    return tensors, meta


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of a delta's tensors (names, dtypes, shapes, values), not of its file: deltas with the same
    weights and other metadata (the same concepts listed in another order) draw the same images."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _check_base_hash(meta: dict, where: str) -> None:
    if not isinstance(meta.get("base_hash"), str) or not meta["base_hash"]:
        raise DeltaError(f"{where} has no base_hash; it cannot be checked against a model")


def _check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise DeltaError(f"{where} tensor {key!r} holds {bad} NaN or infinite value(s)")


def apply_delta(pipe, tensors: dict[str, torch.Tensor], meta: dict, base_hash: str | None) -> None:
    """Write the delta's tensors into the pipeline in place, after checking it matches the base
    (`base_hash` None: the caller has checked it, as the trainer does for its own phase cache)."""
    _check_base_hash(meta, "the delta")
    _check_finite(tensors, "the delta:")
    if base_hash is not None and meta["base_hash"] != base_hash:
        raise DeltaError(f"delta was trained on base model {meta['base_hash'][:16]}, "
                         f"but this model's weights hash is {base_hash[:16]}")
    params = {c: dict(getattr(pipe, c).named_parameters()) for c in COMPONENTS}
    for key, value in tensors.items():
        comp, name = key.split(".", 1)
        target = params.get(comp, {}).get(name)
        if target is None:
            raise DeltaError(f"delta tensor {key!r} has no counterpart in this model")
        if target.shape != value.shape:
            raise DeltaError(f"delta tensor {key!r} has shape {tuple(value.shape)}, "
                             f"the model's has {tuple(target.shape)}")
    with torch.no_grad():
        for key, value in tensors.items():
            comp, name = key.split(".", 1)
            params[comp][name].copy_(value.to(params[comp][name].dtype))


def export(base: str, delta_path: Path, out: Path) -> Path:
    """Base model + delta -> a full diffusers folder, written atomically."""
    from .io import atomic_dir
    from .models import load_pipeline, source_folder, weights_hash

    tensors, meta = load_delta(delta_path)
    # Every component as the base model has it (its safety checker and feature extractor too): the
    # export differs from the base only by the delta.
    pipe = load_pipeline(base, keep_safety_checker=True)
    apply_delta(pipe, tensors, meta, weights_hash(source_folder(base)))
    # diffusers records the folder each config was read from; record the base as given instead, so
    # the export (and a release's hash) does not depend on where the project is checked out.
    for module in [pipe, *pipe.components.values()]:
        if hasattr(module, "register_to_config"):
            module.register_to_config(_name_or_path=base)
    with atomic_dir(Path(out)) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "erasure_delta.json").write_text(json.dumps(
            {k: meta.get(k) for k in ("method", "params", "concepts", "base_hash")}, indent=1, sort_keys=True))
    return Path(out)
