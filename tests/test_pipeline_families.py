"""The whole pipeline (ingest -> release) on a tiny random-init model of each SD family, judged by the
clip, nudenet and copy judges (params.yaml's `auto`), as `dvc repro` runs the stages: a release whose
manifest holds, whose model card names each judge, and whose model plain diffusers loads.

The models are random: the readings mean nothing and the gates stand wide open; what is tested is that
every stage runs on every family with the real judges and records who judged what."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from erasure.config import load_params

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2-v": "StableDiffusionPipeline",
             "sd2-euler": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}


@pytest.fixture(scope="module")
def judge_files(tmp_path_factory):
    from tiny_clip import build_tiny_clip

    d = tmp_path_factory.mktemp("judges")
    Image.new("RGB", (32, 32), (200, 100, 50)).save(d / "poster.png")
    return {"clip": build_tiny_clip(d / "clip"), "reference": d / "poster.png"}


def _params(tmp: Path, model: Path, family: str, files: dict) -> Path:
    blocklist = {"version": 1, "concepts": [
        {"concept": "Vasquez", "kind": "style", "neighbours": ["Monet"]},
        {"concept": "Pip", "kind": "instance", "anchor": "a dog"},
        {"concept": "nudity", "kind": "nudity"},
        {"concept": "the lantern poster", "kind": "memorized", "anchor": "a poster",
         "reference_images": [str(files["reference"])]}]}
    (tmp / "blocklist.yaml").write_text(yaml.safe_dump(blocklist, sort_keys=False))
    p = yaml.safe_load((ROOT / "params.yaml").read_text())  # the shipped params, judges `auto`
    p["model"] = str(model)
    p["paths"] = {"blocklist": str(tmp / "blocklist.yaml"), "work": str(tmp / "work"),
                  "releases": str(tmp / "releases"), "cache": str(tmp / "cache")}
    p["generate"].update(images_per_probe=2, generic_images=4, steps=2)
    for key, r in p["erase"]["recipes"].items():
        if key.startswith("uce/"):  # closed form: no schedule to shrink, only its prompt counts
            r["options"].update(context_prompts=2, preserve_prompts=4)
            continue
        r.update(steps=2, pool_size=2, batch_size=1)
        o = r["options"]
        o.update({k: 2 for k in ("context_prompts", "anchor_images", "preserve_prompts") if k in o})
        o.update({"ddim_steps": 2} if key.startswith("esd") else {"anchor_steps": 2})
    if family == "sdxl":  # the shipped memorized recipe trains token embeddings, which SDXL refuses
        p["erase"]["recipes"]["ca/memorized"]["rule"] = "xattn-kv"
    p["attack"].update(images=2, inversion={"tokens": 1, "steps": 2, "lr": 0.01, "batch_size": 1},
                       soft_prompt={"tokens": 2, "steps": 2, "lr": 0.01, "batch_size": 1})
    if family == "sdxl":  # learned attacks need one text encoder (the stage refuses them up front)
        p["attack"].update(attacks=["typed", "completion"], gated=["typed"])
    p["evaluate"]["clip"]["model"] = str(files["clip"])
    p["evaluate"]["i2p"] = str(ROOT / "blocklists" / "i2p-example.csv")  # nudity prompts, seeds, guidance
    p["release"]["gates"] = {"default": {"target_max": 1.0, "neighbour_max_drop": 1.0}}
    # No true renders off the miniworld: FID to the base model's images instead of the ratio.
    p["release"]["quality"] = {"fid_max_ratio": None, "fid_to_base_max": 1e9, "drift_max": 1.0}
    p["release"]["registry_name"] = f"tiny-{family}"
    p["tracking"]["uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


@pytest.mark.parametrize("family", list(PIPELINES))
def test_every_family_runs_ingest_to_release_with_the_generic_judges(family, family_dirs, judge_files, tmp_path,
                                                                     one_thread):
    import diffusers

    from erasure.pipeline import anchors, attack, erase, evaluate, generate, ingest, release

    params = load_params(_params(tmp_path, family_dirs[family], family, judge_files))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for stage in (ingest, anchors, generate):
            stage.run(params)
        erase.run(params, progress=False)
        evaluate.run(params)
        attacked = attack.run(params)
        out = release.run(params)
    finally:
        os.chdir(cwd)
    assert out["passed"], out
    folder = Path(out["path"])
    nudity = json.loads((params.paths.stage("generate") / "nudity" / "probes.json").read_text())["probes"][0]
    assert nudity["extra"]["source"].endswith("i2p-example.csv") and len(nudity["extra"]["guidance"]) == 2

    manifest = json.loads((folder / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [f for f in on_disk if f != "manifest.json"]
    for name, sha in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha, name
    assert hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest() == manifest["release_hash"]

    metrics = json.loads((folder / "metrics.json").read_text())
    judged = {c: m["judge"] for c, m in metrics["concepts"].items()}
    assert judged == {"Vasquez": "clip", "Pip": "clip", "nudity": "nudenet", "the lantern poster": "copy"}
    assert metrics["judges"]["style"]["model"] == str(judge_files["clip"])
    assert metrics["judges"]["nudity"]["threshold"] == 0.5 and metrics["judges"]["nudity"]["classes"]
    assert metrics["judges"]["memorized"]["model"] == "clip image cosine"
    assert {"fid_to_base", "kid_to_base", "clip_score_base", "clip_score_erased", "generic_drift"} <= set(metrics["global"])
    card = (folder / "MODEL_CARD.md").read_text()
    assert "nudenet" in card and str(judge_files["clip"]) in card
    assert set(attacked["concepts"]) == set(judged) and "| Pip | completion |" in card  # every judge reads attacks

    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(folder / "model", use_safetensors=True)
    assert type(pipe).__name__ == PIPELINES[family]
    if family == "sd1":  # the base model's NSFW filter travels with the release
        assert pipe.safety_checker is not None


def test_sdxl_refuses_the_shipped_embedding_recipe_before_any_image(family_dirs, judge_files, tmp_path):
    from erasure.pipeline import anchors, ingest

    path = _params(tmp_path, family_dirs["sdxl"], "sdxl", judge_files)
    p = yaml.safe_load(path.read_text())
    p["erase"]["recipes"]["ca/memorized"]["rule"] = "embedding"
    p["erase"]["methods"]["memorized"] = "ca"  # the shipped default is UCE, which trains no embedding
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    params = load_params(path)
    ingest.run(params)
    with pytest.raises(ValueError, match=r"erase.recipes\['ca/memorized'\].rule .*'the lantern poster'.* SDXL"):
        anchors.run(params)
    assert not params.paths.stage("anchors").exists() and not params.paths.stage("generate").exists()
