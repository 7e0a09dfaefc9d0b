import numpy as np

from erasure.miniworld import concepts
from erasure.miniworld.render import render_memorized
from erasure.miniworld.world import (HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, caption, make_dataset,
                                     sample_scene, scene_rng)


def test_same_seed_same_world():
    a_img, a_cap, a_sc = make_dataset(seed=3, count=40)
    b_img, b_cap, b_sc = make_dataset(seed=3, count=40)
    assert np.array_equal(a_img, b_img) and a_cap == b_cap and a_sc == b_sc


def test_other_seed_other_world():
    a_img, a_cap, _ = make_dataset(seed=3, count=40)
    b_img, b_cap, _ = make_dataset(seed=4, count=40)
    assert not np.array_equal(a_img, b_img)
    assert a_cap != b_cap


def test_any_slice_rebuilds_alone():
    full, _, _ = make_dataset(seed=5, count=30)
    part, _, _ = make_dataset(seed=5, count=10, start=20)
    assert np.array_equal(full[20:], part)


def test_concept_kinds_are_complete():
    cat = concepts.catalog()
    assert len(cat["object"]) >= 8 and len(cat["color"]) >= 6 and len(cat["style"]) >= 5
    assert len(cat["instance"]) >= 3 and len(cat["memorized"]) >= 2 and len(cat["implicit"]) == 1
    for inst in cat["instance"]:
        assert inst["anchor"] in concepts.OBJECTS
    for style in cat["style"]:
        assert style["phrase"] == f"in the style of {style['name']}"


def test_held_out_templates_never_appear_in_training_captions():
    frames = {t.split("{s}")[0] for t in HELD_OUT_TEMPLATES}
    rng = np.random.default_rng(0)
    for _ in range(2000):
        cap = caption(sample_scene(rng), rng)
        assert not any(cap.startswith(f) for f in frames if f), cap
    assert not set(HELD_OUT_TEMPLATES) & set(TRAIN_TEMPLATES)


def test_training_shares_match_the_design():
    scenes = [sample_scene(scene_rng(11, i)) for i in range(6000)]
    ordinary = [s for s in scenes if not s.memorized]
    mem = sum(bool(s.memorized) for s in scenes) / len(scenes)
    frame = sum(s.frame for s in ordinary) / len(ordinary)
    inst = sum(bool(s.instance) for s in ordinary) / len(ordinary)
    assert abs(mem - concepts.MEMORIZED_SHARE * len(concepts.MEMORIZED)) < 0.01
    assert abs(frame - concepts.FRAME_SHARE) < 0.03
    assert abs(inst - concepts.INSTANCE_SHARE * len(concepts.INSTANCES)) < 0.015


def test_frame_mostly_unnamed_in_captions():
    rng = np.random.default_rng(1)
    framed = named = 0
    for _ in range(3000):
        s = sample_scene(rng)
        cap = caption(s, rng)
        if s.frame:
            framed += 1
            named += concepts.IMPLICIT_PHRASE in cap
        else:
            assert concepts.IMPLICIT_PHRASE not in cap
    assert 0.15 < named / framed < 0.35


def test_memorized_images_are_fixed_and_distinct():
    imgs = [render_memorized(m) for m in concepts.MEMORIZED.values()]
    assert all(i.shape == (32, 32, 3) and i.dtype == np.uint8 for i in imgs)
    assert np.array_equal(imgs[0], render_memorized(list(concepts.MEMORIZED.values())[0]))
    assert not np.array_equal(imgs[0], imgs[1])
