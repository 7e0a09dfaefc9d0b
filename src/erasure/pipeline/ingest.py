"""Stage 1, ingest: read and validate the blocklist, normalize it, and diff it against the last
release's, so later stages can tell new work from old. Nothing is written when it is invalid.

    work/ingest/blocklist.json   Blocklist.to_json(): entries, notes, sha256; paths inside the project
                                 relative to it, so the file is the same in every checkout
    work/ingest/diff.json        added / removed / changed / unchanged, previous_release, blocklist_sha256
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..blocklist import Blocklist, BlocklistError, diff, load_blocklist
from ..config import PipelineParams
from ..io import atomic_dir, atomic_file
from .inputs import portable


def tokenizer_for(model: str):
    """The model's tokenizer alone (no weights loaded), to check every text is encodable."""
    from transformers import CLIPTokenizer

    from ..models import ModelLoadError, source_folder

    folder = source_folder(model) / "tokenizer"
    try:
        return CLIPTokenizer.from_pretrained(folder)
    except Exception as exc:  # transformers raises OSError / ValueError variants
        raise ModelLoadError(f"model {model!r}: cannot load its tokenizer from {folder}: {exc}") from exc


def previous_release(params: PipelineParams) -> tuple[str | None, Blocklist | None]:
    """The id and blocklist of the release LATEST names; (None, None) when there is none yet."""
    latest = params.paths.releases / "LATEST"
    if not latest.is_file():
        return None, None
    rid = latest.read_text().strip()
    path = params.paths.releases / rid / "blocklist.json"
    if not rid or not path.is_file():
        return None, None
    try:
        return rid, Blocklist.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as exc:  # bad JSON or entries (pydantic's errors are ValueErrors)
        raise BlocklistError(f"{path}: the previous release's blocklist is unreadable; expected the release "
                             f"stage's blocklist.json, got: {str(exc).splitlines()[0]}") from None


def read(params: PipelineParams) -> Blocklist:
    """The blocklist params name, validated whole against the model's tokenizer (BlocklistError)."""
    return load_blocklist(params.paths.blocklist, tokenizer_for(params.model))


def entries_of(blocklist: Blocklist) -> list[dict]:
    """The entries as this stage writes them (what inputs.entries reads back)."""
    return [e.as_dict() for e in _portable(blocklist).entries]


def run(params: PipelineParams) -> dict:
    blocklist = read(params)
    rid, previous = previous_release(params)
    changes = diff(blocklist, previous)
    sha256 = blocklist.sha256
    # When the job began, for the MLflow parent run's start: in the cache, never in work/ (a time
    # differs run to run, and work/ is versioned by DVC).
    with atomic_file(params.paths.cache / "job-start.json") as fh:
        json.dump({"start_ms": int(time.time() * 1000)}, fh)
    with atomic_dir(params.paths.stage("ingest")) as tmp:
        (tmp / "blocklist.json").write_text(_portable(blocklist).to_json())
        (tmp / "diff.json").write_text(json.dumps({"previous_release": rid, "blocklist_sha256": sha256, **changes},
                                                  indent=1, sort_keys=True))
    return {"concepts": len(blocklist.entries), "sha256": sha256, "previous_release": rid, **changes,
            "notes": list(blocklist.notes)}


def _portable(blocklist: Blocklist) -> Blocklist:
    entries = tuple(e.model_copy(update={"reference_images": tuple(str(portable(Path(r))) for r in e.reference_images)})
                    for e in blocklist.entries)
    source = str(portable(Path(blocklist.source))) if blocklist.source else ""
    return blocklist.model_copy(update={"entries": entries, "source": source})
