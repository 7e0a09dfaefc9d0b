"""The shipped miniworld model is a plain diffusers folder that loads and samples offline."""

import json
import os
import subprocess
import sys

import numpy as np

from erasure.models import MINIWORLD_PATH, load_pipeline, weights_hash
from erasure.sampling import generate

PLAIN_LOAD = """
import json, sys, numpy as np, torch
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
g = torch.Generator().manual_seed(0)
img = pipe("an image of a red star", num_inference_steps=10, generator=g, output_type="np").images
print(json.dumps({"shape": list(img.shape), "unet": type(pipe.unet).__name__,
                  "tokenizer": type(pipe.tokenizer).__name__, "safety": pipe.safety_checker is None}))
"""


def test_plain_diffusers_loads_shipped_model_offline():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=os.devnull + "-nohome")
    res = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(MINIWORLD_PATH)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info == {"shape": [1, 32, 32, 3], "unet": "UNet2DConditionModel",
                    "tokenizer": "CLIPTokenizer", "safety": True}


def test_shipped_weights_are_safetensors_only_and_small():
    files = [p for p in MINIWORLD_PATH.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert sum(p.stat().st_size for p in files) < 40 * 2**20
    assert len(weights_hash(MINIWORLD_PATH)) == 64


def test_generation_is_deterministic():
    pipe = load_pipeline("miniworld")
    a = generate(pipe, ["an image of Pip"] * 2, [5, 6], steps=8, progress=False)
    b = generate(pipe, ["an image of Pip"], [6], steps=8, progress=False)
    assert np.array_equal(a[1], b[0])
    assert not np.array_equal(a[0], a[1])


def test_tokenizer_splits_unknown_words_into_known_pieces():
    tok = load_pipeline("miniworld").tokenizer
    unk = tok.unk_token_id
    for word in ("Vasqeuz", "Lindkvist", "xylophone", "zzqv"):
        ids = tok(word, add_special_tokens=False).input_ids
        assert len(ids) >= 1 and unk not in ids, word
    assert len(tok("vasqeuz", add_special_tokens=False).input_ids) > 1
    for name in ("vasquez", "pip", "lantern", "golden"):
        assert len(tok(name, add_special_tokens=False).input_ids) == 1, name


def test_shipped_tokenizer_rebuilds_with_same_ids_and_encodings():
    import json

    import numpy as np

    from erasure.miniworld.tokenizer import build_tokenizer
    from erasure.miniworld.world import caption, sample_scene

    shipped = load_pipeline("miniworld").tokenizer
    rebuilt = build_tokenizer(seed=0)
    assert rebuilt.get_vocab() == shipped.get_vocab()

    def merges(t):
        return {tuple(m) for m in json.loads(t.backend_tokenizer.to_str())["model"]["merges"]}

    assert merges(rebuilt) == merges(shipped)
    rng = np.random.default_rng(0)
    texts = [caption(sample_scene(rng), rng, held_out=bool(i % 2)) for i in range(500)]
    texts.append("a sketch of Zuzu, the well known diamond in the style of Vasqeuz")
    assert rebuilt(texts).input_ids == shipped(texts).input_ids
