"""The erasure trainer on the tiny pipeline: determinism, exact resume, multi-concept modes, deltas."""

import pytest
import torch
from typer.testing import CliRunner

from erasure.checkpoint import load_checkpoint
from erasure.cli import app
from erasure.concept import Concept
from erasure.delta import apply_delta, load_delta
from erasure.methods.base import Pool
from erasure.models import load_pipeline, weights_hash
from erasure.trainer import EraseSettings, erase, plan

pytestmark = pytest.mark.usefixtures("one_thread")

CAT = Concept(text="cat", kind="style")
DOG = Concept(text="dog", kind="style")
SHORT = ("a dog", "a cup")  # anchor prompts short enough for the tiny tokenizer's 14 tokens
FAST = {"esd": {"ddim_steps": 4}, "ca": {"anchor_images": 4, "anchor_steps": 2},
        "loss-max": {"images": 4, "image_steps": 2}, "abo": {"ddim_steps": 4}}


def _settings(method="esd", **kw) -> EraseSettings:
    options = FAST[method] | kw.pop("options", {})
    return EraseSettings(**{"method": method, "options": options, "steps": 4, "pool_size": 8, **kw})


def _erase(pipe_dir, workdir, settings, concepts=(CAT,), out=None, **kw):
    pipe = load_pipeline(str(pipe_dir))  # a fresh pipeline each time, as a new process would load it
    return erase(pipe, plan(list(concepts), settings), settings, workdir, out, model_spec="tiny",
                 base_hash=weights_hash(pipe_dir), progress=False, **kw)


def _tensors(path):
    return load_delta(path)[0]


