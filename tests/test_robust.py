"""Robust erasure (issue 20): the trainer's robust phase, its rounds, resume and settings; and on the
miniworld, that it takes back what the learned attacks recover after a plain erasure."""

import numpy as np
import pytest
import torch

from erasure.concept import Concept
from erasure.delta import load_delta
from erasure.models import load_pipeline, weights_hash
from erasure.trainer import EraseSettings, erase, phases_of, plan

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT = ("a dog", "a cup")  # the tiny tokenizer holds 64 tokens
CAT = Concept(text="cat", kind="style", anchor_prompts=SHORT)
DOG = Concept(text="dog", kind="style", anchor_prompts=SHORT)
TOY = {"images": 2, "image_steps": 2, "first_steps": 2, "inner_steps": 1, "inner_batch": 2, "soft_tokens": 2,
       "preserve_prompts": 2, "preserve_ddim_steps": 2}


def _settings(**robust) -> EraseSettings:
    return EraseSettings(method="esd", mode="sequential", steps=3, pool_size=6, checkpoint_every=2,
                         options={"ddim_steps": 4},
                         robust={"rounds": 2, "steps": 2, "batch_size": 2, "options": TOY} | robust)


def _erase(pipe_dir, workdir, settings, out=None, **kw):
    pipe = load_pipeline(str(pipe_dir))
    return erase(pipe, plan([CAT, DOG], settings), settings, workdir, out, model_spec="tiny",
                 base_hash=weights_hash(pipe_dir), progress=False, **kw)


def test_the_robust_phase_follows_the_concepts_and_trains_in_rounds(tiny_pipeline_dir, tmp_path):
    settings = _settings()
    jobs = plan([CAT, DOG], settings)
    phases = phases_of(jobs, settings)
    assert [[j.concept.text for j in p] for p in phases] == [["cat"], ["dog"], ["cat", "dog"]]
    assert {j.method for j in phases[-1]} == {"adversarial"} and all(j.steps == 4 for j in phases[-1])
    result = _erase(tiny_pipeline_dir, tmp_path / "w", settings, tmp_path / "d.safetensors")
    assert result.steps_run == 3 + 3 + 8
    pools = sorted(p.name for p in (tmp_path / "w" / "phases" / "2").glob("pool-*"))
    assert pools == ["pool-0-round1.safetensors", "pool-0.safetensors", "pool-1-round1.safetensors",
                     "pool-1.safetensors"]
    # each round learned the attacks further (warm start): the vectors moved between rounds
    from erasure.methods.base import Pool

    r0, r1 = (Pool.load(tmp_path / "w" / "phases" / "2" / n) for n in ("pool-0.safetensors", "pool-0-round1.safetensors"))
    assert not torch.equal(r0.conds["_vectors_soft"], r1.conds["_vectors_soft"])
    assert torch.equal(r0.conds["_z"], r1.conds["_z"])  # the concept's images are drawn once
    # one set of preservation rows (naming neither concept, toward the phase's start) serves both pools
    other = Pool.load(tmp_path / "w" / "phases" / "2" / "pool-1.safetensors")
    kept = [k for k in r0.conds if k.startswith("_keep_")]
    assert kept and all(torch.equal(r0.conds[k], other.conds[k]) for k in kept)
    # the robust rule's tensors are in the delta beside the concepts' own
    tensors, meta = load_delta(tmp_path / "d.safetensors")
    assert any("attn2.to_q" in k for k in tensors) and meta["params"]["settings"]["robust"]["rounds"] == 2


