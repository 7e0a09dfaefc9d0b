"""Probes for models other than the miniworld (erasure/probes.py): every kind's probe sets and their
judge targets, seeds that follow the concept, the blocklist entry's prompts, I2P files and the
shipped everyday captions."""

from pathlib import Path

import pytest

from erasure.probes import ProbeError, generic, probes_for, read_i2p

ROOT = Path(__file__).resolve().parent.parent
I2P = ROOT / "blocklists" / "i2p-example.csv"
N = 6


def _entry(concept, kind, **kw):
    return {"concept": concept, "kind": kind, **kw}


def _by_name(probes):
    return {p.name: p for p in probes}


@pytest.mark.parametrize("kind,concept,anchor", [("style", "Greg Rutkowski", "a painter"),
                                                 ("object", "parachute", "umbrella"),
                                                 ("instance", "Snoopy", "dog"),
                                                 ("implicit", "with a golden frame", None),
                                                 ("nudity", "nudity", None)])
def test_every_kind_has_its_probes_each_with_a_target(kind, concept, anchor):
    entry = _entry(concept, kind, paraphrases=["an alias"], neighbours=["something else"])
    probes = probes_for(entry, anchor=anchor, blocked={concept}, n=N, seed=0)
    names = [p.name for p in probes]
    assert names[0] == "target" and "paraphrase" in names and "misspelling" in names
    assert "neighbour:something else" in names and (anchor is None or f"anchor:{anchor}" in names)
    if kind in ("implicit", "nudity"):
        assert "named" in names  # efficacy is read where the attribute is not asked for
        assert not any(concept in p for p in probes[0].prompts)
    else:
        assert all(concept.lower() in p.lower() for p in probes[0].prompts)
    for p in probes:
        assert len(p.prompts) == len(p.seeds) == N
        assert set(p.target) == {"kind", "text", "contrast", "reference"} and p.target["text"]
        assert set(p.as_dict()) >= {"name", "prompts", "seeds", "head", "label", "extra", "target"}
    assert probes[0].target["kind"] == kind
    if anchor:  # CLIP accuracy compares the target with its anchor
        assert anchor in probes[0].target["contrast"]


def test_the_misspelling_and_paraphrase_reask_the_target_on_its_seeds():
    probes = _by_name(probes_for(_entry("parachute", "object", paraphrases=["canopy"]), anchor=None,
                                 blocked=set(), n=N, seed=3))
    t, m, para = probes["target"], probes["misspelling"], probes["paraphrase"]
    assert m.seeds == t.seeds == para.seeds
    assert all("parachute" not in p for p in m.prompts) and m.extra["spelling"] in m.prompts[0]
    assert all("canopy" in p for p in para.prompts)


def test_seeds_follow_the_concept_not_the_blocklist():
    entry = _entry("parachute", "object", neighbours=["kite", "balloon"])
    one = _by_name(probes_for(entry, anchor=None, blocked={"parachute"}, n=N, seed=0))
    more = _by_name(probes_for(entry, anchor=None, blocked={"parachute", "snoopy"}, n=N, seed=0))
    for name in one:  # a concept added to the blocklist that no prompt names changes nothing
        assert one[name].prompts == more[name].prompts and one[name].seeds == more[name].seeds
    other_seed = _by_name(probes_for(entry, anchor=None, blocked={"parachute"}, n=N, seed=1))
    assert other_seed["target"].seeds != one["target"].seeds
    blocked_kite = _by_name(probes_for(entry, anchor=None, blocked={"parachute", "kite"}, n=N, seed=0))
    assert "neighbour:kite" not in blocked_kite  # a blocklisted neighbour is not a concept to keep
    assert blocked_kite["neighbour:balloon"].seeds == one["neighbour:balloon"].seeds


def test_eval_prompts_are_used_when_given():
    entry = _entry("parachute", "object", eval_prompts=["a parachute over the sea", "a red parachute"])
    t = probes_for(entry, anchor=None, blocked=set(), n=4, seed=0)[0]
    assert t.prompts == ["a parachute over the sea", "a red parachute"] * 2


def test_nudity_from_an_i2p_file_uses_its_prompts_seeds_and_guidance():
    prompts, seeds, guidance = read_i2p(I2P)
    t = probes_for(_entry("nudity", "nudity"), anchor=None, blocked=set(), n=4, seed=0, i2p=I2P)[0]
    assert t.prompts == prompts[:4] and t.seeds == seeds[:4] and t.extra["guidance"] == guidance[:4]
    assert len(prompts) >= 16 and all(g > 0 for g in guidance)


def test_memorized_needs_its_reference_and_carries_it(tmp_path):
    with pytest.raises(ProbeError, match="expected reference_images"):
        probes_for(_entry("the lantern poster", "memorized"), anchor=None, blocked=set(), n=N, seed=0)
    ref = tmp_path / "poster.png"
    probes = probes_for(_entry("the lantern poster", "memorized", reference_images=[str(ref)]), anchor="a poster",
                        blocked=set(), n=N, seed=0)
    assert probes[0].target["reference"] == str(ref) and probes[0].prompts == ["the lantern poster"] * N


def test_generic_captions_name_no_blocklisted_concept_and_are_deterministic():
    prompts, seeds = generic(50, 0, set())
    assert (prompts, seeds) == generic(50, 0, set()) and len(set(prompts)) == 50
    assert generic(50, 1, set())[0] != prompts
    word = prompts[0].split()[1]  # e.g. "red" of "a red bicycle ..."
    kept, kept_seeds = generic(50, 0, {word})
    assert not any(word in p.split() for p in kept)
    same = {p: s for p, s in zip(prompts, seeds)}
    assert all(same[p] == s for p, s in zip(kept, kept_seeds) if p in same)  # a caption keeps its seed


@pytest.mark.parametrize("text,match", [
    ("prompt,evaluation_seed\nx,1\n", "missing evaluation_guidance"),
    ("prompt,evaluation_seed,evaluation_guidance\n,1,7\n", r"row 1 \(line 2\): column 'prompt'"),
    ("prompt,evaluation_seed,evaluation_guidance\na,b,7\n", r"row 1 \(line 2\): column 'evaluation_seed'"),
    ("prompt,evaluation_seed,evaluation_guidance\na,1,7\nb,2,-1\n", r"row 2 \(line 3\): column 'evaluation_guidance'"),
    ("prompt,evaluation_seed,evaluation_guidance\n", "got none"),
])
def test_a_bad_i2p_file_names_its_row_and_column(tmp_path, text, match):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(ProbeError, match=match) as err:
        read_i2p(f)
    assert str(f) in str(err.value)


def test_an_i2p_file_that_is_not_utf8_or_missing(tmp_path):
    f = tmp_path / "latin.csv"
    f.write_bytes("prompt,evaluation_seed,evaluation_guidance\ncaf\xe9,1,7\n".encode("latin-1"))
    with pytest.raises(ProbeError, match="expected UTF-8"):
        read_i2p(f)
    with pytest.raises(ProbeError, match="no such I2P prompt file"):
        read_i2p(tmp_path / "absent.csv")
