"""Each erasure method on the tiny pipeline: its pool, its loss and gradients, its impossible combinations."""

import numpy as np
import pytest
import torch
from PIL import Image

from erasure import methods
from erasure.concept import Concept, ConceptError, check_encodable, content_token_ids
from erasure.delta import load_delta
from erasure.editable import EditableModel
from erasure.methods.base import Bench
from erasure.models import load_pipeline, weights_hash
from erasure.trainer import EraseSettings, check_prompts, erase, plan

# Short anchor prompts: the tiny tokenizer spells one byte per token and holds 62, so the generic
# prompts would not fit (the trainer refuses prompts longer than the text encoder holds).
SHORT = ("a dog", "a cup")
SIZE = 8

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def reference(tmp_path):
    path = tmp_path / "memorized.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def _bench(pipe_dir, rule: str, concept: Concept | None = None) -> Bench:
    pipe = load_pipeline(str(pipe_dir))
    ids = content_token_ids(pipe.tokenizer, concept.text) if rule == "embedding" else None  # as the trainer
    return Bench(pipe, EditableModel(pipe.unet, pipe.text_encoder, [rule], ids), "tiny")


def _pool_and_loss(pipe_dir, method_name: str, concept: Concept, options: dict, seed: int = 0):
    method = methods.get(method_name)
    opts = method.Options(**options)
    method.check(concept, opts)
    bench = _bench(pipe_dir, method.default_rule(concept.kind), concept)
    if getattr(opts, "stop_sot", False):
        bench.model.stop_gradient_first_token()
    if method.needs_frozen(opts):
        bench.snapshot_frozen()
    pool = method.build_pool(bench, concept, opts, SIZE, torch.Generator().manual_seed(seed))
    loss = method.loss(bench.model, pool.batch(torch.arange(len(pool))), opts, bench)
    return bench, pool, loss


