"""Anchor choice: explicit wins, methods that need none get none, otherwise the closest candidate."""

import pytest
import torch

from erasure.anchors import choose, guidance_embedder, text_embedder
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


def test_miniworld_guidance_directions_pick_each_instances_class():
    from erasure.miniworld.concepts import INSTANCES, OBJECTS
    from erasure.models import load_pipeline

    embed = guidance_embedder(load_pipeline("miniworld"))
    for name, inst in INSTANCES.items():
        c = choose(name, "instance", "ca", anchor=None, candidates=list(OBJECTS), embed=embed, paraphrases=[],
                   no_anchor_methods=[])
        assert c.anchor == inst.object, (name, c.scores)
        assert "guidance-direction" in c.reason


def test_the_anchors_stage_never_picks_a_concept_the_blocklist_also_erases():
    from erasure.config import PipelineParams
    from erasure.pipeline.anchors import choose_and_plan

    entries = [{"concept": "star", "kind": "object"}, {"concept": "Diamond", "kind": "object"}]
    chosen = choose_and_plan(PipelineParams(), entries)
    for c in chosen.values():  # diamond is the star's closest object (0.84), and erased too
        assert c["anchor"] not in ("star", "diamond") and not {"star", "diamond"} & set(c["scores"]), c


@pytest.mark.parametrize("make", ["guidance", "text"])
def test_embedders_give_repeatable_unit_vectors(tiny_pipeline_dir, make):
    from erasure.models import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir))
    embed = guidance_embedder(pipe) if make == "guidance" else text_embedder(pipe.tokenizer, pipe.text_encoder)
    texts = ["an image of a dog", "an image of a cup", "an image of a hat"]
    a, b = embed(texts), embed(texts)
    assert a.shape[0] == 3 and torch.equal(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(a[0], a[1])
