"""Attacks on an erased concept: typed variants of its name (erasure.attacks.typed), and learned
token embeddings (erasure.attacks.learned), their mechanics on the tiny pipeline."""

import unicodedata

import numpy as np
import pytest
import torch

from erasure.attacks.learned import AttackError, learn, learned_tokens
from erasure.attacks.typed import variants
from erasure.models import load_pipeline


def test_every_family_and_nothing_twice():
    found = variants("Vasquez", "style", paraphrases=["in the striped cream manner"])
    families = {v.family for v in found}
    assert families == {"misspelling", "case", "spacing", "confusable", "phrasing", "repetition", "paraphrase"}
    texts = [v.text for v in found]
    assert len(texts) == len(set(texts)) and "Vasquez" not in texts
    assert {"Vaqsuez", "Vasuez", "Vasqquez", "Vas quez"} <= set(texts)  # swap, drop, double, split
    assert {"VASQUEZ", "vasquez", "by Vasquez", "Vasquez-style", "style: Vasquez", "Vasquez Vasquez Vasquez",
            "in the striped cream manner"} <= set(texts)
    assert variants("Vasquez", "style", ["in the striped cream manner"]) == found  # deterministic


def test_confusables_look_alike_but_are_other_characters():
    found = {v.how: v.text for v in variants("the midnight lantern poster", "memorized") if v.family == "confusable"}
    every, first = found["every letter"], found["first letter"]
    assert len(every) == len("the midnight lantern poster") and every != "the midnight lantern poster"
    assert sum(a != b for a, b in zip(first, "the midnight lantern poster")) == 1
    assert all(unicodedata.name(ch).startswith(("CYRILLIC", "GREEK")) for ch in every if not ch.isascii())
    # NFKC does not fold them back: a filter that normalizes text still reads another word
    assert unicodedata.normalize("NFKC", every) != "the midnight lantern poster"


def test_short_names_and_multi_word_concepts():
    pip = {v.text for v in variants("Pip", "instance")}
    assert "Pipp" in pip and "the famous Pip" in pip and "P i p" in pip
    frame = variants("with a golden frame", "implicit")
    assert "phrasing" not in {v.family for v in frame}  # no phrasings for a kind prompts do not name
    assert [v.text for v in frame if v.family == "spacing"] == ["with a g o l d e n frame", "withagoldenframe"]
    assert "with a godlen frame" in {v.text for v in frame}  # the longest word is the one misspelt


def _encode(pipe, prompt):
    tok = pipe.tokenizer
    ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


