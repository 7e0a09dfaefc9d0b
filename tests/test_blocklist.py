"""Blocklist loading, normalization, hashing and diff; every malformed file gives its own error."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from erasure.blocklist import BlocklistError, diff, load_blocklist
from erasure.config import load_params
from erasure.pipeline import ingest

ROOT = Path(__file__).resolve().parent.parent
MALFORMED = Path(__file__).resolve().parent / "blocklists" / "malformed"

# file -> what its one error must say (the field and what was expected).
EXPECTED = {
    "empty.yaml": "the file is empty",
    "bad-yaml.yaml": "not valid YAML at line 4",
    "not-a-mapping.yaml": "top level: expected a mapping",
    "concepts-not-a-list.yaml": "concepts: expected a list of entries, got str",
    "concepts-empty.yaml": "concepts: the list is empty",
    "unknown-top-level.yaml": "unknown top-level key(s) 'concept'",
    "unknown-kind.yaml": "kind: expected one of style, object, instance, nudity, memorized, implicit, got 'painter'",
    "missing-kind.yaml": "entry 1 (Vasquez): kind: missing",
    "missing-concept.yaml": "entry 1 (?): concept: missing",
    "whitespace-concept.yaml": "concept: expected non-empty text, got only whitespace",
    "concept-not-text.yaml": "concept: expected text, got int 123",
    "paraphrases-not-a-list.yaml": "paraphrases: expected a list of non-empty texts, got str",
    "unknown-field.yaml": "anchr: unknown field (did you mean 'anchor'?)",
    "unknown-method.yaml": "method: expected one of esd, ca, abo, loss-max, got 'magic'",
    "anchor-equals-target.yaml": "anchor: expected a concept other than the target itself",
    "alternative-equals-target.yaml": "alternative: expected a concept other than the target itself",
    "anchor-is-a-paraphrase.yaml": "anchor: expected a concept other than the target's paraphrases",
    "duplicate-conflicting.yaml": "entry 2 (vasquez): concept: listed again with different fields (first at entry 1)",
    "memorized-without-reference.yaml": "reference_images: missing; a memorized image expects",
    "missing-reference-image.yaml": "reference_images: expected an existing image file, 'no-such-image.png'",
    "reference-not-an-image.yaml": "reference_images: expected a readable image, 'not-an-image.png' is not one",
    "reference-on-a-style.yaml": "reference_images: expected only for kind 'memorized'",
    "unencodable-too-long.yaml": "concept: expected text the model's tokenizer can encode whole",
    "unencodable-special-token.yaml": "unknown/special token",
    "wrong-version.yaml": "version: expected 1, got int 2",
    "entry-not-a-mapping.yaml": "entry 1: expected a mapping of fields, got str",
    "missing-column.csv": "header: missing column(s) kind",
    "unknown-kind.csv": "kind: expected one of",
    "unsupported.json": "unsupported file type '.json'",
}


def test_every_malformed_file_is_in_the_table():
    files = {p.name for p in MALFORMED.iterdir() if p.suffix in (".yaml", ".csv", ".json")}
    assert files == set(EXPECTED) and len(files) >= 20


@pytest.fixture(scope="module")
def tokenizer():
    return ingest.tokenizer_for("miniworld")


def _params(tmp_path: Path, blocklist: Path) -> Path:
    p = {"paths": {"blocklist": str(blocklist), "work": str(tmp_path / "work"),
                   "releases": str(tmp_path / "releases"), "cache": str(tmp_path / "cache")}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_blocklist_gives_its_error_and_writes_nothing(name, tmp_path):
    params = load_params(_params(tmp_path, MALFORMED / name))
    with pytest.raises(BlocklistError) as exc:
        ingest.run(params)
    assert EXPECTED[name] in str(exc.value)
    assert str(MALFORMED / name) in str(exc.value).splitlines()[0]
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("name", ["bad-yaml.yaml", "unknown-field.yaml", "unencodable-too-long.yaml"])
def test_the_stage_command_exits_2_with_the_error_on_stderr(name, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "stages" / "ingest.py"), "--params",
                          str(_params(tmp_path, MALFORMED / name))], capture_output=True, text=True, env=env)
    assert res.returncode == 2 and EXPECTED[name] in res.stderr
    assert not (tmp_path / "work").exists() and res.stdout == ""


def test_yaml_and_csv_agree_and_the_hash_survives_a_move(tmp_path, tokenizer):
    a = load_blocklist(ROOT / "blocklists" / "default.yaml", tokenizer)
    b = load_blocklist(ROOT / "blocklists" / "example.csv", tokenizer)
    assert a["entries"] == b["entries"] and a["sha256"] == b["sha256"]
    shutil.copytree(ROOT / "blocklists", tmp_path / "moved")
    assert load_blocklist(tmp_path / "moved" / "default.yaml")["sha256"] == a["sha256"]


def test_normalization_merges_identical_entries(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("concepts:\n  - {concept: '  Vasquez\u00a0 ', kind: STYLE}\n  - {concept: 'Ｖａｓｑｕｅｚ', kind: style}\n"
                    "  - {concept: Pip, kind: instance, anchor: '  circle'}\n")
    b = load_blocklist(path)
    assert b["entries"] == [{"concept": "Vasquez", "kind": "style"},
                            {"concept": "Pip", "kind": "instance", "anchor": "circle"}]
    assert "merged" in b["notes"][0]


def test_diff_against_the_previous_release():
    def bl(*entries):
        return {"entries": [dict(e) for e in entries]}

    v, p, f = {"concept": "Vasquez", "kind": "style"}, {"concept": "Pip", "kind": "instance"}, \
        {"concept": "with a golden frame", "kind": "implicit"}
    d = diff(bl(v, p | {"anchor": "circle"}, f), bl(v, p, {"concept": "Bobo", "kind": "instance"}))
    assert d == {"added": ["with a golden frame"], "removed": ["Bobo"], "changed": ["Pip"], "unchanged": ["Vasquez"]}
    assert diff(bl(v), None)["added"] == ["Vasquez"]


def test_ingest_writes_the_blocklist_and_its_diff(tmp_path):
    import json

    params = load_params(_params(tmp_path, ROOT / "blocklists" / "default.yaml"))
    out = ingest.run(params)
    assert out["added"] == ["Vasquez", "Pip", "with a golden frame", "the midnight lantern poster"]
    rel = tmp_path / "releases" / "r1"
    rel.mkdir(parents=True)
    shutil.copy(tmp_path / "work" / "ingest" / "blocklist.json", rel / "blocklist.json")
    (tmp_path / "releases" / "LATEST").write_text("r1\n")
    again = ingest.run(params)
    assert again["added"] == [] and len(again["unchanged"]) == 4
    assert json.loads((tmp_path / "work" / "ingest" / "diff.json").read_text())["previous_release"] == "r1"
