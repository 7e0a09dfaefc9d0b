"""The concept blocklist: schema, loading (YAML or CSV), validation, normalization, hash and diff.

    version: 1
    concepts:
      - concept: Vasquez
        kind: style
      - concept: Pip
        kind: instance
        anchor: circle

A CSV has the same fields as columns (a header row with at least concept,kind; list cells
separated by `|`; empty cells mean absent).

Every problem in a file is reported, one line each:
`<file>: entry <i> (<concept>): <field>: expected ..., got ...`. YAML is read strictly (strict_yaml: a key
given twice, anchors and aliases are errors naming the line). A text holding a character a reader cannot
see (zero-width, bidi control, ESC, NUL, a newline or tab inside it) is refused, naming the character and
its position; then texts are normalized (unicode NFKC, whitespace collapsed), kind and method lower-cased;
entries identical after that (concept compared case-insensitively) are merged, conflicting ones are an error.
"""

from __future__ import annotations

import csv
import datetime
import difflib
import hashlib
import io
import json
import re
import unicodedata
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from . import strict_yaml
from .concept import KINDS, Concept, ConceptError, Kind, check_encodable, hidden_character
from .strict_yaml import invisible, preview

FIELDS = ("concept", "kind", "anchor", "alternative", "method", "reference_images", "eval_prompts", "paraphrases",
          "neighbours", "anchor_prompts")
TEXT_FIELDS = ("concept", "kind", "anchor", "alternative", "method")
LIST_FIELDS = ("reference_images", "eval_prompts", "paraphrases", "neighbours", "anchor_prompts")
TOP_LEVEL = ("version", "concepts")
SUFFIXES = (".yaml", ".yml", ".csv")

# A release's blocklist.json names a reference image "<file name> sha256:<hex>" (the file is not shipped).
_RELEASED_IMAGE = re.compile(r"(?:^|\s)sha256:([0-9a-f]{64})$")


class BlocklistError(ValueError):
    """Every problem of a blocklist file, one per line."""


class Entry(BaseModel):
    """One normalized blocklist entry.

    `reference_images` are absolute paths once loaded (in a release's blocklist.json: "<name> sha256:<hex>").
    `method`, `eval_prompts` and `neighbours` (concepts the evaluation checks are kept) are pipeline settings,
    not part of the `Concept` a method erases; `anchor_prompts` (the user's own prompts of the anchor, e.g.
    written by a language model) are what CA trains on instead of generated ones.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    concept: str
    kind: Kind
    anchor: str | None = None
    alternative: str | None = None
    method: str | None = None
    reference_images: tuple[str, ...] = ()
    eval_prompts: tuple[str, ...] = ()
    paraphrases: tuple[str, ...] = ()
    neighbours: tuple[str, ...] = ()
    anchor_prompts: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """The fields that are set, JSON-ready: the form later stages read from blocklist.json."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def canonical(self) -> dict:
        """as_dict with reference images by content hash: what the blocklist hash and the diff compare."""
        d = self.as_dict()
        if self.reference_images:
            d["reference_images"] = [_image_sha256(r) for r in self.reference_images]
        return d