def test_the_robust_phase_splits_its_steps_by_what_each_concept_has_left(tiny_pipeline_dir, tmp_path, monkeypatch):
    from erasure.methods.adversarial import Adversarial, AdversarialOptions
    from erasure.methods.base import Pool

    method = Adversarial()
    pools = [Pool({"x": torch.zeros(1)}, {"_left": torch.tensor([v])}) for v in (1.0, 3.0)]
    shares = method.shares(pools, AdversarialOptions(focus=0.5))
    torch.testing.assert_close(shares, torch.tensor([0.375, 0.625], dtype=torch.float64))  # half even, half by 1:3
    assert method.shares(pools, AdversarialOptions(focus=0)) is None  # evenly, as any joint phase
    # through the trainer: a concept given every share gets every outer step
    seen, batch = [], Pool.batch
    monkeypatch.setattr(Pool, "batch", lambda self, idx: (seen.append(self.conds.get("_named")), batch(self, idx))[1])
    monkeypatch.setattr(Adversarial, "shares", lambda self, p, o: torch.tensor([0.0, 1.0], dtype=torch.float64))
    _erase(tiny_pipeline_dir, tmp_path / "w", _settings(options=TOY | {"focus": 0.5}))
    robust = [t for t in seen if t is not None]
    dog = Pool.load(tmp_path / "w" / "phases" / "2" / "pool-1.safetensors")
    assert len(robust) == 8 and all(torch.equal(t, dog.conds["_named"]) for t in robust)
    assert float(dog.conds["_left"]) > 0  # measured with the pool, on its attack rows


def test_fresh_attacks_join_the_continued_ones_from_the_second_round(tiny_pipeline_dir, tmp_path):
    """fresh_steps: from round 2 each attack is also learned anew, and its prompts are rows of the pool
    beside the name's and the continued attacks' (2 images x (name + 2 attacks), then x (name + 4))."""
    from erasure.methods.base import Pool

    settings = _settings(options=TOY | {"fresh_steps": 2})
    _erase(tiny_pipeline_dir, tmp_path / "w", settings)
    folder = tmp_path / "w" / "phases" / "2"
    r0, r1 = (Pool.load(folder / n) for n in ("pool-0.safetensors", "pool-0-round1.safetensors"))
    kept = len(r0.conds["_keep_cond"])
    assert (len(r0.conds["c"]) - kept, len(r1.conds["c"]) - kept) == (2 * 3, 2 * 5)
    fresh, continued = r1.conds["c"][4:6], r1.conds["c"][2:4]  # the inversion's: learned anew, and continued
    assert not torch.equal(fresh, continued)
    assert r1.rows["c_idx"].max() < len(r1.conds["c"])


@pytest.mark.parametrize("stop", [10, 11])  # 10: killed at a round's boundary (its pool not built yet); 11: mid-round
def test_a_killed_robust_phase_resumes_to_the_same_weights(stop, tiny_pipeline_dir, tmp_path):
    settings = _settings()
    straight = _erase(tiny_pipeline_dir, tmp_path / "a", settings, tmp_path / "a.safetensors")
    out = tmp_path / "b.safetensors"
    _erase(tiny_pipeline_dir, tmp_path / "b", settings, out, stop_after=stop)
    second = _erase(tiny_pipeline_dir, tmp_path / "b", settings, out)
    assert second.steps_run == 14 - stop and second.losses == straight.losses
    a, b = load_delta(tmp_path / "a.safetensors")[0], load_delta(out)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_robust_settings_are_refused_before_any_work(tiny_pipeline_dir, tmp_path):
    # one schema with params.yaml's erase.robust: refused as the settings are built
    with pytest.raises(ValueError, match=r"robust.rule\n  unknown rule 'embedding'"):
        _settings(rule="embedding")
    with pytest.raises(ValueError, match=r"robust.options.imags\n  unknown option 'imags'"):
        _settings(options={"imags": 2})
    with pytest.raises(ValueError, match="both 0"):
        plan([CAT], _settings(options=TOY | {"inversion_tokens": 0, "soft_tokens": 0}))
    bobo = Concept(text="Bobo", kind="instance", anchor_prompts=("a square",))
    emb = EraseSettings(method="ca", rule="embedding", robust={"rounds": 1, "options": TOY})
    with pytest.raises(ValueError, match="text-encoder rows"):
        plan([bobo], emb)


