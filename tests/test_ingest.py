"""The ingest stage: what it writes, the diff against the last release, and what it refuses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from erasure.blocklist import Blocklist, BlocklistError, load_blocklist
from erasure.config import load_params
from erasure.models import ModelLoadError
from erasure.pipeline import ingest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "blocklists" / "default.yaml"
CONCEPTS = ["Pip", "with a golden frame", "the midnight lantern poster", "Vasquez", "Bobo", "star", "Okafor", "cross",
            "Tanaka", "Zuzu"]


def _params(tmp_path: Path, blocklist: Path, **extra) -> Path:
    p = {"paths": {"blocklist": str(blocklist), "work": str(tmp_path / "work"),
                   "releases": str(tmp_path / "releases"), "cache": str(tmp_path / "cache")}, **extra}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def _release(tmp_path: Path, rid: str, blocklist: Blocklist) -> None:
    """A release folder as the release stage writes it (images by name and hash), and LATEST naming it."""
    from erasure.release import _portable_blocklist

    folder = tmp_path / "releases" / rid
    folder.mkdir(parents=True)
    (folder / "blocklist.json").write_text(json.dumps(_portable_blocklist(json.loads(blocklist.to_json()))))
    (tmp_path / "releases" / "LATEST").write_text(f"{rid}\n")


def test_a_valid_run_writes_the_blocklist_and_its_diff(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the stages' working directory
    out = ingest.run(load_params(_params(tmp_path, DEFAULT)))
    assert out["concepts"] == 10 and out["added"] == CONCEPTS and out["previous_release"] is None
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["ingest"]  # no temp folder left
    folder = tmp_path / "work" / "ingest"
    assert sorted(p.name for p in folder.iterdir()) == ["blocklist.json", "diff.json"]
    # When the job began (the MLflow parent run's start): in the cache, since work/ is versioned.
    assert json.loads((tmp_path / "cache" / "job-start.json").read_text())["start_ms"] > 1.7e12

    written = json.loads((folder / "blocklist.json").read_text())
    blocklist = Blocklist.from_json((folder / "blocklist.json").read_text())
    assert written["sha256"] == blocklist.sha256 == load_blocklist(DEFAULT).sha256 == out["sha256"]
    # Inside the project (the stages' working directory): relative, so every checkout writes the same file.
    image = Path(written["entries"][2]["reference_images"][0])
    assert image == Path("blocklists/images/midnight-lantern.png") and image.is_file()
    assert written["source"] == "blocklists/default.yaml"
    assert written["entries"][3] == {"concept": "Vasquez", "kind": "style"}  # absent fields left out

    d = json.loads((folder / "diff.json").read_text())
    assert d == {"previous_release": None, "blocklist_sha256": out["sha256"], "added": CONCEPTS, "removed": [],
                 "changed": [], "unchanged": []}


def test_the_diff_against_the_previous_release(tmp_path):
    before = tmp_path / "before.yaml"  # the last release: Pip had another anchor, Moreau is gone, no frame yet
    data = yaml.safe_load(DEFAULT.read_text())
    data["concepts"] = [e for e in data["concepts"] if e["kind"] != "implicit"]
    data["concepts"][0]["anchor"] = "square"
    data["concepts"].append({"concept": "Moreau", "kind": "style"})
    for e in data["concepts"]:
        e["reference_images"] = [str(ROOT / "blocklists" / r) for r in e.get("reference_images", [])] or None
    before.write_text(yaml.safe_dump(data))
    _release(tmp_path, "r1", load_blocklist(before))

    out = ingest.run(load_params(_params(tmp_path, DEFAULT)))
    assert out["previous_release"] == "r1"
    assert (out["added"], out["removed"], out["changed"]) == (["with a golden frame"], ["Moreau"], ["Pip"])
    assert out["unchanged"] == CONCEPTS[2:]  # the image compares by content
    d = json.loads((tmp_path / "work" / "ingest" / "diff.json").read_text())
    assert d["previous_release"] == "r1" and d["added"] == ["with a golden frame"]


def test_the_same_blocklist_as_released_is_all_unchanged(tmp_path):
    _release(tmp_path, "r7", load_blocklist(DEFAULT))
    out = ingest.run(load_params(_params(tmp_path, DEFAULT)))
    assert out["unchanged"] == CONCEPTS and out["added"] == out["changed"] == out["removed"] == []


def test_latest_naming_a_missing_release_means_no_previous(tmp_path):
    (tmp_path / "releases").mkdir()
    (tmp_path / "releases" / "LATEST").write_text("gone\n")
    out = ingest.run(load_params(_params(tmp_path, DEFAULT)))
    assert out["previous_release"] is None and out["added"] == CONCEPTS


def test_an_unreadable_previous_release_is_an_error_and_writes_nothing(tmp_path):
    (tmp_path / "releases" / "r1").mkdir(parents=True)
    (tmp_path / "releases" / "r1" / "blocklist.json").write_text("{not json")
    (tmp_path / "releases" / "LATEST").write_text("r1")
    with pytest.raises(BlocklistError, match="the previous release's blocklist is unreadable"):
        ingest.run(load_params(_params(tmp_path, DEFAULT)))
    assert not (tmp_path / "work").exists() and not (tmp_path / "cache").exists()


def test_a_failed_run_keeps_the_last_output(tmp_path):
    params = load_params(_params(tmp_path, DEFAULT))
    ingest.run(params)
    before = {p.name: p.read_bytes() for p in (tmp_path / "work" / "ingest").iterdir()}
    bad = tmp_path / "bad.yaml"
    bad.write_text("concepts:\n  - {concept: Vasquez, kind: painter}\n")
    with pytest.raises(BlocklistError):
        ingest.run(load_params(_params(tmp_path, bad)))
    assert {p.name: p.read_bytes() for p in (tmp_path / "work" / "ingest").iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["ingest"]


def test_a_model_without_a_tokenizer_is_named(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=f"model '{model}': cannot load its tokenizer"):
        ingest.run(load_params(_params(tmp_path, DEFAULT, model=str(model),
                                       release={"quality": {"fid_max_ratio": None}})))
    assert not (tmp_path / "work").exists()


def test_the_stage_command_prints_a_one_line_summary(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "stages" / "ingest.py"), "--params",
                          str(_params(tmp_path, DEFAULT))], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    [line] = res.stdout.splitlines()
    summary = json.loads(line)
    assert summary["stage"] == "ingest" and summary["concepts"] == 10 and summary["added"] == CONCEPTS
    assert (tmp_path / "work" / "ingest" / "diff.json").is_file()
