import numpy as np
import pytest

from erasure.models import ModelLoadError, load_pipeline, resolve, weights_hash
from erasure.sampling import generate


def test_local_folder_loads_and_generates(tiny_pipeline_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    a = generate(pipe, ["a cat", "a dog"], [0, 1], steps=2, progress=False)
    b = generate(pipe, ["a dog"], [1], steps=2, progress=False)
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a[1], b[0])  # an image depends on its seed, not on its batch


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_pipeline(str(tmp_path / "nope"))


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_pipeline(str(tmp_path))


def test_unreachable_hub_id_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub is unreachable"):
        load_pipeline("someone/not-a-cached-model")


def test_corrupt_weights_file_is_one_clear_error(tiny_pipeline_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_pipeline(str(broken))


def test_pickle_only_weights_are_refused(tiny_pipeline_dir, tmp_path):
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_pipeline_dir, folder)
    st = folder / "unet" / "diffusion_pytorch_model.safetensors"
    st.rename(folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_pipeline(str(folder))


def test_resolve_rejects_nonsense():
    with pytest.raises(ModelLoadError, match="hub id"):
        resolve("not a model at all")


def test_weights_hash_tracks_bytes(tiny_pipeline_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_pipeline_dir, copy)
    assert weights_hash(copy) == weights_hash(tiny_pipeline_dir)
    f = copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    assert weights_hash(copy) != weights_hash(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def pickled_pipeline_dir(tmp_path_factory):
    """The tiny pipeline with pickled `.bin` weights only (every component that has weights)."""
    from conftest import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("pickled") / "pipe", safe_serialization=False)


def test_a_bin_only_model_is_refused_on_every_loading_path(pickled_pipeline_dir, tmp_path):
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from erasure.cli import app
    from erasure.models import load_text_encoder
    from erasure.pipeline.anchors import _embedder

    folder = pickled_pipeline_dir
    assert not list(folder.rglob("*.safetensors")) and len(list(folder.rglob("*.bin"))) == 3
    expected = "lacks a component's safetensors weights"
    with pytest.raises(ModelLoadError, match=expected):
        load_pipeline(str(folder))
    with pytest.raises(ModelLoadError, match=expected):
        load_text_encoder(str(folder))
    for similarity in ("text", "guidance"):  # the anchors stage's two embedders
        with pytest.raises(ModelLoadError, match=expected):
            _embedder(SimpleNamespace(model=str(folder), device="cpu", anchors=SimpleNamespace(similarity=similarity)))
    runner = CliRunner()
    for args in (["generate", "-p", "a cat", "-n", "1", "--out", str(tmp_path / "g.png")],
                 ["erase", "--concept", "cat", "--kind", "style", "--steps", "1",
                  "--out", str(tmp_path / "d.safetensors")],
                 ["run", "--out", str(tmp_path / "run")]):
        res = runner.invoke(app, [*args, "--model", str(folder)])
        assert res.exit_code == 2, (args, res.output)
        assert expected in res.output and "Traceback" not in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # The judge: the miniworld detector reads its weights with safetensors' load_file, never torch.load.
    import torch
    from PIL import Image

    from erasure.miniworld.detector import WEIGHTS
    from safetensors.torch import load_file

    torch.save(load_file(str(WEIGHTS)), tmp_path / "detector.bin")
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    res = runner.invoke(app, ["detect", str(tmp_path / "x.png"), "--weights", str(tmp_path / "detector.bin")])
    assert res.exit_code == 2 and "detector.bin are unreadable" in res.output, res.output


def test_every_from_pretrained_of_weights_asks_for_safetensors():
    """A static check of the sources: a model class's from_pretrained without use_safetensors=True
    would unpickle a `.bin` file. (Tokenizers and schedulers hold no weights.)"""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    unsafe = []
    sources = [f for d in ("src", "benchmarks", "flows", "stages", "scripts") for f in (root / d).rglob("*.py")]
    for f in sorted(sources):
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained"):
                continue
            owner = ast.unparse(node.func.value)
            if owner.endswith(("Tokenizer", "Scheduler", "Processor", "Config")):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            if not (isinstance(kw.get("use_safetensors"), ast.Constant) and kw["use_safetensors"].value is True):
                unsafe.append(f"{f.relative_to(root)}:{node.lineno} {owner}.from_pretrained")
    assert not unsafe, unsafe