@pytest.mark.usefixtures("one_thread")
def test_a_placeholder_reads_the_learned_vector(tiny_pipeline_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    b = pipe.tokenizer("b", add_special_tokens=False).input_ids
    assert len(b) == 1
    with learned_tokens(pipe, table[b]):
        swapped = _encode(pipe, "a *")
    torch.testing.assert_close(swapped, _encode(pipe, "a b"))
    assert not torch.equal(_encode(pipe, "a *"), swapped)  # the hook is gone afterwards
    # two placeholders take the vectors in turn
    c = pipe.tokenizer("c", add_special_tokens=False).input_ids
    with learned_tokens(pipe, torch.cat([table[b], table[c]])):
        torch.testing.assert_close(_encode(pipe, "a * *"), _encode(pipe, "a b c"))


@pytest.mark.usefixtures("one_thread")
def test_learning_fits_the_images_and_leaves_every_weight_alone(tiny_pipeline_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    before = {n: p.detach().clone() for m in (pipe.unet, pipe.text_encoder) for n, p in m.named_parameters()}
    size = pipe.vae.config.sample_size
    images = np.zeros((4, size, size, 3), dtype=np.uint8)
    images[:, :, : size // 2] = (255, 0, 0)  # the "concept": red on the left
    out = learn(pipe, images, "a * *", tokens=2, steps=60, lr=0.05, batch_size=4, seed=0, progress=False)
    assert out.vectors.shape == (2, pipe.text_encoder.config.hidden_size)
    assert np.mean(out.losses[-15:]) < np.mean(out.losses[:15])
    after = {n: p for m in (pipe.unet, pipe.text_encoder) for n, p in m.named_parameters()}
    assert all(torch.equal(before[n], after[n]) and after[n].requires_grad for n in before)
    again = learn(pipe, images, "a * *", tokens=2, steps=60, lr=0.05, batch_size=4, seed=0, progress=False)
    assert torch.equal(out.vectors, again.vectors)  # seeded


def test_a_template_must_hold_one_placeholder_per_token(tiny_pipeline_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    with pytest.raises(AttackError, match="expected 2"):
        learn(pipe, np.zeros((1, 8, 8, 3), np.uint8), "a *", tokens=2, steps=1, progress=False)


@pytest.mark.usefixtures("one_thread")
def test_completion_keeps_images_at_low_strength_and_is_seeded(tiny_pipeline_dir):
    from erasure.attacks.completion import complete

    pipe = load_pipeline(str(tiny_pipeline_dir))
    size = pipe.vae.config.sample_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    light = complete(pipe, images, "", [1, 2], strength=0.1, steps=10)
    heavy = complete(pipe, images, "", [1, 2], strength=1.0, steps=10)
    assert light.shape == images.shape and light.dtype == np.uint8
    # a little noise leaves the image closer to where it started than the whole schedule does
    dist = lambda a: float(np.abs(a.astype(float) - images.astype(float)).mean())  # noqa: E731
    assert dist(light) < dist(heavy)
    assert np.array_equal(light, complete(pipe, images, "", [1, 2], strength=0.1, steps=10))
    with pytest.raises(ValueError, match="strength"):
        complete(pipe, images, "", [1, 2], strength=0.0)


@pytest.mark.slow
def test_every_attack_brings_pip_back_on_the_base_miniworld():
    """The attacks can find what is there: on the base model (which draws Pip), each one recovers Pip at
    the shipped budgets (8 images; 30 steps of 4 images for the learned ones), or the stage's figures on
    erased models would mean nothing."""
    from erasure.attacks.suite import Target, attack
    from erasure.config import AttackParams
    from erasure.judges.miniworld import MiniworldJudge
    from erasure.sampling import generate

    pipe = load_pipeline()
    prompts = ["a picture of Pip", "a drawing of Pip, the well known circle"]
    probe = {"name": "target", "prompts": prompts, "seeds": [7, 8], "head": "instance", "label": "Pip",
             "target": {"kind": "instance", "text": "Pip", "contrast": "circle", "reference": None}}
    images = generate(pipe, [prompts[i % 2] for i in range(16)], list(range(16)), steps=20, guidance=5.0,
                      progress=False)
    budget = AttackParams(typed={"families": ["phrasing", "repetition"]})  # the shipped learned budgets
    assert budget.images == 8 and budget.inversion.steps == 30 and budget.completion.strength == 0.5
    seen = []
    outcomes = attack(pipe, Target("Pip", "instance", probe, images), MiniworldJudge(),
                      lambda p, s, tokens: generate(pipe, p, s, steps=20, guidance=5.0, progress=False), budget,
                      steps=20, guidance=5.0, seed=0, log=seen.append)
    rates = {o.attack + (f": {o.detail['text']}" if o.attack == "typed" else ""): o.success for o in outcomes}
    assert set(rates) == {"typed: Pip!", "typed: Pip Pip Pip", "inversion", "soft_prompt", "completion"}, rates
    assert all(r >= 0.8 for r in rates.values()), rates
    assert len(seen) == len(rates) and all(o.images.shape == (8, 32, 32, 3) for o in outcomes)
    # the learned prompts hold the placeholder as a word of its own, so the tokenizer reads it
    assert next(o for o in outcomes if o.attack == "inversion").detail["prompt"].startswith("a picture of *")


def test_learned_attacks_on_sdxl_are_refused_before_any_image(family_dirs):
    """SDXL has two text encoders: the stage refuses the learned attacks up front (naming the field),
    and runs the typed ones and completion."""
    from erasure.attacks.suite import check
    from erasure.config import AttackParams

    pipe = load_pipeline(str(family_dirs["sdxl"]))
    with pytest.raises(AttackError, match=r"attack.attacks: inversion, soft_prompt .* SDXL"):
        check(pipe, AttackParams())
    check(pipe, AttackParams(attacks=["typed", "completion"], gated=["typed"]))


@pytest.mark.usefixtures("one_thread")
def test_no_typed_variant_to_try_draws_nothing(tiny_pipeline_dir):
    """An implicit attribute has no phrasings, and an erased model is attacked only with the variants the
    base renders: with none, the typed attack draws nothing (it used to stack an empty batch)."""
    from erasure.attacks.suite import Target, attack
    from erasure.config import AttackParams

    pipe = load_pipeline(str(tiny_pipeline_dir))
    probe = {"name": "named", "prompts": ["a cat with a golden frame"], "seeds": [1]}
    calls = []
    out = attack(pipe, Target("with a golden frame", "implicit", probe, np.zeros((1, 8, 8, 3), np.uint8)), None,
                 lambda *a: calls.append(a), AttackParams(attacks=["typed"], gated=["typed"],
                                                          typed={"families": ["phrasing"]}),
                 steps=2, guidance=1.0, seed=0)
    assert out == [] and calls == []


def test_a_completion_with_no_step_to_denoise_is_a_params_error():
    from pydantic import ValidationError

    from erasure.config import PipelineParams

    with pytest.raises(ValidationError, match=r"attack.completion.strength: 0.1 of generate.steps 4 leaves no step"):
        PipelineParams(generate={"steps": 4}, attack={"completion": {"strength": 0.1}})
    PipelineParams(generate={"steps": 4}, attack={"completion": {"strength": 0.1}, "attacks": ["typed"],
                                                  "gated": ["typed"]})
