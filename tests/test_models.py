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
