"""`erasure erase` on the tiny pipeline: writes a delta, or exits 2 with one clear message and writes nothing."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from erasure.cli import app
from erasure.delta import load_delta
from erasure.models import weights_hash

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()


def _erase(pipe_dir, out, *args):
    return runner.invoke(app, ["erase", "--model", str(pipe_dir), "--out", str(out), *args])


def test_erase_writes_a_delta(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "d.safetensors"
    res = _erase(tiny_pipeline_dir, out, "--concept", "cat", "--kind", "style", "--steps", "2",
                 "--option", "ddim_steps=4", "--option", "eta=2", "--option", "sampler=frozen", "--seed", "3")
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output and "2 steps" in res.output and "s/step" in res.output
    tensors, meta = load_delta(out)
    assert tensors and meta["method"] == "esd" and meta["base_hash"] == weights_hash(tiny_pipeline_dir)
    job = meta["params"]["jobs"][0]
    assert job["options"]["ddim_steps"] == 4 and job["options"]["eta"] == 2.0 and job["options"]["sampler"] == "frozen"
    assert job["rule"] == "xattn" and job["steps"] == 2 and meta["params"]["settings"]["seed"] == 3
    assert (tmp_path / "d.safetensors.work" / "run.json").is_file()  # default workdir: <out>.work

    again = _erase(tiny_pipeline_dir, out, "--concept", "cat", "--kind", "style", "--steps", "2",
                   "--option", "ddim_steps=4", "--option", "eta=2", "--option", "sampler=frozen", "--seed", "3")
    assert again.exit_code == 0, again.output
    assert "0 this run" in again.output  # a rerun resumes from the finished checkpoint


def test_erase_two_concepts_sequentially_with_ca(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "sub" / "d.safetensors"
    res = _erase(tiny_pipeline_dir, out, "-c", "rex", "-c", "fido", "--kind", "object", "--anchor", "dog",
                 "--method", "ca", "--mode", "sequential", "--steps", "2", "--batch-size", "2", "--lr", "1e-4",
                 "--rule", "xattn-kv", "--option", "anchor_images=4", "--option", "anchor_steps=2",
                 "--workdir", str(tmp_path / "w"))
    assert res.exit_code == 0, res.output
    meta = load_delta(out)[1]
    assert [c["text"] for c in meta["concepts"]] == ["rex", "fido"]
    assert all(c["anchor"] == "dog" for c in meta["concepts"])
    assert meta["params"]["settings"]["mode"] == "sequential" and meta["params"]["jobs"][1]["lr"] == 1e-4
    assert (tmp_path / "w" / "phases" / "1").is_dir()


def test_erase_memorized_image_with_reference(tiny_pipeline_dir, tmp_path):
    ref = tmp_path / "ref.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(ref)
    out = tmp_path / "d.safetensors"
    res = _erase(tiny_pipeline_dir, out, "-c", "memo one", "--kind", "memorized",
                 "--reference-image", str(ref), "--option", "x_source=reference", "--steps", "2")
    assert res.exit_code == 0, res.output
    assert load_delta(out)[1]["concepts"][0]["reference_images"] == [str(ref)]


LONG = "a concept longer than the sixty-two tokens that the tiny test tokenizer holds"
IMPOSSIBLE = {
    "anchor-equals-target": (["-c", "cat", "--kind", "object", "--method", "ca", "--anchor", "Cat"],
                             "anchor 'Cat' equals the concept"),
    "esd-reference-without-image": (["-c", "memo", "--kind", "memorized", "--option", "x_source=reference"],
                                    "needs reference_images"),
    "ca-memorized-without-image": (["-c", "memo", "--kind", "memorized", "--method", "ca", "--anchor", "a red dog"],
                                   "needs reference_images"),
    "ca-object-without-anchor": (["-c", "rex", "--kind", "object", "--method", "ca"], "needs an anchor"),
    "esd-with-anchor": (["-c", "rex", "--kind", "object", "--anchor", "dog"], "takes no anchor"),
    # Found only while the pool is built: the workdir made by then is removed again.
    "loss-max-object-without-anchor": (["-c", "rex", "--kind", "object", "--method", "loss-max"],
                                       "needs an anchor"),
    "unknown-kind": (["-c", "cat", "--kind", "painting"], "Invalid value for '--kind'"),
    "concept-too-long": (["-c", LONG, "--kind", "style"], "prompts hold at most 62"),
    "anchor-too-long": (["-c", "rex", "--kind", "object", "--method", "ca", "--anchor", LONG],
                        "anchor 'a concept longer"),
    "unknown-method": (["-c", "cat", "--kind", "style", "--method", "esdx"], "method 'esdx' unknown"),
    "unknown-rule": (["-c", "cat", "--kind", "style", "--rule", "xatn"], "rule 'xatn' unknown"),
    "option-without-value": (["-c", "cat", "--kind", "style", "--option", "eta"], "expected key=value"),
    "unknown-option": (["-c", "cat", "--kind", "style", "--option", "etaa=1"], "etaa"),
    "bad-option-value": (["-c", "cat", "--kind", "style", "--option", "sampler=fast"], "sampler"),
    "empty-concept": (["-c", "  ", "--kind", "style"], "--concept '  ': must be non-empty text"),
    "concept-twice": (["-c", "cat", "-c", "Cat", "--kind", "style"], "listed twice"),
    "unknown-mode": (["-c", "cat", "--kind", "style", "--mode", "parallel"], "Invalid value for '--mode'"),
    "zero-steps": (["-c", "cat", "--kind", "style", "--steps", "0"], "Invalid value for '--steps'"),
    "negative-lr": (["-c", "cat", "--kind", "style", "--lr", "-1"], "--lr -1.0: expected a positive"),
    "missing-reference-image": (["-c", "memo", "--kind", "memorized", "--reference-image", "nope.png"],
                                "Invalid value for '--reference-image'"),
}


@pytest.mark.parametrize("case", IMPOSSIBLE)
def test_impossible_combinations_exit_2_and_write_nothing(case, tiny_pipeline_dir, tmp_path):
    args, message = IMPOSSIBLE[case]
    out = tmp_path / "d.safetensors"
    res = _erase(tiny_pipeline_dir, out, *args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert not out.exists() and not (tmp_path / "d.safetensors.work").exists()


# A character a reader cannot see: named with its position, before any model is looked for (the
# model given does not exist), the text quoted with the character escaped.
INVISIBLE = {
    "zero-width-space": (["-c", "Pi\u200bp", "--kind", "instance"],
                         "--concept 'Pi\\u200bp': expected visible text, got U+200B ZERO WIDTH SPACE at position 3"),
    "newline": (["-c", "Pi\np", "--kind", "instance"], "--concept 'Pi\\np': expected visible text, got U+000A LINE "
                                                        "FEED at position 3"),
    "escape-in-anchor": (["-c", "rex", "--kind", "object", "--method", "ca", "--anchor", "\x1b[31mdog"],
                         "--concept 'rex': --anchor: expected visible text, got U+001B ESCAPE at position 1"),
    "bidi-in-erase-from": (["-c", "rex", "--kind", "object", "--erase-from", "\u202egod"],
                           "--erase-from: expected visible text, got U+202E RIGHT-TO-LEFT OVERRIDE at position 1"),
    "markup-like": (["-c", "[/]", "--kind", "object", "--method", "ca", "--anchor", "[/]"],
                    "anchor '[/]' equals the concept"),  # quoted as text, not read as rich markup
}


@pytest.mark.parametrize("case", INVISIBLE)
def test_an_invisible_character_is_refused_before_any_model_is_loaded(case, tmp_path):
    args, message = INVISIBLE[case]
    res = _erase(tmp_path / "no-such-model", tmp_path / "d.safetensors", *args)
    assert res.exit_code == 2, res.output
    assert message in res.output and "no such folder" not in res.output
    assert "Traceback" not in res.output and all(line.isprintable() for line in res.output.splitlines())
    assert list(tmp_path.iterdir()) == []


def test_an_invisible_character_is_refused_on_the_shipped_model(tmp_path):
    """As the README writes the command (default model): refused before the miniworld loads."""
    out = tmp_path / "d.safetensors"
    res = runner.invoke(app, ["erase", "-c", "Vas\u200dquez", "--kind", "style", "--out", str(out), "--steps", "1"])
    assert res.exit_code == 2, res.output
    assert "--concept 'Vas\\u200dquez': expected visible text, got U+200D ZERO WIDTH JOINER at position 4" in res.output
    assert "miniworld recipe" not in res.output and list(tmp_path.iterdir()) == []


def test_ca_on_a_memorized_image_needs_a_description(tiny_pipeline_dir, tmp_path):
    ref = tmp_path / "ref.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(ref)
    out = tmp_path / "d.safetensors"
    args = ["-c", "memo", "--kind", "memorized", "--method", "ca", "--reference-image", str(ref),
            "--option", "anchor_images=4", "--option", "anchor_steps=2", "--steps", "1"]
    res = _erase(tiny_pipeline_dir, out, *args)
    assert res.exit_code == 2 and "needs an anchor" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.png"]
    # --anchor describes the image's content (a paraphrase): the corrected command then runs.
    res = _erase(tiny_pipeline_dir, out, *args, "--anchor", "a red dog")
    assert res.exit_code == 0, res.output
    assert out.is_file()


def test_missing_model_and_folder_out(tiny_pipeline_dir, tmp_path):
    res = _erase(tmp_path / "missing", tmp_path / "d.safetensors", "-c", "cat", "--kind", "style")
    assert res.exit_code == 2 and "no such folder" in res.output
    res = _erase(tiny_pipeline_dir, tmp_path, "-c", "cat", "--kind", "style")
    assert res.exit_code == 2 and "is a folder" in res.output
    assert list(tmp_path.iterdir()) == []


def test_a_workdir_of_another_run_is_refused(tiny_pipeline_dir, tmp_path):
    common = ["-c", "cat", "--kind", "style", "--option", "ddim_steps=4", "--workdir", str(tmp_path / "w")]
    assert _erase(tiny_pipeline_dir, tmp_path / "a.safetensors", *common, "--steps", "2").exit_code == 0
    res = _erase(tiny_pipeline_dir, tmp_path / "b.safetensors", *common, "--steps", "3")
    assert res.exit_code == 2 and "holds a run with other settings" in res.output
    assert not (tmp_path / "b.safetensors").exists()
