"""Anchor choice: explicit wins, methods that need none get none, otherwise the closest candidate."""

import pytest
import torch

from erasure.anchors import choose, text_embedder
from erasure.concept import ConceptError

COMMON = dict(paraphrases=[], no_anchor_methods=["esd", "loss-max"])


def _fake_embed(table):
    def embed(texts):
        return torch.nn.functional.normalize(torch.tensor([table[t] for t in texts], dtype=torch.float), dim=-1)
    return embed


def test_explicit_anchor_wins_and_esd_needs_none():
    c = choose("Pip", "instance", "ca", anchor="circle", candidates=["square"], embed=None, **COMMON)
    assert (c.anchor, c.reason) == ("circle", "given in the blocklist")
    c = choose("Vasquez", "style", "esd", anchor=None, candidates=["x"], embed=None, **COMMON)
    assert c.anchor is None and "unconditional" in c.reason


def test_closest_candidate_is_chosen_never_the_target_or_a_paraphrase():
    table = {"an image of Pip": [1, 0], "an image of circle": [0.9, 0.1], "an image of square": [0, 1],
             "an image of pip": [1, 0]}
    c = choose("Pip", "instance", "ca", anchor=None, candidates=["square", "circle", "pip"], embed=_fake_embed(table),
               paraphrases=[], no_anchor_methods=[])
    assert c.anchor == "circle" and set(c.scores) == {"square", "circle"} and "similarity" in c.reason
    with pytest.raises(ConceptError, match="anchors.candidates.instance"):
        choose("Pip", "instance", "ca", anchor=None, candidates=["Pip"], embed=None, paraphrases=[],
               no_anchor_methods=[])


def test_miniworld_text_encoder_picks_each_instances_class():
    from transformers import CLIPTextModel, CLIPTokenizer

    from erasure.miniworld.concepts import INSTANCES, OBJECTS
    from erasure.models import MINIWORLD_PATH

    embed = text_embedder(CLIPTokenizer.from_pretrained(MINIWORLD_PATH / "tokenizer"),
                          CLIPTextModel.from_pretrained(MINIWORLD_PATH / "text_encoder"))
    for name, inst in INSTANCES.items():
        c = choose(name, "instance", "ca", anchor=None, candidates=list(OBJECTS), embed=embed, paraphrases=[],
                   no_anchor_methods=[])
        assert c.anchor == inst.object, (name, c.scores)
