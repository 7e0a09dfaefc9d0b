"""Miniworld evaluation probes and the metrics read from them."""

import numpy as np
import pytest

from erasure.concept import ConceptError
from erasure.evaluate import drift, summarize
from erasure.miniworld.probes import misspell, probes_for

KW = dict(anchor=None, paraphrases=[], eval_prompts=[], reference_images=[], n=8, seed=0)


def test_style_probes_name_the_target_and_skip_blocklisted_neighbours():
    probes = probes_for("Vasquez", "style", blocked={"Vasquez", "Okafor"}, **KW)
    names = [p.name for p in probes]
    assert names[0] == "target" and "misspelling" in names
    assert all("Vasquez" in p for p in probes[0].prompts)
    assert "neighbour:Okafor" not in names and "neighbour:Tanaka" in names
    assert all(len(p.prompts) == len(p.seeds) == 8 for p in probes)
    again = probes_for("Vasquez", "style", blocked={"Vasquez", "Okafor"}, **KW)
    assert [p.as_dict() for p in again] == [p.as_dict() for p in probes]  # deterministic


def test_instance_probes_check_the_class_and_implicit_reads_unnamed_prompts():
    probes = probes_for("Pip", "instance", blocked={"Pip"}, **{**KW, "anchor": "circle"})
    assert "anchor:circle" in [p.name for p in probes]
    implicit = probes_for("with a golden frame", "implicit", blocked=set(), **KW)
    assert implicit[0].name == "target" and not any("golden" in p for p in implicit[0].prompts)
    assert all("golden frame" in p for p in implicit[1].prompts)


def test_adding_a_concept_changes_only_the_prompts_that_showed_it():
    """A grown blocklist must not reshuffle the other concepts' prompts (their cached images would
    all be drawn again): only the scenes that showed the added concept are redrawn."""
    kw = {**KW, "n": 64}
    before = probes_for("with a golden frame", "implicit", blocked={"with a golden frame", "Vasquez"}, **kw)
    after = probes_for("with a golden frame", "implicit", blocked={"with a golden frame", "Vasquez", "Okafor"}, **kw)
    changed = [(a, b) for p, q in zip(before, after) for a, b in zip(p.prompts, q.prompts) if a != b]
    assert changed and all("Okafor" in a and "Okafor" not in b for a, b in changed)
    assert sum(len(p.prompts) for p in before) > 4 * len(changed)
    # A probe that forces the style is not touched by excluding another style at all.
    vasquez = [probes_for("Vasquez", "style", blocked=b, **kw)[0].prompts
               for b in ({"Vasquez"}, {"Vasquez", "Okafor"})]
    assert vasquez[0] == vasquez[1]
    # A neighbour joining the blocklist is replaced; the other neighbours keep their prompts and seeds.
    probes = [{p.name: (p.prompts, p.seeds) for p in probes_for("Vasquez", "style", blocked=b, **kw)}
              for b in ({"Vasquez"}, {"Vasquez", "Okafor"})]
    assert "neighbour:Okafor" in probes[0] and "neighbour:Okafor" not in probes[1]
    kept = [name for name in probes[1] if name in probes[0]]
    assert "neighbour:Lindqvist" in kept and all(probes[0][name] == probes[1][name] for name in kept)


def test_unknown_concepts_and_missing_references_are_refused():
    with pytest.raises(ConceptError, match="expected one of Vasquez"):
        probes_for("Picasso", "style", blocked=set(), **KW)
    with pytest.raises(ConceptError, match="reference_images"):
        probes_for("the midnight lantern poster", "memorized", blocked=set(), **KW)


def test_misspell_and_summary():
    assert misspell("Vasquez") == "Vaqsuez" and misspell("with a golden frame") != "with a golden frame"
    probes = {"target": {"before": 1.0, "after": 0.25}, "neighbour:A": {"before": 0.9, "after": 0.8},
              "anchor:circle": {"before": 1.0, "after": 1.0}}
    s = summarize(probes)
    assert s["target_reduction"] == 0.75 and s["worst_neighbour"] == "A"
    assert s["neighbour_max_drop"] == pytest.approx(0.1)
    a = np.zeros((2, 4, 4, 3), np.uint8)
    assert drift(a, a) == 0.0 and drift(a, a + 255) == 1.0


def test_generic_prompts_name_no_blocklisted_concept_in_any_case():
    """The blocklist names concepts as written ("Vasquez"); the generic prompts (FID, drift) named
    erased styles until the world's scenes casefolded what they exclude."""
    from erasure.miniworld.probes import generic, promised_renders

    blocked = {"Vasquez", "Okafor", "Tanaka", "Moreau", "star"}
    prompts, _, real = generic(64, 0, blocked)
    assert not [p for p in prompts if any(b.casefold() in p.casefold() for b in blocked)]
    assert any("Lindqvist" in p for p in prompts)  # the style left is still drawn
    assert np.array_equal(real, promised_renders(64, 0, blocked, set()))
    assert generic(64, 0, {b.upper() for b in blocked})[0] == prompts