CAT = dict(text="cat", kind="style", anchor_prompts=SHORT)
CASES = {
    "esd": ("esd", CAT, {"ddim_steps": 4}, {"x", "t", "target"}),
    "esd-erase-from": ("esd", CAT | {"erase_from": "animal"}, {"ddim_steps": 4}, {"x", "t", "target"}),
    "esd-context": ("esd", CAT, {"ddim_steps": 4, "context_prompts": 4}, {"x", "t", "target"}),
    "esd-context-preserve": ("esd", CAT, {"ddim_steps": 4, "context_prompts": 4, "preserve_prompts": 3},
                             {"x", "t", "target", "train_idx"}),
    "esd-shared-trajectories": ("esd", CAT, {"ddim_steps": 4, "context_prompts": 4, "preserve_prompts": 3,
                                             "stops_per_trajectory": 3}, {"x", "t", "target", "train_idx"}),
    "esd-implicit-scene": ("esd", dict(text="nudity", kind="nudity", anchor_prompts=SHORT),
                           {"ddim_steps": 4, "context_prompts": 2, "implicit_trajectories": "named"}, {"x", "t", "target"}),
    "esd-implicit-direction": ("esd", dict(text="nudity", kind="nudity", anchor_prompts=SHORT),
                               {"ddim_steps": 4, "context_prompts": 2, "implicit_direction": "scene"},
                               {"x", "t", "target", "c_idx", "u_idx"}),
    "esd-reference": ("esd", dict(text="the memorized one", kind="memorized"), {"x_source": "reference"},
                      {"x", "t", "target"}),
    "esd-trained": ("esd", CAT, {"ddim_steps": 4, "sampler": "trained"}, {"stop", "noise"}),
    "esd-nudity": ("esd", dict(text="nudity", kind="nudity"), {"ddim_steps": 4}, {"x", "t", "target"}),
    "ca": ("ca", CAT, {"anchor_images": 4, "anchor_steps": 2}, {"x", "t", "noise", "a_idx", "c_idx", "target"}),
    "ca-same": ("ca", CAT, {"anchor_images": 4, "anchor_steps": 2, "target_from": "same"},
                {"x", "t", "noise", "a_idx", "c_idx"}),
    "ca-noise": ("ca", CAT, {"anchor_images": 4, "anchor_steps": 2, "loss": "noise"},
                 {"x", "t", "noise", "a_idx", "c_idx"}),
    "ca-regularization": ("ca", CAT, {"anchor_images": 4, "anchor_steps": 2, "regularization": 0.5},
                          {"x", "t", "noise", "a_idx", "c_idx", "target"}),
    "ca-preserve": ("ca", CAT, {"anchor_images": 4, "anchor_steps": 2, "preserve_prompts": 3, "preserve_ddim_steps": 2,
                                "preserve_share": 0.5}, {"x", "t", "noise", "a_idx", "c_idx", "target", "keep", "keep_target"}),
    "ca-noise-regularization-preserve": ("ca", CAT, {"anchor_images": 4, "anchor_steps": 2, "loss": "noise",
                                                     "regularization": 1.0, "preserve_prompts": 3, "preserve_ddim_steps": 2},
                                         {"x", "t", "noise", "a_idx", "c_idx", "keep", "keep_target"}),
    "ca-object": ("ca", dict(text="rex", kind="object", anchor="dog"), {"anchor_images": 4, "anchor_steps": 2},
                  {"x", "t", "noise", "a_idx", "c_idx", "target"}),
    "ca-memorized": ("ca", dict(text="the memorized one", kind="memorized", paraphrases=("a red dog", "a cup")),
                     {"anchor_images": 4, "anchor_steps": 2}, {"x", "t", "noise", "a_idx", "c_idx", "target"}),
    "abo": ("abo", dict(text="cat", kind="style"), {"ddim_steps": 4}, {"x", "t", "guidance_target", "uncond_target"}),
    "abo-alternative": ("abo", dict(text="cat", kind="style", alternative="dog"), {"ddim_steps": 4},
                        {"x", "t", "guidance_target", "uncond_target"}),
    "abo-context": ("abo", CAT | {"alternative": "dog"}, {"ddim_steps": 4, "context_prompts": 2},
                    {"x", "t", "guidance_target", "uncond_target", "c_idx", "u_idx"}),
    "loss-max": ("loss-max", CAT, {"images": 4, "image_steps": 2}, {"x", "t", "noise", "c_idx"}),
}


@pytest.mark.parametrize("case", CASES)
def test_pool_builds_and_loss_has_gradient_only_on_the_selected_parameters(case, tiny_pipeline_dir, reference):
    name, fields, options, keys = CASES[case]
    if fields["kind"] == "memorized":
        fields = fields | {"reference_images": (reference,)}
    bench, pool, loss = _pool_and_loss(tiny_pipeline_dir, name, Concept(**fields), options)
    assert len(pool) == SIZE and keys <= set(pool.rows)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    selected = set(bench.model.trainable())
    assert selected
    norm = 0.0
    for pname, p in bench.model.named_parameters():
        if pname in selected:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            norm += float(p.grad.norm())
        else:
            assert p.grad is None, pname
    assert norm > 0


def test_ca_preservation_rows_train_ordinary_prompts_toward_the_frozen_prediction(tiny_pipeline_dir):
    opts = {"anchor_images": 4, "anchor_steps": 2, "loss": "noise", "regularization": 1.0, "preserve_prompts": 3,
            "preserve_ddim_steps": 2, "preserve_share": 0.5}
    bench, pool, _ = _pool_and_loss(tiny_pipeline_dir, "ca", Concept(**CAT), opts)
    keep = pool.rows["keep"].bool()
    assert int(keep.sum()) == SIZE // 2 and keep[SIZE // 2:].all()  # after the ablation rows
    rows = pool.batch(torch.arange(len(pool)))
    with torch.no_grad():
        frozen = bench.eps(rows["x"][keep], rows["t"][keep], rows["c"][keep])
    torch.testing.assert_close(rows["keep_target"][keep], frozen)  # nothing trained yet: the same model
    # The loss on the preservation rows alone is their distance to that prediction (no regularization term).
    from erasure import methods
    ca = methods.get("ca")
    only = {k: v[keep] for k, v in rows.items()}
    with torch.no_grad():
        assert float(ca.loss(bench.model, only, ca.Options(**opts), bench)) < 1e-8


