"""A model's identity (weights hash over weights and configs) and exports that keep the base model's
components (its safety checker above all)."""

import json
import shutil

import pytest
import torch

from erasure.delta import export, save_delta
from erasure.models import ModelLoadError, load_pipeline, weights_hash


def test_same_weights_other_scheduler_hash_differently(family_dirs):
    # tests/families.py builds both from the same seed and architecture: equal weights, other scheduler
    v, euler = family_dirs["sd2-v"], family_dirs["sd2-euler"]
    assert (v / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (euler / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert weights_hash(v) != weights_hash(euler)


def test_a_config_change_changes_the_hash(tiny_pipeline_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_pipeline_dir, copy)
    assert weights_hash(copy) == weights_hash(tiny_pipeline_dir)
    cfg = copy / "scheduler" / "scheduler_config.json"
    data = json.loads(cfg.read_text())
    data["prediction_type"] = "v_prediction"
    cfg.write_text(json.dumps(data))
    assert weights_hash(copy) != weights_hash(tiny_pipeline_dir)


def test_bookkeeping_keys_keep_the_hash(tiny_pipeline_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_pipeline_dir, copy)
    cfg = copy / "unet" / "config.json"
    data = json.loads(cfg.read_text())
    data["_name_or_path"] = "/somewhere/else"
    cfg.write_text(json.dumps(data, indent=7))  # other formatting too
    assert weights_hash(copy) == weights_hash(tiny_pipeline_dir)


def test_a_corrupt_config_is_one_clear_error(tiny_pipeline_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_pipeline_dir, copy)
    (copy / "unet" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"unet/config.json: not valid JSON"):
        weights_hash(copy)


def test_export_keeps_the_safety_checker(family_dirs, tmp_path):
    from diffusers import StableDiffusionPipeline

    base = family_dirs["sd1"]
    pipe = load_pipeline(str(base))
    assert pipe.safety_checker is None  # sampling for evaluation sees raw outputs
    name, p = next((n, p) for n, p in pipe.unet.named_parameters() if "attn2.to_k" in n)
    delta = tmp_path / "d.safetensors"
    save_delta(delta, {f"unet.{name}": p.detach() + 0.01}, method="esd", params={}, concepts=[],
               base_hash=weights_hash(base))
    out = export(str(base), delta, tmp_path / "export")
    index = json.loads((out / "model_index.json").read_text())
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert index["feature_extractor"][1].startswith("CLIPImageProcessor")  # the PIL class here (no torchvision)
    assert index["requires_safety_checker"] is True
    reloaded = StableDiffusionPipeline.from_pretrained(str(out), use_safetensors=True)
    assert reloaded.safety_checker is not None and reloaded.feature_extractor is not None
    base_checker = StableDiffusionPipeline.from_pretrained(str(base), use_safetensors=True).safety_checker
    for (n, a), (_, b) in zip(reloaded.safety_checker.state_dict().items(), base_checker.state_dict().items()):
        assert torch.equal(a, b), n
    assert torch.allclose(dict(reloaded.unet.named_parameters())[name], p.detach() + 0.01)