def test_robust_params_name_the_field(tmp_path):
    import yaml

    from erasure.config import ParamsError, load_params

    p = yaml.safe_load(open("params.yaml"))
    p["erase"]["robust"] = {"rounds": 2, "options": {"rounds": 3}}
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(p))
    with pytest.raises(ParamsError, match=r"erase\.robust\.options\.rounds: set rounds beside options"):
        load_params(f)
    p["erase"]["robust"] = {"rounds": 2, "rule": "xatn"}
    f.write_text(yaml.safe_dump(p))
    with pytest.raises(ParamsError, match=r"erase\.robust\.rule: unknown rule 'xatn'.*did you mean 'xattn'"):
        load_params(f)


@pytest.mark.slow
def test_robust_phase_takes_back_what_learned_tokens_recover_on_the_miniworld(tmp_path):
    """UCE on Pip, then the attack stage's learned attacks (its shipped budget) on the held-out card
    prompts: with a short robust phase they recover Pip less than after UCE alone, the other
    instances still drawn."""
    from erasure.attacks.suite import Target, attack
    from erasure.config import load_params
    from erasure.judges.miniworld import MiniworldJudge
    from erasure.miniworld.card import prompt_sets
    from erasure.sampling import generate

    budget = load_params("params.yaml").attack.model_copy(update={"images": 8, "attacks": ["inversion", "soft_prompt"]})
    sets = {(s["kind"], s["concept"]): s for s in prompt_sets(8)}
    pip = sets[("instance", "Pip")]
    probe = {"name": "target", "prompts": pip["prompts"], "seeds": list(range(20_000, 20_008)), "head": "instance",
             "label": "Pip"}
    base = load_pipeline()
    images = generate(base, pip["prompts"][:8], probe["seeds"], steps=20, guidance=5.0, progress=False)
    target = Target("Pip", "instance", probe, images)
    judge = MiniworldJudge()
    concept = Concept(text="Pip", kind="instance", anchor="circle")
    rates = {}
    for rounds in (0, 3):
        pipe = load_pipeline()
        settings = EraseSettings(method="uce", mode="sequential", options={"context_prompts": 64, "preserve_prompts": 128},
                                 # 60 preservation trajectories read at 4 stops: the mechanism at a test's cost
                                 robust={"rounds": rounds, "steps": 30,
                                         "options": {"images": 16, "preserve_prompts": 64, "preserve_stops": 4}})
        erase(pipe, plan([concept], settings), settings, tmp_path / f"r{rounds}", None, progress=False)
        draw = lambda p, s, tok, pipe=pipe: generate(pipe, p, s, steps=20, guidance=5.0, progress=False)  # noqa: E731
        outs = attack(pipe, target, judge, draw, budget, steps=20, guidance=5.0, seed=0, log=lambda m: None)
        rates[rounds] = {o.attack: o.success for o in outs}
        if rounds:
            bobo = sets[("instance", "Bobo")]
            shown = generate(pipe, bobo["prompts"][:8], list(range(30_000, 30_008)), steps=20, guidance=5.0, progress=False)
            assert np.mean(judge.detect(shown, {"head": "instance", "label": "Bobo"})) >= 0.75
    assert max(rates[0].values()) >= 0.5, rates  # UCE alone: the learned tokens bring Pip back
    assert max(rates[3].values()) <= max(rates[0].values()) - 0.25, rates


def test_neighbour_prompts_name_the_family_left_off_the_list():
    """The miniworld's neighbours of an erasure: the other styles beside a style, the other objects beside
    an object, an instance or the implicit attribute; never a concept of the list; none for other models."""
    from erasure.miniworld.concepts import OBJECTS, STYLES
    from erasure.prompts import neighbour_prompts, preservation_prompts

    listed = (Concept(text="Vasquez", kind="style"), Concept(text="star", kind="object"),
              Concept(text="Pip", kind="instance", anchor="circle"))
    got = neighbour_prompts(listed, 40, "miniworld", seed=0)
    assert len(got) == 40 and not any(w in p for p in got for w in ("Vasquez", "star", "Pip"))
    named = {n for p in got for n in (*STYLES, *OBJECTS) if n in p}
    assert {"Okafor", "Lindqvist", "Moreau", "Tanaka"} <= named and {"circle", "triangle", "moon"} <= named
    styles_only = neighbour_prompts((listed[0],), 12, "miniworld", seed=0)
    assert all(any(a in p for a in STYLES) for p in styles_only)
    assert neighbour_prompts(listed, 8, "tiny") == []
    mixed = preservation_prompts(listed, 20, "miniworld", seed=0, neighbours=0.5)
    assert len(mixed) == 20 and mixed[10:] == got[:10]