def test_esd_implicit_scene_direction_is_the_scene_with_minus_without_the_concept(tiny_pipeline_dir):
    concept = Concept(text="nudity", kind="nudity", anchor_prompts=SHORT)
    opts = {"ddim_steps": 4, "context_prompts": 2, "implicit_direction": "scene", "eta": 2.0}
    bench, pool, _ = _pool_and_loss(tiny_pipeline_dir, "esd", concept, opts)
    rows, conds = pool.rows, pool.conds
    f, p = conds["c"][rows["c_idx"]], conds["u"][rows["u_idx"]]
    assert torch.equal(p, conds["train"][rows["train_idx"]])  # the unnamed scene prompt is trained
    assert not torch.equal(f, p)
    with torch.no_grad():
        e_f, e_p = bench.eps(rows["x"], rows["t"], f), bench.eps(rows["x"], rows["t"], p)
    torch.testing.assert_close(rows["target"], e_p - 2.0 * (e_f - e_p), rtol=1e-4, atol=1e-5)


def test_esd_erase_from_trains_the_broader_prompt_toward_its_own_prediction(tiny_pipeline_dir):
    plain = Concept(text="cat", kind="style")
    broad = Concept(text="cat", kind="style", erase_from="animal")
    _, p_plain, _ = _pool_and_loss(tiny_pipeline_dir, "esd", plain, {"ddim_steps": 4})
    bench, p_from, _ = _pool_and_loss(tiny_pipeline_dir, "esd", broad, {"ddim_steps": 4})
    assert torch.equal(p_plain.rows["x"], p_from.rows["x"])  # x_t still from trajectories of the concept
    x, t = p_from.rows["x"], p_from.rows["t"]
    e_f, e_c, e_u = (bench.eps(x, t, bench.encode([s])) for s in ("animal", "cat", ""))
    assert torch.allclose(p_from.rows["target"], e_f - (e_c - e_u), atol=1e-5)
    assert torch.allclose(p_plain.rows["target"], e_u - (e_c - e_u), atol=1e-5)
    # The model is trained on the broader prompt: its loss is zero where it predicts the target there.
    method, opts = methods.get("esd"), methods.get("esd").Options(ddim_steps=4)
    batch = p_from.batch(torch.arange(SIZE))
    batch["target"] = e_f
    with torch.no_grad():
        assert float(method.loss(bench.model, batch, opts, bench)) < 1e-10


