import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from erasure.cli import app
from erasure.miniworld.world import make_dataset

runner = CliRunner()

COMMANDS = [[], ["generate"], ["detect"], ["erase"], ["export"], ["run"], ["miniworld"], ["miniworld", "concepts"],
            ["miniworld", "path"], ["miniworld", "render"], ["miniworld", "train"],
            ["miniworld", "train-detector"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "erasure")
def test_every_command_has_help(cmd):
    res = runner.invoke(app, cmd + ["--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_concepts_json_lists_every_kind():
    res = runner.invoke(app, ["miniworld", "concepts", "--json"])
    assert res.exit_code == 0
    cat = json.loads(res.output)
    assert set(cat) == {"object", "color", "style", "instance", "memorized", "implicit"}
    assert all({"name", "phrase", "anchor"} <= set(c) for items in cat.values() for c in items)


def test_path_prints_the_shipped_folder():
    res = runner.invoke(app, ["miniworld", "path"])
    assert res.exit_code == 0
    assert res.output.strip().endswith("pipeline")


def test_generate_with_missing_model_exits_nonzero_and_writes_nothing(tmp_path):
    out = tmp_path / "grid.png"
    res = runner.invoke(app, ["generate", "--model", str(tmp_path / "missing"), "-p", "a star",
                              "--out", str(out)])
    assert res.exit_code == 2
    assert "no such folder" in res.output
    assert not out.exists()


def test_miniworld_implicit_refinement_of_a_missing_folder_exits_nonzero_and_writes_nothing(tmp_path):
    work = tmp_path / "work"
    res = runner.invoke(app, ["miniworld", "train", "implicit", "--base", str(tmp_path / "missing"),
                              "--workdir", str(work)])
    assert res.exit_code == 2
    assert "--base" in res.output and "model_index.json" in res.output
    assert not work.exists()


def test_detect_json_on_rendered_images(tmp_path):
    images, _, scenes = make_dataset(seed=9, count=6)
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    res = runner.invoke(app, ["detect", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    found = json.loads(res.output)
    assert len(found) == 6
    assert {"labels", "copy_of", "copy_similarity", "probabilities"} <= set(found[0])


def test_detect_rejects_wrong_size(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    res = runner.invoke(app, ["detect", str(tmp_path / "big.png")])
    assert res.exit_code == 2 and "32x32" in res.output


def test_detect_missing_path(tmp_path):
    res = runner.invoke(app, ["detect", str(tmp_path / "none.png")])
    assert res.exit_code == 2 and "no such image" in res.output
