"""Load a text-to-image pipeline from `miniworld`, a local diffusers folder or a hub id.

Weights are read from safetensors only (`use_safetensors=True`): a folder that has only pickled
`.bin` weights is refused rather than unpickled. Every failure is one `ModelLoadError` that names
the model and says what was expected.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path

import torch

MINIWORLD = "miniworld"
MINIWORLD_PATH = Path(__file__).resolve().parent / "miniworld" / "shipped" / "pipeline"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelLoadError(RuntimeError):
    pass


def resolve(spec: str) -> Path | str:
    """`miniworld` -> the shipped folder; an existing folder -> its path; `owner/name` -> hub id."""
    if spec == MINIWORLD:
        if not (MINIWORLD_PATH / "model_index.json").is_file():
            raise ModelLoadError(f"the shipped miniworld model is missing from {MINIWORLD_PATH}; "
                                 "reinstall the package or run `erasure miniworld train`")
        return MINIWORLD_PATH
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "model_index.json").is_file():
            raise ModelLoadError(f"--model {spec!r}: expected a diffusers pipeline folder with a "
                                 "model_index.json, found none")
        return path
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return spec
    raise ModelLoadError(f"--model {spec!r}: no such folder, and not a hub id of the form "
                         "'owner/name' (or use 'miniworld', the embedded default)")


def load_pipeline(spec: str = MINIWORLD, dtype: torch.dtype = torch.float32, device: str = "cpu",
                  keep_safety_checker: bool = False):
    """A diffusers pipeline (SD 1.x / 2.x / XL), ready to sample.

    Without its safety checker by default: erasure and evaluation must see the model's raw outputs
    (the checker blacks out what it flags). `keep_safety_checker=True` loads every component the
    folder has, as export does: a released model keeps the base model's NSFW filter.

    Thread-safe: loading builds modules on the meta device through process-wide switches, so two
    threads loading at once (per-concept flow tasks) would corrupt each other; one loads at a time.
    """
    with LOADING:
        return _load_pipeline(spec, dtype, device, keep_safety_checker)


# Held by every model build that may run beside a pipeline load in another thread (the detector).
LOADING = threading.Lock()


def _load_pipeline(spec: str, dtype: torch.dtype, device: str, keep_safety_checker: bool):
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Loading takes a second: its progress bars tell nothing, and arrive in logs as raw escape codes.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    target = resolve(spec)
    kwargs = dict(dtype=dtype)
    try:
        index = _model_index(target)
        if not keep_safety_checker and index is not None and "safety_checker" in index:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        pipe = DiffusionPipeline.from_pretrained(str(target), use_safetensors=True, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # diffusers raises many types; turn each into one clear message
        raise ModelLoadError(_explain(spec, target, exc)) from exc
    if not hasattr(pipe, "unet") or not hasattr(pipe, "text_encoder"):
        raise ModelLoadError(f"--model {spec!r}: expected a Stable Diffusion pipeline with a UNet and "
                             f"a text encoder, got {type(pipe).__name__}")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_text_encoder(spec: str = MINIWORLD):
    """The model's tokenizer and text encoder alone (safetensors weights only), to compare texts."""
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = source_folder(spec)
    try:
        return (CLIPTokenizer.from_pretrained(str(folder / "tokenizer")),
                CLIPTextModel.from_pretrained(str(folder / "text_encoder"), use_safetensors=True))
    except Exception as exc:  # transformers raises OSError, ValueError, ...: one clear message
        raise ModelLoadError(_explain(spec, folder, exc)) from exc


def _model_index(target: Path | str) -> dict | None:
    if isinstance(target, Path):
        try:
            return json.loads((target / "model_index.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{target}/model_index.json is unreadable: {exc}") from exc
    return None


def _explain(spec: str, target: Path | str, exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(target, str):
        return (f"--model {spec!r}: could not load this hub id: the model hub is unreachable from "
                f"here and the model is not in the local cache ({text.splitlines()[0][:200]}). "
                "Download it where the hub is reachable and pass the local folder instead.")
    low = text.lower()
    if "safetensors" in low and ("header" in low or "deserializ" in low or "incomplete" in low
                                 or "invalid" in low or "metadata" in low):
        return f"--model {spec!r}: a weights file in {target} is corrupt ({text.splitlines()[0][:200]})"
    if "no file named" in low or "could not find" in low or "does not appear to have" in low:
        return (f"--model {spec!r}: {target} lacks a component's safetensors weights "
                f"({text.splitlines()[0][:200]}); only safetensors weights are loaded")
    return f"--model {spec!r}: could not load the pipeline from {target}: {text.splitlines()[0][:300]}"


def is_sdxl_folder(spec: str) -> bool:
    """Whether the model's model_index.json names a second text encoder (SDXL), without loading it."""
    index = _model_index(source_folder(spec)) or {}
    second = index.get("text_encoder_2")
    return isinstance(second, list) and second[0] is not None


def source_folder(spec: str) -> Path:
    """The folder a model's weights are read from (a hub id: its snapshot in the local cache)."""
    target = resolve(spec)
    if isinstance(target, Path):
        return target
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(target, local_files_only=True))
    except Exception as exc:
        raise ModelLoadError(_explain(spec, target, exc)) from exc


# Bookkeeping keys that save_pretrained writes but that do not change the model: where it was read
# from and which library version wrote it. Hashing them would give a copied or re-saved folder a
# new identity; everything else in a config (scheduler class, prediction type, betas, sizes) does.
_BOOKKEEPING = frozenset({"_name_or_path", "name_or_path", "_diffusers_version", "transformers_version",
                          "_commit_hash", "is_local", "local_files_only"})
# What from_pretrained reads from a component folder besides safetensors weights (configs, vocabularies).
_CONFIG_SUFFIXES = (".json", ".txt", ".model")


def weights_hash(folder: Path) -> str:
    """The model's identity: sha256 over model_index.json and, in every component folder it names,
    the safetensors weights (bytes) and the config and vocabulary files (JSON parsed, bookkeeping keys
    dropped). Two folders with the same weights and another scheduler (v-prediction DDIM vs Euler)
    hash differently; the same model moved, copied or re-saved hashes the same."""
    folder = Path(folder)
    index = folder / "model_index.json"
    h = hashlib.sha256()
    h.update(b"model_index.json")
    h.update(_config_bytes(index))
    try:
        components = sorted(k for k, v in json.loads(index.read_text()).items()
                            if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None)
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{index}: unreadable or not a diffusers model index: {exc}") from exc
    for comp in components:
        for f in sorted(p for p in (folder / comp).rglob("*") if p.is_file()):
            rel = f.relative_to(folder)
            if any(part.startswith(".") for part in rel.parts):
                continue
            if f.suffix == ".safetensors":
                h.update(str(rel).encode())
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            elif f.suffix in _CONFIG_SUFFIXES:
                h.update(str(rel).encode())
                h.update(_config_bytes(f))
    return h.hexdigest()


def _config_bytes(path: Path) -> bytes:
    """A config file's content as hashed: JSON canonical and without bookkeeping keys, else raw bytes."""
    data = path.read_bytes()
    if path.suffix != ".json":
        return data
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(parsed, dict):
        parsed = {k: v for k, v in parsed.items() if k not in _BOOKKEEPING}
    return json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()