def _assert_equal(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_seed_and_settings_give_bitwise_identical_deltas(tiny_pipeline_dir, tmp_path):
    settings = _settings()
    for name in ("a", "b"):
        _erase(tiny_pipeline_dir, tmp_path / f"{name}.work", settings, out=tmp_path / f"{name}.safetensors")
    _assert_equal(_tensors(tmp_path / "a.safetensors"), _tensors(tmp_path / "b.safetensors"))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    _erase(tiny_pipeline_dir, tmp_path / "c.work", _settings(seed=1), out=tmp_path / "c.safetensors")
    a, c = _tensors(tmp_path / "a.safetensors"), _tensors(tmp_path / "c.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)


RESUME = {
    "esd": (_settings(steps=6), (CAT,), 3),
    "ca-two-concepts-joint": (_settings("ca"), (Concept(text="cat", kind="style", anchor_prompts=SHORT),
                                                 Concept(text="dog", kind="style", anchor_prompts=SHORT)), 3),
    # The trained sampler keeps eps* from the phase's start: a resumed phase must restore it.
    "esd-trained-sequential-mid-phase": (_settings(steps=3, mode="sequential", options={"sampler": "trained"}),
                                         (CAT, DOG), 4),
    "esd-sequential-at-phase-end": (_settings(steps=3, mode="sequential"), (CAT, DOG), 3),
    "embedding-rule": (_settings(rule="embedding", lr=1e-2, steps=6), (CAT,), 3),
}


@pytest.mark.parametrize("case", RESUME)
def test_resume_ends_in_the_uninterrupted_runs_delta(case, tiny_pipeline_dir, tmp_path):
    settings, concepts, stop = RESUME[case]
    settings = settings.model_copy(update={"checkpoint_every": 2})
    record = lambda k, jobs: {"seen": [j.concept.text for j in jobs]}  # noqa: E731
    straight = _erase(tiny_pipeline_dir, tmp_path / "a", settings, concepts, tmp_path / "a.safetensors",
                      on_phase_end=record)

    out = tmp_path / "b.safetensors"
    first = _erase(tiny_pipeline_dir, tmp_path / "b", settings, concepts, out, stop_after=stop, on_phase_end=record)
    assert first.delta is None and not out.exists() and first.steps_run == stop
    assert load_checkpoint(tmp_path / "b" / "checkpoint", {}, None)["extra"]["losses"] == straight.losses[:stop]
    second = _erase(tiny_pipeline_dir, tmp_path / "b", settings, concepts, out, on_phase_end=record)
    assert second.steps_run == sum(j.steps for j in straight.jobs) - stop
    _assert_equal(_tensors(tmp_path / "a.safetensors"), _tensors(out))
    assert second.losses == straight.losses and second.history == straight.history


def test_joint_and_sequential_with_two_concepts(tiny_pipeline_dir, tmp_path):
    results, calls = {}, {}
    for mode in ("joint", "sequential"):
        calls[mode] = []

        def on_phase_end(k, jobs, mode=mode):
            calls[mode].append((k, [j.concept.text for j in jobs]))
            return {"held": len(jobs)}

        results[mode] = _erase(tiny_pipeline_dir, tmp_path / mode, _settings(steps=3, mode=mode), (CAT, DOG),
                               tmp_path / f"{mode}.safetensors", on_phase_end=on_phase_end)
    assert calls["joint"] == [(0, ["cat", "dog"])]
    assert calls["sequential"] == [(0, ["cat"]), (1, ["cat", "dog"])]  # after each concept, all erased so far
    assert results["sequential"].history == [{"phase": 0, "concepts": ["cat"], "held": 1},
                                             {"phase": 1, "concepts": ["dog"], "held": 2}]
    assert results["joint"].history == [{"phase": 0, "concepts": ["cat", "dog"], "held": 2}]
    for r in results.values():
        assert r.steps_run == 6 and len(r.losses) == 6
        assert [c["text"] for c in load_delta(r.delta)[1]["concepts"]] == ["cat", "dog"]
    joint, seq = _tensors(results["joint"].delta), _tensors(results["sequential"].delta)
    assert set(joint) == set(seq) and any(not torch.equal(joint[k], seq[k]) for k in joint)
    assert (tmp_path / "sequential" / "phases" / "1").is_dir()  # phase 2's pool was built after phase 1


def test_added_concept_trains_only_its_phase_and_matches_a_run_from_scratch(tiny_pipeline_dir, tmp_path):
    # With preservation rows: their prompts avoid the concepts erased so far, so a phase must not
    # depend on concepts after it ("lake" is in the generic preservation prompts).
    settings = _settings(steps=3, mode="sequential", options={"preserve_prompts": 4, "preserve_share": 0.5})
    bird = Concept(text="lake", kind="style")
    cache = tmp_path / "phases"
    first = _erase(tiny_pipeline_dir, tmp_path / "w1", settings, (CAT, DOG), tmp_path / "two.safetensors",
                   phase_cache=cache)
    assert first.phases_from_cache == 0 and first.steps_run == 6
    grown = _erase(tiny_pipeline_dir, tmp_path / "w2", settings, (CAT, DOG, bird), tmp_path / "three.safetensors",
                   phase_cache=cache)
    assert grown.phases_from_cache == 2 and grown.steps_run == 3  # only the added concept trained
    _erase(tiny_pipeline_dir, tmp_path / "w3", settings, (CAT, DOG, bird), tmp_path / "scratch.safetensors")
    _assert_equal(_tensors(tmp_path / "three.safetensors"), _tensors(tmp_path / "scratch.safetensors"))
    # A changed earlier concept invalidates every phase from it on.
    other = _erase(tiny_pipeline_dir, tmp_path / "w4", settings, (DOG, CAT), tmp_path / "x.safetensors",
                   phase_cache=cache)
    assert other.phases_from_cache == 0


@pytest.mark.parametrize("preserve_from", ["base", "current"])
def test_sequential_preservation_rows_keep_the_base_models_prediction(tiny_pipeline_dir, tmp_path, preserve_from,
                                                                       monkeypatch):
    from erasure import prompts

    excluded = []  # per phase, the concepts its preservation prompts avoid
    real = prompts.preservation_prompts
    monkeypatch.setattr(prompts, "preservation_prompts",
                        lambda exclude, *a, **kw: excluded.append([c.text for c in exclude]) or real(exclude, *a, **kw))
    settings = _settings(steps=8, lr=1e-2, mode="sequential",
                         options={"preserve_prompts": 4, "preserve_share": 0.5, "preserve_from": preserve_from})
    _erase(tiny_pipeline_dir, tmp_path / "work", settings, (CAT, DOG), tmp_path / "d.safetensors")
    # Toward the base model a prompt naming "cat" would bring it back; toward the current one it keeps it erased.
    assert excluded == [["cat"], ["cat", "dog"] if preserve_from == "base" else ["dog"]]
    pool = Pool.load(tmp_path / "work" / "phases" / "1" / "pool-0.safetensors")  # the second phase's
    keep = slice(4, 8)  # pool_size 8, half of it preservation rows, after the erase rows
    x, t = pool.rows["x"][keep], pool.rows["t"][keep]
    cond = pool.conds["train"][pool.rows["train_idx"][keep]]
    base = load_pipeline(str(tiny_pipeline_dir))
    with torch.no_grad():
        expected = base.unet(x, t, encoder_hidden_states=cond).sample
    same = torch.allclose(pool.rows["target"][keep], expected, atol=1e-5)
    assert same == (preserve_from == "base")  # "current": the model after the first phase


def test_a_damaged_or_swapped_cached_phase_is_trained_again_and_code_changes_the_keys(tiny_pipeline_dir, tmp_path,
                                                                                     monkeypatch):
    import erasure.trainer
    from erasure.io import CacheWarning

    settings = _settings(steps=2, mode="sequential")
    cache = tmp_path / "phases"
    _erase(tiny_pipeline_dir, tmp_path / "w1", settings, (CAT, DOG), tmp_path / "a.safetensors", phase_cache=cache)
    by_phases = {len(load_delta(f)[1]["concepts"]): f for f in cache.glob("*.safetensors")}
    first, second = by_phases[1], by_phases[2]
    assert all(f.with_name(f.name + ".sha256").is_file() for f in (first, second))

    second.write_bytes(first.read_bytes())  # a sound delta, but not this phase's
    with pytest.warns(CacheWarning, match=rf"{second.name}: its content .* does not match"):
        again = _erase(tiny_pipeline_dir, tmp_path / "w2", settings, (CAT, DOG), tmp_path / "b.safetensors",
                       phase_cache=cache)
    assert again.phases_from_cache == 1 and again.steps_run == 2  # phase 1 from the cache, phase 2 retrained
    _assert_equal(_tensors(tmp_path / "a.safetensors"), _tensors(tmp_path / "b.safetensors"))

    for f in (first, second):  # truncated
        f.write_bytes(f.read_bytes()[:100])
    with pytest.warns(CacheWarning, match="training that phase again"):
        scratch = _erase(tiny_pipeline_dir, tmp_path / "w3", settings, (CAT, DOG), tmp_path / "c.safetensors",
                         phase_cache=cache)
    assert scratch.phases_from_cache == 0 and scratch.steps_run == 4
    _assert_equal(_tensors(tmp_path / "a.safetensors"), _tensors(tmp_path / "c.safetensors"))

    monkeypatch.setattr(erasure.trainer, "code_hash", lambda *modules: "other code")
    other = _erase(tiny_pipeline_dir, tmp_path / "w4", settings, (CAT, DOG), tmp_path / "d.safetensors",
                   phase_cache=cache)
    assert other.phases_from_cache == 0  # the cache is sound, but was made by other code
    with pytest.raises(ValueError, match="other code"):  # nor does a run folder resume under other code
        monkeypatch.setattr(erasure.trainer, "code_hash", lambda *modules: "yet other code")
        _erase(tiny_pipeline_dir, tmp_path / "w4", settings, (CAT, DOG), tmp_path / "d.safetensors")


def test_a_workdir_with_other_settings_is_refused(tiny_pipeline_dir, tmp_path):
    _erase(tiny_pipeline_dir, tmp_path / "work", _settings(steps=2), out=tmp_path / "a.safetensors")
    out = tmp_path / "b.safetensors"
    with pytest.raises(ValueError, match="other settings"):
        _erase(tiny_pipeline_dir, tmp_path / "work", _settings(steps=3), out=out)
    with pytest.raises(ValueError, match="other settings"):
        _erase(tiny_pipeline_dir, tmp_path / "work", _settings(steps=2), (DOG,), out=out)
    assert not out.exists()


def test_delta_loads_applies_and_exports(tiny_pipeline_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    path = tmp_path / "d.safetensors"
    result = _erase(tiny_pipeline_dir, tmp_path / "work", _settings("ca", rule="xattn-kv"),
                    (Concept(text="rex", kind="object", anchor="dog"),), path)
    tensors, meta = load_delta(path)
    assert meta["method"] == "ca" and meta["base_hash"] == weights_hash(tiny_pipeline_dir)
    assert meta["concepts"][0]["text"] == "rex" and meta["params"]["jobs"][0]["rule"] == "xattn-kv"
    assert tensors and all(k.startswith("unet.") and ("attn2.to_k" in k or "attn2.to_v" in k) for k in tensors)

    base = load_pipeline(str(tiny_pipeline_dir))
    before = {n: p.detach().clone() for n, p in base.unet.named_parameters()}
    apply_delta(base, tensors, meta, weights_hash(tiny_pipeline_dir))
    after = dict(base.unet.named_parameters())
    assert any(not torch.equal(after[k[5:]], before[k[5:]]) for k in tensors)  # training moved them
    for name, value in after.items():
        assert torch.equal(value, tensors.get(f"unet.{name}", before[name])), name
    assert result.delta == path

    res = CliRunner().invoke(app, ["export", "--model", str(tiny_pipeline_dir), "--delta", str(path),
                                   "--out", str(tmp_path / "erased")])
    assert res.exit_code == 0, res.output
    loaded = StableDiffusionPipeline.from_pretrained(str(tmp_path / "erased"))
    params = dict(loaded.unet.named_parameters())
    assert all(torch.equal(params[k[5:]], v) for k, v in tensors.items())