class Blocklist(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    entries: tuple[Entry, ...]
    source: str = ""  # the file it was read from
    notes: tuple[str, ...] = ()  # what normalization did (merged duplicates)

    @staticmethod
    def key(entry: Entry) -> str:
        """What identifies a concept across entries and releases."""
        return entry.concept.casefold()

    @property
    def sha256(self) -> str:
        """sha256 of the canonical entries; images by content, so moving the repo keeps the hash."""
        canon = json.dumps([e.canonical() for e in self.entries], sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()

    def to_concepts(self) -> list[Concept]:
        return [Concept(text=e.concept, kind=e.kind, anchor=e.anchor, alternative=e.alternative,
                        reference_images=tuple(Path(r) for r in e.reference_images), paraphrases=e.paraphrases,
                        anchor_prompts=e.anchor_prompts)
                for e in self.entries]

    def to_json(self) -> str:
        data = {"source": self.source, "entries": [e.as_dict() for e in self.entries], "notes": list(self.notes),
                "sha256": self.sha256}
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Blocklist:
        """Read to_json's output, or a release's blocklist.json (no source or notes there)."""
        data = json.loads(text)
        return cls(entries=tuple(Entry(**e) for e in data["entries"]), source=data.get("source", ""),
                   notes=tuple(data.get("notes", ())))


def _image_sha256(ref: str) -> str:
    released = _RELEASED_IMAGE.search(ref)
    if released:
        return released.group(1)
    return hashlib.sha256(Path(ref).read_bytes()).hexdigest()


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _show(value) -> str:
    """How a found value is named in a message: its type and (shortened) value, never its whole repr."""
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {preview(value)}"


def _quote_hint(value) -> str:
    """For a value found where text was expected: YAML reads an unquoted `2024-01-01`, `no` or `1.5` as
    another type than text, so say how to keep it as text."""
    read_as = ("true/false" if isinstance(value, bool) else "a number" if isinstance(value, (int, float))
               else "a date" if isinstance(value, datetime.date) else None)
    return f" (unquoted, YAML reads it as {read_as}; quote it to keep it as text)" if read_as else ""


def _label(text: str, limit: int = 40) -> str:
    """A text as a message shows it: normalized, shortened, and with any character a reader cannot
    see written as its escape (`Pi\\u200bp`), so the message shows where it is and prints safely."""
    if hidden_character(text) is None:
        shown = _norm(text)
    else:
        shown = "".join(c.encode("unicode_escape").decode() if invisible(c) else c for c in text.strip()[:limit])
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def _unknown(name, known: tuple[str, ...], what: str) -> str:
    close = difflib.get_close_matches(str(name)[:100], known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; expected one of {', '.join(known)}"
    return f"unknown {what} {preview(str(name))}{hint}"


def load_blocklist(path: Path | str, tokenizer=None) -> Blocklist:
    """Read, validate and normalize a blocklist file (.yaml, .yml or .csv).

    Raises BlocklistError listing every problem. With a `tokenizer`, every text must also be
    encodable whole by it (the concept, anchor, alternative, paraphrases, eval prompts, neighbours and
    anchor prompts).
    """
    path = Path(path)
    if not path.is_file():
        raise BlocklistError(f"{path}: no such blocklist file")
    if path.suffix.lower() not in SUFFIXES:
        raise BlocklistError(f"{path}: unsupported file type {preview(path.suffix)}; expected {', '.join(SUFFIXES)}")
    text = _read_text(path)
    raw, problems = _read_csv(path, text) if path.suffix.lower() == ".csv" else _read_yaml(path, text)

    entries: list[Entry] = []
    first: dict[str, tuple[int, Entry]] = {}  # concept key -> (entry number, entry kept)
    notes: list[str] = []
    for i, item in enumerate(raw, 1):
        entry, errs = _check_entry(path, i, item, tokenizer)
        problems += errs
        if entry is None:
            continue
        key = Blocklist.key(entry)
        if key not in first:
            first[key] = (i, entry)
            entries.append(entry)
            continue
        j, kept = first[key]
        differ = [f for f in FIELDS if f != "concept" and getattr(entry, f) != getattr(kept, f)]
        if not differ:
            notes.append(f"entry {i} ({_label(entry.concept)}) repeats entry {j} ({_label(kept.concept)}): merged")
        else:
            problems.append(f"{path}: entry {i} ({_label(entry.concept)}): concept: expected each concept once, got it "
                            f"again with different {', '.join(differ)} (first at entry {j})")
    if problems:
        raise BlocklistError("\n".join(_at_most(path, problems)))
    return Blocklist(entries=tuple(entries), source=str(path), notes=tuple(notes))


MAX_PROBLEMS = 50  # listed in one message; a file with thousands of bad rows is named, not printed whole


def _at_most(path: Path, problems: list[str]) -> list[str]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return problems[:MAX_PROBLEMS] + [f"{path}: ... and {len(problems) - MAX_PROBLEMS:,} more problems (the first "
                                      f"{MAX_PROBLEMS} are listed above)"]


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size  # before reading: a huge file is refused without loading it
        if size > strict_yaml.MAX_BYTES:
            raise BlocklistError(f"{path}: {size:,} bytes; expected a blocklist of at most "
                                 f"{strict_yaml.MAX_BYTES:,} bytes (is this the right file?)")
        data = path.read_bytes()
    except OSError as exc:
        raise BlocklistError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")  # -sig: spreadsheets often start a CSV with a byte-order mark
    except UnicodeDecodeError as exc:
        raise BlocklistError(f"{path}: expected UTF-8 text, got an undecodable byte at offset {exc.start}") from None
    if not text.strip():
        expected = ("a header row (concept,kind,...) and one row per concept" if path.suffix.lower() == ".csv"
                    else "a mapping with a 'concepts' list")
        raise BlocklistError(f"{path}: the file is empty; expected {expected}")
    return text


def _read_yaml(path: Path, text: str) -> tuple[list, list[str]]:
    """The raw entries, and the file-level problems (when the entries cannot be read, they raise at once)."""
    try:
        data = strict_yaml.load(text)
    except strict_yaml.StrictYamlError as exc:
        raise BlocklistError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise BlocklistError(f"{path}: top level: expected a mapping with a 'concepts' list, got {_show(data)}")
    problems = [f"{path}: {_unknown(k, TOP_LEVEL, 'top-level key')}" for k in data if k not in TOP_LEVEL]
    version = data.get("version", 1)
    if version != 1 or isinstance(version, bool):
        problems.append(f"{path}: version: expected 1, got {_show(version)}")
    concepts = data.get("concepts")
    if not isinstance(concepts, list):
        problems.append(f"{path}: concepts: expected a list of entries, got {_show(concepts)}")
    elif not concepts:
        problems.append(f"{path}: concepts: expected at least one entry, got an empty list")
    if not isinstance(concepts, list) or not concepts:
        raise BlocklistError("\n".join(problems))
    return concepts, problems


def _read_csv(path: Path, text: str) -> tuple[list, list[str]]:
    """The raw entries (one per row), and the problems of the header and the rows' shape."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = [r for r in reader if any(cell.strip() for cell in r)]
    except csv.Error as exc:  # e.g. a cell over the csv module's limit of 131,072 characters
        raise BlocklistError(f"{path}: line {reader.line_num}: not valid CSV: {exc}") from None
    if not rows:  # only separators and blanks
        raise BlocklistError(f"{path}: the file is empty; expected a header row (concept,kind,...) and one row "
                             "per concept")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in ("concept", "kind") if c not in header]
    if missing:
        raise BlocklistError(f"{path}: header: expected the columns concept,kind (and optional "
                             f"{','.join(FIELDS[2:])}), got {_label(','.join(header), 200)} (missing "
                             f"{', '.join(missing)})")
    if len(rows) == 1:
        raise BlocklistError(f"{path}: expected one row per concept after the header, got none")
    problems = [f"{path}: header: {_unknown(h, FIELDS, 'column')}" for h in header if h not in FIELDS]
    problems += [f"{path}: header: expected each column once, got {preview(h)} {header.count(h)} times"
                 for h in dict.fromkeys(header) if header.count(h) > 1]
    if problems:
        raise BlocklistError("\n".join(_at_most(path, problems)))
    entries = []
    for i, row in enumerate(rows[1:], 1):
        if len(row) > len(header):
            concept = _label(row[header.index("concept")]) or "?"
            problems.append(f"{path}: entry {i} ({concept}): row: expected at most {len(header)} cells (one per "
                            f"column), got {len(row)}")  # still checked below, so later entries keep their numbers
        # Empty cells mean absent; list cells are split on '|' (empty parts, e.g. a trailing '|', dropped).
        item = {}
        for name, cell in zip(header, row):
            if cell.strip():
                item[name] = [p for p in cell.split("|") if p.strip()] if name in LIST_FIELDS else cell
        entries.append(item)
    return entries, problems


def _check_entry(path: Path, i: int, item, tokenizer) -> tuple[Entry | None, list[str]]:
    """The normalized entry (None if it has problems) and its problems."""
    name = item.get("concept") if isinstance(item, dict) else None
    at = f"{path}: entry {i} ({(_label(name) if isinstance(name, str) else '') or '?'})"
    if not isinstance(item, dict):
        return None, [f"{at}: expected a mapping of fields (concept, kind, ...), got {_show(item)}"]
    errs = [f"{at}: {_label(str(k))}: {_unknown(k, FIELDS, 'field')}" for k in item if k not in FIELDS]

    # Types, then normalization. An empty YAML value (None) means absent, as an empty CSV cell does.
    values: dict = {}
    for k in TEXT_FIELDS:
        v = item.get(k)
        if v is None:
            if k == "concept":
                errs.append(f"{at}: concept: expected the text naming the concept, got nothing")
            elif k == "kind":
                errs.append(f"{at}: kind: expected one of {', '.join(KINDS)}, got nothing")
        elif not isinstance(v, str):
            errs.append(f"{at}: {k}: expected text, got {_show(v)}{_quote_hint(v)}")
        elif hidden := hidden_character(v):  # before normalizing, which would turn a newline or tab into a space
            errs.append(f"{at}: {k}: expected visible text, got {hidden}")
        elif not _norm(v):
            errs.append(f"{at}: {k}: expected non-empty text, got only whitespace {preview(v)}")
        else:
            values[k] = _norm(v).lower() if k in ("kind", "method") else _norm(v)
    for k in LIST_FIELDS:
        v = item.get(k)
        if v is None:
            continue
        if not isinstance(v, list):
            errs.append(f"{at}: {k}: expected a list of texts, got {_show(v)}")
            continue
        bad = [(j, x) for j, x in enumerate(v, 1) if not isinstance(x, str) or not x.strip()]
        if bad:
            j, x = bad[0]
            errs.append(f"{at}: {k}: expected a list of non-empty texts, got {_show(x)} as item {j}{_quote_hint(x)}")
            continue
        hidden = next(((j, h) for j, x in enumerate(v, 1) if (h := hidden_character(x))), None)
        if hidden:
            errs.append(f"{at}: {k}: expected visible text, got {hidden[1]} in item {hidden[0]}")
            continue
        if v:
            values[k] = tuple(x.strip() if k == "reference_images" else _norm(x) for x in v)

    # Meaning.
    text, kind = values.get("concept"), values.get("kind")
    if kind is not None and kind not in KINDS:
        errs.append(f"{at}: kind: expected one of {', '.join(KINDS)}, got {preview(kind)}")
    if "method" in values:
        from .methods import METHODS  # imports torch: only when a method is named

        if values["method"] not in METHODS:
            errs.append(f"{at}: method: expected one of {', '.join(METHODS)}, got {preview(values['method'])}")
    for k in ("anchor", "alternative"):
        if text and k in values and values[k].casefold() == text.casefold():
            errs.append(f"{at}: {k}: expected a concept other than the target itself, got {preview(values[k])}")
    if "anchor" in values and values["anchor"].casefold() in {p.casefold() for p in values.get("paraphrases", ())}:
        errs.append(f"{at}: anchor: expected a concept other than the target's paraphrases, got "
                    f"{preview(values['anchor'])} (listed under paraphrases)")
    # A neighbour is checked to be kept: the target (or a way of naming it) there would be measured both ways.
    same = {text.casefold()} if text else set()
    same |= {p.casefold() for p in values.get("paraphrases", ())}
    clash = next(((j, x) for j, x in enumerate(values.get("neighbours", ()), 1) if x.casefold() in same), None)
    if clash:
        errs.append(f"{at}: neighbours: expected concepts other than the target and its paraphrases, got "
                    f"{preview(clash[1])} as item {clash[0]}")
    refs = values.get("reference_images", ())
    if kind == "memorized" and not item.get("reference_images"):  # (a malformed list is reported above)
        errs.append(f"{at}: reference_images: expected the image file(s) a memorized concept must stop "
                    "reproducing, got none")
    if refs and kind in KINDS and kind != "memorized":
        errs.append(f"{at}: reference_images: expected none for kind {preview(kind)} (only memorized concepts have "
                    f"them), got {len(refs)} file(s)")
    elif refs:
        resolved = []
        for r in refs:
            f = (path.parent / r).resolve()  # relative to the blocklist's folder
            resolved.append(str(f))
            try:
                missing = "does not exist" if not f.exists() else "is not a file" if not f.is_file() else None
            except OSError as exc:  # a name too long for the file system, ...
                missing = f"cannot be looked up ({exc.strerror})"
            if missing:
                errs.append(f"{at}: reference_images: expected an existing image file, got {preview(r)}, which "
                            f"{missing} (looked for {preview(str(f), 200)})")
            elif not _is_image(f):
                errs.append(f"{at}: reference_images: expected a readable image, got {preview(r)}, which is not one")
        values["reference_images"] = tuple(resolved)

    if tokenizer is not None:
        texts = [(k, values[k]) for k in ("concept", "anchor", "alternative") if k in values]
        texts += [(k, t) for k in ("paraphrases", "eval_prompts", "neighbours", "anchor_prompts")
                  for t in values.get(k, ())]
        for field, t in texts:
            try:
                check_encodable(tokenizer, t, field)
            except ConceptError as exc:
                errs.append(f"{at}: {field}: expected text the model's tokenizer can encode whole, got {exc}")
    if errs:
        return None, errs
    return Entry(**values), []


def _is_image(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # PIL raises many types for a file that is not an image
        return False


def diff(current: Blocklist, previous: Blocklist | None) -> dict:
    """Concepts added, removed, changed (same concept, other fields) and unchanged, in blocklist order.

    Reference images are compared by content, so a release's blocklist (images named by hash) compares
    equal to the same blocklist loaded from disk.
    """
    now = {Blocklist.key(e): e for e in current.entries}
    before = {Blocklist.key(e): e for e in previous.entries} if previous is not None else {}
    out: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "unchanged": []}
    for k, e in now.items():
        if k not in before:
            out["added"].append(e.concept)
        elif e.canonical() == before[k].canonical():
            out["unchanged"].append(e.concept)
        else:
            out["changed"].append(e.concept)
    out["removed"] = [e.concept for k, e in before.items() if k not in now]
    return out
