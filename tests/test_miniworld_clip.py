"""The shipped small CLIP: loads as the `clip` judge and reads the miniworld's true renders."""

import json

import numpy as np
import pytest

from erasure.judges import build
from erasure.miniworld.clip_train import SHIPPED_CLIP
from erasure.miniworld.probes import probes_for
from erasure.miniworld.render import Scene, render

KW = dict(paraphrases=[], eval_prompts=[], reference_images=[], blocked=set(), n=4, seed=0)
COLORS = ("red", "green", "blue", "purple")


@pytest.fixture(scope="module")
def judge():
    return build("clip", model=str(SHIPPED_CLIP))


def scenes(**kw) -> np.ndarray:
    return np.stack([render(Scene(color=c, center=(15.0 + k, 16.5), radius=9.0, rotation=0.1 * k, **kw))
                     for k, c in enumerate(COLORS)])


def test_shipped_clip_is_small_safetensors_with_the_tokenizers_ids():
    assert (SHIPPED_CLIP / "model.safetensors").stat().st_size < 16 * 2**20
    assert not list(SHIPPED_CLIP.glob("*.bin"))
    cfg = json.loads((SHIPPED_CLIP / "config.json").read_text())["text_config"]
    tok = json.loads((SHIPPED_CLIP / "tokenizer.json").read_text())["model"]["vocab"]
    assert cfg["eos_token_id"] == tok["<|endoftext|>"] and cfg["bos_token_id"] == tok["<|startoftext|>"]
    assert cfg["vocab_size"] >= len(tok)


def test_reads_circle_against_square_and_back(judge):
    circles, squares = scenes(object="circle"), scenes(object="square")
    probe = {"name": "t", "target": {"text": "circle", "contrast": "square"}}
    assert judge.detect(circles, probe).all() and not judge.detect(squares, probe).any()
    probe = {"name": "t", "target": {"text": "square", "contrast": "circle"}}
    assert judge.detect(squares, probe).all() and not judge.detect(circles, probe).any()


def test_probe_targets_read_styles_objects_and_instances(judge):
    """Through the probes' own target dicts: what the pipeline hands the judge."""
    style = probes_for("Vasquez", "style", anchor=None, **KW)[0].as_dict()
    assert judge.detect(scenes(object="heart", style="Vasquez"), style).all()
    assert not judge.detect(scenes(object="heart"), style).any()
    star = probes_for("star", "object", anchor=None, **KW)[0].as_dict()
    assert judge.detect(scenes(object="star"), star).all()
    assert not judge.detect(scenes(object="moon"), star).any()
    pip = probes_for("Pip", "instance", anchor="circle", **KW)[0].as_dict()
    assert pip["target"]["contrast"] == "circle"
    assert judge.detect(scenes(instance="Pip"), pip).all()
    assert not judge.detect(scenes(object="circle"), pip).any()