def test_the_phases_before_the_robust_one_are_found_in_the_phase_cache_with_it_on_or_off(tiny_pipeline_dir, tmp_path):
    """Trying robust settings retrains only the robust phase: the concepts' phases end in the same
    weights whatever erase.robust says, and are found under the same keys."""
    cache = tmp_path / "phases"
    plain = _settings(rounds=0)
    first = _erase(tiny_pipeline_dir, tmp_path / "a", plain, tmp_path / "a.safetensors", phase_cache=cache)
    assert first.steps_run == 6 and first.phases_from_cache == 0
    robust = _erase(tiny_pipeline_dir, tmp_path / "b", _settings(), tmp_path / "b.safetensors", phase_cache=cache)
    assert robust.phases_from_cache == 2 and robust.steps_run == 8  # the robust phase's 2 x 2 x 2 steps only
    other = _erase(tiny_pipeline_dir, tmp_path / "c", _settings(steps=1), None, phase_cache=cache)
    assert other.phases_from_cache == 2 and other.steps_run == 4
    # and from scratch with the robust phase on, its first phases end where the plain run's did
    _erase(tiny_pipeline_dir, tmp_path / "d", _settings(), None, phase_cache=tmp_path / "phases-d")
    from safetensors.torch import load_file

    for f in sorted(cache.glob("*.safetensors")):
        if (tmp_path / "phases-d" / f.name).exists():
            a, b = load_file(str(f)), load_file(str(tmp_path / "phases-d" / f.name))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shared = {f.name for f in cache.glob("*.safetensors")} & {f.name for f in (tmp_path / "phases-d").glob("*")}
    assert len(shared) == 3  # the two phases, and the robust one of run b (the same settings)


@pytest.mark.parametrize("source", ["anchor", "both"])
def test_the_outer_rows_are_noised_from_the_images_x_source_names(source, tiny_pipeline_dir, tmp_path, monkeypatch):
    """x_source 'anchor': every outer row's x_t comes from the anchor prompts' images (drawn once, kept
    across rounds); 'both': from the concept's and the anchor's images alike."""
    from erasure.methods import adversarial
    from erasure.methods.base import Bench, Pool

    seen = []
    noised = Bench.noised

    def spy(self, latents, gen):
        seen.append(latents.clone())
        return noised(self, latents, gen)

    monkeypatch.setattr(Bench, "noised", spy)
    built = adversarial.Adversarial.build_pool

    def build(self, bench, concept, options, size, gen, previous=None):
        seen.clear()
        pool = built(self, bench, concept, options, size, gen, previous)
        outer = seen[-1]  # the preservation rows are noised before (round 1) or carried (later rounds)
        z, za = pool.conds["_z"], pool.conds["_z_anchor"]
        from_anchor = [any(torch.equal(row, a) for a in za) for row in outer]
        from_concept = [any(torch.equal(row, c) for c in z) for row in outer]
        assert all(a or c for a, c in zip(from_anchor, from_concept))
        assert all(from_anchor) if source == "anchor" else (any(from_anchor) and any(from_concept))
        return pool

    monkeypatch.setattr(adversarial.Adversarial, "build_pool", build)
    settings = _settings(steps=8, options=TOY | {"x_source": source, "images": 4})
    _erase(tiny_pipeline_dir, tmp_path / "w", settings)
    r0, r1 = (Pool.load(tmp_path / "w" / "phases" / "2" / n) for n in ("pool-0.safetensors", "pool-0-round1.safetensors"))
    assert torch.equal(r0.conds["_z_anchor"], r1.conds["_z_anchor"])  # drawn once for the phase
    assert not torch.equal(r0.conds["_z_anchor"][:2], r0.conds["_z"][:2])