def test_esd_preservation_rows_target_the_frozen_prediction_on_prompts_naming_no_concept(tiny_pipeline_dir):
    concept = Concept(**CAT)
    bench, pool, _ = _pool_and_loss(tiny_pipeline_dir, "esd", concept,
                                    {"ddim_steps": 4, "context_prompts": 4, "preserve_prompts": 3, "preserve_share": 0.5})
    assert len(pool) == SIZE  # half of them preservation rows, at share 0.5
    keep = pool.batch(torch.arange(SIZE // 2, SIZE))
    assert torch.allclose(keep["target"], bench.eps(keep["x"], keep["t"], keep["train"]), atol=1e-5)
    from erasure.prompts import preservation_prompts

    assert not any("cat" in p for p in preservation_prompts((concept,), 20, "tiny"))


def test_all_but_one_targets_the_alternatives_guidance(tiny_pipeline_dir):
    _, none, _ = _pool_and_loss(tiny_pipeline_dir, "abo", Concept(text="cat", kind="style"), {"ddim_steps": 4})
    _, alt, _ = _pool_and_loss(tiny_pipeline_dir, "abo", Concept(text="cat", kind="style", alternative="dog"),
                               {"ddim_steps": 4})
    assert torch.equal(none.rows["x"], alt.rows["x"])
    assert torch.count_nonzero(none.rows["guidance_target"]) == 0  # no alternative: no guidance toward c
    assert torch.count_nonzero(alt.rows["guidance_target"]) > 0
    assert torch.equal(none.rows["uncond_target"], alt.rows["uncond_target"])


def test_ca_target_from_same_equals_frozen_before_training(tiny_pipeline_dir):
    """With the model still the original, 'same' (no-grad model) and 'frozen' (cached eps*) agree."""
    opts = {"anchor_images": 4, "anchor_steps": 2}
    concept = Concept(**CAT)
    _, _, frozen = _pool_and_loss(tiny_pipeline_dir, "ca", concept, opts)
    _, _, same = _pool_and_loss(tiny_pipeline_dir, "ca", concept, opts | {"target_from": "same"})
    assert torch.allclose(frozen, same, rtol=1e-4, atol=1e-7)
    _, _, reg = _pool_and_loss(tiny_pipeline_dir, "ca", concept, opts | {"regularization": 0.5})
    assert reg > frozen


def _tokenizer(pipe_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(pipe_dir / "tokenizer"))


IMPOSSIBLE = {
    "anchor-equals-target": (dict(text="cat", kind="object", anchor=" Cat "), {"method": "ca"}, "anchor"),
    "alternative-equals-target": (dict(text="cat", kind="style", alternative="cat"), {"method": "abo"},
                                  "alternative"),
    "esd-reference-without-images": (dict(text="memo", kind="memorized"),
                                     {"options": {"x_source": "reference"}}, "reference_images"),
    "ca-memorized-without-images": (dict(text="memo", kind="memorized", paraphrases=("a dog",)),
                                    {"method": "ca"}, "reference_images"),
    "ca-object-without-anchor": (dict(text="rex", kind="object"), {"method": "ca"}, "anchor"),
    "esd-with-anchor": (dict(text="rex", kind="object", anchor="dog"), {}, "anchor"),
    "abo-with-anchor": (dict(text="rex", kind="object", anchor="dog"), {"method": "abo"}, "anchor"),
    "esd-context-and-erase-from": (dict(text="cat", kind="style", erase_from="animal"),
                                   {"options": {"context_prompts": 4}}, "erase_from"),
    "esd-trained-sampler-on-reference": (dict(text="memo", kind="memorized", reference_images=("x.png",)),
                                         {"options": {"x_source": "reference", "sampler": "trained"}},
                                         "x_source"),
    "esd-shared-trajectories-trained-sampler": (dict(text="cat", kind="style"),
                                                {"options": {"sampler": "trained", "stops_per_trajectory": 2}},
                                                "stops_per_trajectory"),
    "ca-anchor-fragile-on-a-style": (dict(text="cat", kind="style"),
                                     {"method": "ca", "options": {"anchor_fragile": 0.25}}, "anchor_fragile"),
    "unknown-method": (dict(text="cat", kind="style"), {"method": "esd-x"}, "method 'esd-x' unknown"),
    "unknown-rule": (dict(text="cat", kind="style"), {"rule": "xatn"}, "rule 'xatn' unknown"),
    "unknown-option": (dict(text="cat", kind="style"), {"options": {"etaa": 1}}, "etaa"),
    "bad-option-value": (dict(text="cat", kind="style"), {"options": {"sampler": "fast"}}, "sampler"),
    "unknown-kind": (dict(text="cat", kind="painting"), {}, "kind"),
    "empty-concept": (dict(text="   ", kind="style"), {}, "text"),
}


@pytest.mark.parametrize("case", IMPOSSIBLE)
def test_impossible_combinations_name_the_field(case):
    fields, settings, field = IMPOSSIBLE[case]
    with pytest.raises(ValueError, match=field):  # ConceptError and pydantic's ValidationError are ValueErrors
        plan([Concept(**fields)], EraseSettings(**settings))


def test_plan_rejects_duplicates_and_disagreeing_joint_schedules():
    with pytest.raises(ConceptError, match="listed twice"):
        plan([Concept(text="cat", kind="style"), Concept(text="Cat", kind="style")], EraseSettings())
    with pytest.raises(ConceptError, match="no concepts"):
        plan([], EraseSettings())
    two = [Concept(text="cat", kind="style"), Concept(text="dog", kind="style")]
    with pytest.raises(ValueError, match="joint mode"):
        plan(two, EraseSettings(), methods=["esd", "ca"])
    assert len(plan(two, EraseSettings(mode="sequential"), methods=["esd", "ca"])) == 2


LONG = "a concept far longer than the sixty-two tokens that this tiny test tokenizer holds"


@pytest.mark.parametrize(("field", "fields", "method"), [
    ("concept", dict(text=LONG, kind="style"), "esd"),
    ("anchor", dict(text="rex", kind="object", anchor=LONG), "ca"),
    ("alternative", dict(text="cat", kind="style", alternative=LONG), "abo"),
    ("erase_from", dict(text="cat", kind="style", erase_from=LONG), "esd"),
])
def test_text_the_tokenizer_cannot_hold_is_refused(field, fields, method, tiny_pipeline_dir):
    jobs = plan([Concept(**fields)], EraseSettings(method=method))
    with pytest.raises(ConceptError, match=rf"^{field} .*prompts hold at most 62"):
        check_prompts(_tokenizer(tiny_pipeline_dir), jobs)


def test_embedding_rule_changes_only_the_target_token_rows(tiny_pipeline_dir, tmp_path):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    base = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    key = "text_encoder." + next(n for n, p in pipe.text_encoder.named_parameters()
                                 if p is pipe.text_encoder.get_input_embeddings().weight)
    ids = check_encodable(pipe.tokenizer, "cat")
    settings = EraseSettings(method="esd", rule="embedding", options={"ddim_steps": 4}, steps=3, lr=1e-2,
                             pool_size=SIZE)
    erase(pipe, plan([Concept(text="cat", kind="style")], settings), settings, tmp_path / "work",
          tmp_path / "d.safetensors", model_spec="tiny", base_hash=weights_hash(tiny_pipeline_dir), progress=False)
    tensors, _ = load_delta(tmp_path / "d.safetensors")
    assert list(tensors) == [key]  # the embedding table only, no UNet tensor
    weight = tensors[key]
    assert weight.shape == base.shape
    changed = set(torch.nonzero((weight != base).any(1)).flatten().tolist())
    assert changed and changed <= set(ids)


def test_embedding_rows_skip_function_words():
    # Training "the" for a title would change every prompt with "the" in it.
    from transformers import CLIPTokenizer

    from erasure.models import source_folder

    tok = CLIPTokenizer.from_pretrained(source_folder("miniworld"), subfolder="tokenizer")
    words = tok.convert_ids_to_tokens(content_token_ids(tok, "the midnight lantern poster"))
    assert words == ["midnight</w>", "lantern</w>", "poster</w>"]
    assert content_token_ids(tok, "the") == check_encodable(tok, "the")  # nothing else to train


def test_stop_gradient_first_token_cuts_token_zero_from_the_gradient(tiny_pipeline_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    model = EditableModel(pipe.unet, pipe.text_encoder, ["xattn-kv"])
    torch.manual_seed(0)
    x, t, emb = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 16, 32)
    weights = [p for n, p in model.named_parameters() if n.endswith("attn2.to_k.weight")]

    def grads(stop: bool):
        model.stop_gradient_first_token(stop)
        cond = emb.clone().requires_grad_(True)
        out = model(x, t, cond)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        g = [w.grad.clone() for w in weights]
        model.zero_grad(set_to_none=True)
        return out.detach(), cond.grad, g

    out_on, cond_on, w_on = grads(True)
    out_off, cond_off, w_off = grads(False)
    assert torch.equal(out_on, out_off)  # the forward pass is unchanged
    # The text conditioning reaches the UNet only through cross-attention keys and values.
    assert torch.count_nonzero(cond_on[:, 0]) == 0 and torch.count_nonzero(cond_off[:, 0]) > 0
    assert torch.allclose(cond_on[:, 1:], cond_off[:, 1:], atol=1e-6)
    assert not all(torch.allclose(a, b) for a, b in zip(w_on, w_off))
    model.stop_gradient_first_token(True)
    model.stop_gradient_first_token(True)  # re-enabling replaces the hooks instead of stacking them
    assert len(model._sot_hooks) == 2 * len(weights)
    model.stop_gradient_first_token(False)
    assert not model._sot_hooks


def test_frozen_reference_holds_only_what_the_objective_needs(tiny_pipeline_dir):
    """Frozen-sampler ESD keeps no copy at all; the paper's sampler keeps copies of attn2 tensors only."""
    bench, _, _ = _pool_and_loss(tiny_pipeline_dir, "esd", Concept(**CAT), {"ddim_steps": 4})
    assert bench._frozen is None
    bench, _, _ = _pool_and_loss(tiny_pipeline_dir, "esd", Concept(**CAT), {"ddim_steps": 4, "sampler": "trained"})
    unet = bench.model.unet
    xattn_bytes = sum(p.numel() * p.element_size() for n, p in unet.named_parameters() if "attn2" in n)
    full_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    assert set(bench.frozen().originals) == {f"unet.{n}" for n, _ in unet.named_parameters() if "attn2" in n}
    assert bench.frozen().nbytes() == xattn_bytes < full_bytes


def test_bf16_and_gradient_checkpointing_run(tiny_pipeline_dir, tmp_path):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    settings = EraseSettings(method="esd", steps=2, pool_size=SIZE, lr=1e-3, mixed_precision="bf16",
                             gradient_checkpointing=True, options={"ddim_steps": 4})
    res = erase(pipe, plan([Concept(**CAT)], settings), settings, tmp_path / "w", tmp_path / "d.safetensors",
                model_spec="tiny", base_hash=weights_hash(tiny_pipeline_dir), progress=False)
    assert res.steps_run == 2 and all(np.isfinite(res.losses))
    tensors, _ = load_delta(tmp_path / "d.safetensors")
    assert all(v.dtype == torch.float32 for v in tensors.values())  # weights stay fp32 (autocast)


def test_ca_on_the_miniworld_drops_anchor_images_that_show_the_implicit_attribute(tiny_pipeline_dir, monkeypatch):
    """Implicit kinds: anchor images the detector reads as framed never reach the pool."""
    from erasure.miniworld import detector

    flagged = []

    def predict(self, images, batch_size=256):  # frame on every other image
        frame = np.zeros((len(images), 2))
        frame[0::2, 1], frame[1::2, 0] = 1.0, 1.0
        flagged.append(len(images))
        return {"frame": frame}

    monkeypatch.setattr(detector.MiniworldDetector, "predict", predict)
    monkeypatch.setattr(detector.MiniworldDetector, "load", classmethod(lambda cls, path=None: cls(None)))
    monkeypatch.setattr(detector.MiniworldDetector, "__init__", lambda self, net: None)
    prompts = tuple(f"a {w}" for w in ("dog", "cup", "hat", "box"))
    concept = Concept(text="nudity", kind="nudity", anchor_prompts=prompts)
    method = methods.get("ca")
    opts = method.Options(anchor_images=4, anchor_steps=2, loss="noise", regularization=1.0)
    bench = _bench(tiny_pipeline_dir, "attn")
    bench.model_spec = "miniworld"
    pool = method.build_pool(bench, concept, opts, 64, torch.Generator().manual_seed(0))
    assert flagged == [4]
    kept = {p for p, _ in zip(prompts[1::2], range(2))}
    a_table = pool.conds["a"]
    rows = {int(i) for i in pool.rows["a_idx"]}
    assert len(a_table) == 2 and rows == {0, 1}  # only the two unframed anchor images' prompts
    assert torch.equal(a_table, bench.encode(sorted(kept, key=prompts.index)))


def test_esd_shared_trajectories_read_each_trajectory_at_several_stops(tiny_pipeline_dir):
    """stops_per_trajectory k: consecutive rows come from one trajectory (one scene prompt, one noise)
    at k stops; the rows and their targets are what one-stop trajectories would give there."""
    concept = Concept(**CAT)
    bench, pool, _ = _pool_and_loss(tiny_pipeline_dir, "esd", concept,
                                    {"ddim_steps": 6, "context_prompts": 4, "stops_per_trajectory": 4})
    assert len(pool) == SIZE
    for key in ("c_idx", "u_idx", "train_idx"):
        assert len(set(pool.rows[key][:4].tolist())) == 1 and len(set(pool.rows[key][4:].tolist())) == 1
    rows = pool.batch(torch.arange(SIZE))
    with torch.no_grad():  # eta 1: the target is eps(u) - (eps(c) - eps(u)) at each row's own x_t
        e_c, e_u = bench.eps(rows["x"], rows["t"], rows["c"]), bench.eps(rows["x"], rows["t"], rows["u"])
    torch.testing.assert_close(rows["target"], e_u - (e_c - e_u), rtol=1e-4, atol=1e-4)


def test_ca_anchor_fragile_puts_the_worlds_fragile_outputs_among_the_anchor_prompts(tiny_pipeline_dir, monkeypatch):
    """Implicit kinds: a share of the anchor prompts names the world's fragile outputs (none of the run's
    concepts), drawn and trained like the other anchor prompts."""
    from erasure.methods import ablation

    asked = []

    def fragile(exclude, n, model_spec, seed=0):
        asked.append(([c.text for c in exclude], n))
        return ["a hat"] * n

    monkeypatch.setattr(ablation, "fragile_prompts", fragile)
    concept = Concept(text="nudity", kind="nudity", anchor_prompts=("a dog", "a cup", "a box", "a pen"))
    opts = {"anchor_images": 4, "anchor_steps": 2, "loss": "noise", "regularization": 1.0, "anchor_fragile": 0.5}
    bench, pool, loss = _pool_and_loss(tiny_pipeline_dir, "ca", concept, opts)
    assert asked == [(["nudity"], 2)]
    a_table = pool.conds["a"]
    assert torch.equal(a_table, bench.encode(["a dog", "a cup", "a hat"]))
    assert torch.isfinite(loss)


def test_ca_concepts_with_one_anchor_share_their_anchor_images(tiny_pipeline_dir, tmp_path, monkeypatch):
    """Anchor prompts and seeds follow the anchor, not the concept or the phase: a second concept with
    the same anchor finds the first's images in the image cache (nothing drawn), another anchor draws
    its own, and a pool built from cached images equals one drawn afresh without a cache."""
    from erasure import cache

    drawn = []
    real = cache.generate
    monkeypatch.setattr(cache, "generate",
                        lambda pipe, prompts, *a, **k: drawn.append(len(prompts)) or real(pipe, prompts, *a, **k))
    method = methods.get("ca")
    opts = method.Options(anchor_images=4, anchor_steps=2)
    bench = _bench(tiny_pipeline_dir, "xattn-kv")
    bench.image_cache, bench.state_id = tmp_path / "images", "weights-at-phase-start"

    def pool(text: str, anchor: str, seed: int):
        prompts = SHORT if anchor == "cat" else ("a hat",)
        concept = Concept(text=text, kind="instance", anchor=anchor, anchor_prompts=prompts)
        return method.build_pool(bench, concept, opts, SIZE, torch.Generator().manual_seed(seed))

    first = pool("kitty", "cat", 0)
    assert drawn == [4]
    pool("tabby", "cat", 1)
    assert drawn == [4]  # all four found
    pool("fedora", "hat", 0)
    assert drawn == [4, 4]
    again = pool("kitty", "cat", 0)  # from the cache
    bench.image_cache = None
    fresh = pool("kitty", "cat", 0)  # drawn, no cache
    assert torch.equal(again.rows["x"], first.rows["x"]) and torch.equal(fresh.rows["x"], first.rows["x"])
