"""The attribute kind (a colour: "a red car"): its prompts, its miniworld probes, and UCE erasing one on
the shipped miniworld while the other colours hold."""

import pytest

from erasure.concept import Concept, ConceptError
from erasure.miniworld.probes import probes_for
from erasure.miniworld.prompts import anchor_prompts as world_anchor_prompts
from erasure.miniworld.prompts import neighbour_prompts
from erasure.prompts import anchor_prompts, target_prompt


def test_an_attribute_is_swapped_for_its_anchor_with_the_article_agreeing():
    red = Concept(text="red", kind="attribute", anchor="orange")
    assert target_prompt(red, "a picture of an orange circle") == "a picture of a red circle"
    assert target_prompt(red, "An orange car") == "A red car"
    orange = Concept(text="orange", kind="attribute", anchor="blue")
    assert target_prompt(orange, "a photo of a blue kite") == "a photo of an orange kite"
    generic = anchor_prompts(orange, 8, "some/sd-model")
    assert all(" blue " in p for p in generic) and len(set(generic)) == 8
    world = anchor_prompts(orange, 16, "miniworld")
    assert all(" blue " in p for p in world), world  # the anchor colour forced and named
    assert all(" orange " in target_prompt(orange, p, i) and "blue" not in target_prompt(orange, p, i)
               for i, p in enumerate(world))


def test_an_attribute_without_an_anchor_names_the_field():
    with pytest.raises(ConceptError, match=r"'red' \(attribute\): needs an anchor"):
        anchor_prompts(Concept(text="red", kind="attribute"), 4, "miniworld")


def test_miniworld_probes_read_the_colour_head_and_keep_the_colours_off_the_list():
    probes = probes_for("red", "attribute", anchor="blue", paraphrases=["crimson"], eval_prompts=[],
                        reference_images=[], blocked={"red", "green", "star"}, n=12, seed=0)
    target = probes[0]
    assert (target.name, target.head, target.label) == ("target", "color", "red")
    assert all(" red " in p and "star" not in p for p in target.prompts), target.prompts
    assert target.target == {"kind": "attribute", "text": "a red shape", "contrast": "a shape", "reference": None}
    neighbours = {p.label for p in probes if p.name.startswith("neighbour:")}
    assert neighbours and neighbours <= {"blue", "yellow", "purple", "orange"}  # green is on the list
    assert [p.prompts for p in probes if p.name == "paraphrase"][0][0].count("crimson") == 1
    # what erasing a colour endangers first: the other colours, named
    prompts = neighbour_prompts([("red", "attribute")], 10, seed=0)
    assert prompts and all("red" not in p for p in prompts)
    assert {c for c in ("green", "blue", "yellow", "purple", "orange") if any(f" {c} " in p for p in prompts)} \
        == {"green", "blue", "yellow", "purple", "orange"}
    with pytest.raises(ConceptError, match="expected one of red, green"):
        probes_for("teal", "attribute", anchor=None, paraphrases=[], eval_prompts=[], reference_images=[],
                   blocked=set(), n=4, seed=0)
    assert all("blue" in p for p in world_anchor_prompts(Concept(text="red", kind="attribute", anchor="blue"), 6))


@pytest.mark.slow
def test_uce_erases_a_colour_on_the_shipped_miniworld_and_keeps_the_others(tmp_path, one_thread):
    from erasure.judges.miniworld import MiniworldJudge
    from erasure.miniworld.recipes import recipe
    from erasure.models import load_pipeline
    from erasure.sampling import generate
    from erasure.trainer import EraseSettings, erase, plan

    probes = probes_for("red", "attribute", anchor="blue", paraphrases=[], eval_prompts=[], reference_images=[],
                        blocked={"red"}, n=8, seed=0)
    probes = [p for p in probes if p.name in ("target", "neighbour:blue", "neighbour:green")]
    judge = MiniworldJudge()

    def rates(pipe) -> dict[str, float]:
        return {p.name: float(judge.detect(generate(pipe, p.prompts, p.seeds, steps=20, guidance=5.0, progress=False),
                                           p.as_dict()).mean()) for p in probes}

    pipe = load_pipeline()
    before = rates(pipe)
    assert before["target"] >= 0.9, before  # the base model draws red when asked
    settings = EraseSettings(method="uce", seed=0)
    jobs = plan([Concept(text="red", kind="attribute", anchor="blue")], settings,
                overrides=[{"options": recipe("uce", "attribute")["options"]}])  # the shipped recipe
    erase(pipe, jobs, settings, tmp_path / "run", None, progress=False)
    after = rates(pipe)
    assert after["target"] <= 0.10, after
    assert after["neighbour:blue"] >= before["neighbour:blue"] - 0.10, (before, after)
    assert after["neighbour:green"] >= before["neighbour:green"] - 0.10, (before, after)
