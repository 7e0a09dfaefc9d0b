"""What a stage reads from the stages before it (files under params.paths.work)."""

from __future__ import annotations

import json
from pathlib import Path

from ..concept import Concept
from ..config import PipelineParams


class StageInputError(FileNotFoundError):
    pass


def read_json(path: Path, stage: str) -> dict:
    if not path.is_file():
        raise StageInputError(f"{path}: missing; run the {stage!r} stage first")
    return json.loads(path.read_text())


def entries(params: PipelineParams) -> list[dict]:
    """The normalized blocklist entries written by ingest, in blocklist order."""
    return read_json(params.paths.stage("ingest") / "blocklist.json", "ingest")["entries"]


def anchors(params: PipelineParams) -> dict[str, dict]:
    """concept -> {"anchor", "reason", "scores"}, written by the anchors stage."""
    return read_json(params.paths.stage("anchors") / "anchors.json", "anchors")["anchors"]


def method_for(params: PipelineParams, entry: dict) -> str:
    return entry.get("method") or params.erase.methods.get(entry["kind"]) or "esd"


def concept(entry: dict, anchor: str | None) -> Concept:
    refs = tuple(portable(Path(r)) for r in entry.get("reference_images") or ())
    return Concept(text=entry["concept"], kind=entry["kind"], anchor=anchor, alternative=entry.get("alternative"),
                   reference_images=refs, paraphrases=tuple(entry.get("paraphrases") or ()))


def portable(path: Path) -> Path:
    """Relative to the project root (the working directory of every stage) when inside it: the
    delta's metadata then reads the same in any checkout, so a reproduced release is byte-identical."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")[:60] or "concept"
