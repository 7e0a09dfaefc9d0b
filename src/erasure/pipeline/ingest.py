"""Stage 1, ingest: read and validate the blocklist, normalize it, and diff it against the last
release's, so later stages can tell new work from old. Nothing is written when it is invalid."""

from __future__ import annotations

import json

from ..blocklist import diff, load_blocklist
from ..config import PipelineParams
from ..io import atomic_dir


def tokenizer_for(model: str):
    """The model's tokenizer alone (no weights loaded), to check every text is encodable."""
    from transformers import CLIPTokenizer

    from ..models import ModelLoadError, source_folder

    folder = source_folder(model) / "tokenizer"
    try:
        return CLIPTokenizer.from_pretrained(folder)
    except Exception as exc:  # transformers raises OSError / ValueError variants
        raise ModelLoadError(f"model {model!r}: cannot load its tokenizer from {folder}: {exc}") from exc


def previous_release(params: PipelineParams) -> tuple[str | None, dict | None]:
    latest = params.paths.releases / "LATEST"
    if not latest.is_file():
        return None, None
    rid = latest.read_text().strip()
    path = params.paths.releases / rid / "blocklist.json"
    return rid, json.loads(path.read_text()) if path.is_file() else None


def run(params: PipelineParams) -> dict:
    blocklist = load_blocklist(params.paths.blocklist, tokenizer_for(params.model))
    rid, previous = previous_release(params)
    changes = diff(blocklist, previous)
    with atomic_dir(params.paths.stage("ingest")) as tmp:
        (tmp / "blocklist.json").write_text(json.dumps(blocklist, indent=1, sort_keys=True))
        (tmp / "diff.json").write_text(json.dumps({"previous_release": rid, "blocklist_sha256": blocklist["sha256"],
                                                   **changes}, indent=1, sort_keys=True))
    return {"concepts": len(blocklist["entries"]), "sha256": blocklist["sha256"], **changes}
