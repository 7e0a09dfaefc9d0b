"""The concept blocklist: schema, loading (YAML or CSV), validation, normalization, diff.

    concepts:
      - concept: Vasquez
        kind: style
      - concept: Pip
        kind: instance
        anchor: circle

Every problem in a file is reported, one line each, naming the file, the entry, the field, what
was expected and what was found. Texts are normalized (unicode NFKC, whitespace collapsed); kind
and method are lower-cased; entries that are identical after that are merged, conflicting ones
are an error.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import unicodedata
from pathlib import Path

import yaml

from .concept import KINDS, ConceptError, check_encodable

FIELDS = ("concept", "kind", "anchor", "alternative", "method", "reference_images", "eval_prompts", "paraphrases")
TEXT_FIELDS = ("concept", "kind", "anchor", "alternative", "method")
LIST_FIELDS = ("reference_images", "eval_prompts", "paraphrases")
TOP_LEVEL = ("version", "concepts")


class BlocklistError(ValueError):
    """Every problem of a blocklist file, one per line."""


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _show(value) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def load_blocklist(path: Path | str, tokenizer=None) -> dict:
    """The normalized blocklist: {"source", "entries": [...], "notes": [...], "sha256"}.

    Raises BlocklistError listing every problem. `tokenizer`: also check every text is encodable.
    """
    path = Path(path)
    if not path.is_file():
        raise BlocklistError(f"{path}: no such blocklist file")
    if path.suffix.lower() in (".yaml", ".yml"):
        raw = _read_yaml(path)
    elif path.suffix.lower() == ".csv":
        raw = _read_csv(path)
    else:
        raise BlocklistError(f"{path}: unsupported file type {path.suffix!r}; expected .yaml, .yml or .csv")
    problems: list[str] = []
    entries, notes = [], []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw, 1):
        entry, errs = _entry(path, i, item, tokenizer)
        problems += errs
        if entry is None or errs:
            continue
        key = entry["concept"].casefold()
        if key in seen:
            first = entries[seen[key]]
            if {k: v for k, v in first.items() if k != "_index"} == entry:
                notes.append(f"entry {i} ({entry['concept']}) repeats entry {first['_index']}: merged")
                continue
            problems.append(f"{path}: entry {i} ({entry['concept']}): concept: listed again with different fields "
                            f"(first at entry {first['_index']}); expected one entry per concept")
            continue
        entry["_index"] = i
        seen[key] = len(entries)
        entries.append(entry)
    if problems:
        raise BlocklistError("\n".join(problems))
    for e in entries:
        del e["_index"]
    return {"source": str(path), "entries": entries, "notes": notes, "sha256": blocklist_hash(entries)}


def _read_yaml(path: Path) -> list:
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise BlocklistError(f"{path}: the file is empty; expected a mapping with a 'concepts' list")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise BlocklistError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise BlocklistError(f"{path}: top level: expected a mapping with a 'concepts' list, got {_show(data)}")
    unknown = [k for k in data if k not in TOP_LEVEL]
    if unknown:
        raise BlocklistError(f"{path}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                             f"expected {', '.join(TOP_LEVEL)}")
    if data.get("version", 1) != 1:
        raise BlocklistError(f"{path}: version: expected 1, got {_show(data['version'])}")
    concepts = data.get("concepts")
    if not isinstance(concepts, list):
        raise BlocklistError(f"{path}: concepts: expected a list of entries, got {_show(concepts)}")
    if not concepts:
        raise BlocklistError(f"{path}: concepts: the list is empty; expected at least one entry")
    return concepts


def _read_csv(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
        header = rows[0].keys() if rows else []
    if not rows:
        raise BlocklistError(f"{path}: no rows; expected a header (concept,kind,...) and one row per concept")
    missing = [c for c in ("concept", "kind") if c not in header]
    if missing:
        raise BlocklistError(f"{path}: header: missing column(s) {', '.join(missing)}; expected at least concept,kind")
    out = []
    for row in rows:
        item = {}
        for k, v in row.items():
            if v is None or k is None or not v.strip():
                continue
            item[k] = [p for p in v.split("|") if p.strip()] if k in LIST_FIELDS else v
        out.append(item)
    return out


def _entry(path: Path, i: int, item, tokenizer) -> tuple[dict | None, list[str]]:
    name = item.get("concept") if isinstance(item, dict) and isinstance(item.get("concept"), str) else "?"
    at = f"{path}: entry {i} ({_norm(name) or '?'})"
    if not isinstance(item, dict):
        return None, [f"{path}: entry {i}: expected a mapping of fields, got {_show(item)}"]
    errs = []
    for k in item:
        if k not in FIELDS:
            close = difflib.get_close_matches(str(k), FIELDS, n=1)
            errs.append(f"{at}: {k}: unknown field" + (f" (did you mean {close[0]!r}?)" if close else
                                                       f"; expected one of {', '.join(FIELDS)}"))
    entry: dict = {}
    for k in TEXT_FIELDS:
        v = item.get(k)
        if v is None:
            continue
        if not isinstance(v, str):
            errs.append(f"{at}: {k}: expected text, got {_show(v)}")
            continue
        v = _norm(v)
        if not v:
            errs.append(f"{at}: {k}: expected non-empty text, got only whitespace")
            continue
        entry[k] = v.lower() if k in ("kind", "method") else v
    for k in LIST_FIELDS:
        v = item.get(k)
        if v is None:
            continue
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            errs.append(f"{at}: {k}: expected a list of non-empty texts, got {_show(v)}")
            continue
        entry[k] = [_norm(x) for x in v]
    for k in ("concept", "kind"):
        if k not in item:
            errs.append(f"{at}: {k}: missing; expected a value")
    if errs:
        return None, errs
    text, kind = entry["concept"], entry["kind"]
    if kind not in KINDS:
        errs.append(f"{at}: kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    method = entry.get("method")
    if method is not None:
        from .methods import METHODS

        if method not in METHODS:
            errs.append(f"{at}: method: expected one of {', '.join(METHODS)}, got {method!r}")
    for k in ("anchor", "alternative"):
        if k in entry and entry[k].casefold() == text.casefold():
            errs.append(f"{at}: {k}: expected a concept other than the target itself, got {entry[k]!r}")
    if "anchor" in entry and entry["anchor"].casefold() in {p.casefold() for p in entry.get("paraphrases", [])}:
        errs.append(f"{at}: anchor: expected a concept other than the target's paraphrases, got {entry['anchor']!r}")
    refs = entry.get("reference_images", [])
    if kind == "memorized" and not refs:
        errs.append(f"{at}: reference_images: missing; a memorized image expects the image file(s) it must stop "
                    "reproducing")
    if refs and kind != "memorized":
        errs.append(f"{at}: reference_images: expected only for kind 'memorized', got them on kind {kind!r}")
    resolved = []
    for r in refs:
        f = (path.parent / r).resolve()
        resolved.append(str(f))
        if not f.is_file():
            errs.append(f"{at}: reference_images: expected an existing image file, {r!r} does not exist")
            continue
        try:
            from PIL import Image

            with Image.open(f) as img:
                img.verify()
        except Exception:  # PIL raises many types for a file that is not an image
            errs.append(f"{at}: reference_images: expected a readable image, {r!r} is not one")
    if refs:
        entry["reference_images"] = resolved
    if tokenizer is not None and not errs:
        texts = [("concept", text)] + [(k, entry[k]) for k in ("anchor", "alternative") if k in entry]
        texts += [(k, t) for k in ("paraphrases", "eval_prompts") for t in entry.get(k, [])]
        for field, t in texts:
            try:
                check_encodable(tokenizer, t, field)
            except ConceptError as exc:
                errs.append(f"{at}: {field}: expected text the model's tokenizer can encode whole; {exc}")
    return entry, errs


def blocklist_hash(entries: list[dict]) -> str:
    """sha256 of the normalized entries; reference images by content, so moving the repo keeps it."""
    canon = []
    for e in entries:
        e = dict(e)
        if "reference_images" in e:
            e["reference_images"] = [hashlib.sha256(Path(r).read_bytes()).hexdigest() for r in e["reference_images"]]
        canon.append(e)
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


def diff(current: dict, previous: dict | None) -> dict:
    """Concepts added, removed, changed (same concept, other fields) and unchanged, in blocklist order."""
    now = {e["concept"].casefold(): e for e in current["entries"]}
    before = {e["concept"].casefold(): e for e in (previous or {}).get("entries", [])}
    portable = lambda e: {k: v for k, v in e.items() if k != "reference_images"}  # noqa: E731 (paths move)
    return {"added": [e["concept"] for k, e in now.items() if k not in before],
            "removed": [e["concept"] for k, e in before.items() if k not in now],
            "changed": [e["concept"] for k, e in now.items() if k in before and portable(e) != portable(before[k])],
            "unchanged": [e["concept"] for k, e in now.items() if k in before and portable(e) == portable(before[k])]}
