"""Judges: the closed registry, the clip judge on a tiny random CLIP, the miniworld judge's numbers."""

import numpy as np
import pytest
import torch

from erasure.judges import JudgeError, build


def test_registry_refuses_unknown_name():
    with pytest.raises(JudgeError, match="unknown judge 'inception'.*miniworld, clip, nudenet, copy"):
        build("inception")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tiny_clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_clip_judge_accuracy_and_score(tiny_clip):
    judge = build("clip", model=str(tiny_clip))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    probe = {"name": "target", "target": {"kind": "style", "text": "vasquez", "contrast": "painting"}}
    s = judge.score(images, probe)
    assert s.shape == (3,) and np.isfinite(s).all() and np.ptp(s) > 0
    np.testing.assert_array_equal(judge.detect(images, probe), s > 0)
    swapped = {"name": "t", "target": {"kind": "style", "text": "painting", "contrast": "vasquez"}}
    np.testing.assert_allclose(judge.score(images, swapped), -s, atol=1e-6)
    cs = judge.clip_score(images, ["a cat", "a dog", "a car"])
    assert ((cs >= 0) & (cs <= 100)).all()
    assert judge.describe()["model"] == str(tiny_clip)
    with pytest.raises(JudgeError, match="no target.text"):
        judge.score(images, {"name": "x"})


def test_clip_judge_missing_model_is_one_clear_error(tmp_path):
    with pytest.raises(JudgeError, match="cannot load CLIP model"):
        build("clip", model=str(tmp_path / "absent"))


def test_miniworld_judge_reads_the_detector_head():
    from erasure.miniworld.detector import HEADS, MiniworldDetector

    det = MiniworldDetector.load()
    judge = build("miniworld", detector=det)
    images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    head = sorted(HEADS)[0]
    pred = det.predict(images)[head].argmax(-1)
    for k, label in enumerate(HEADS[head]):
        probe = {"name": "p", "head": head, "label": label}
        np.testing.assert_array_equal(judge.detect(images, probe), np.asarray(pred == k).reshape(-1))
    with pytest.raises(JudgeError, match="no detector head"):
        judge.detect(images, {"name": "p", "target": {"kind": "style", "text": "x"}})


def _ref_probe(tmp_path, image):
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "ref.png")
    return {"name": "memorized", "target": {"kind": "memorized", "text": "x", "contrast": None,
                                            "reference": str(tmp_path / "ref.png")}}


def test_copy_by_clip(tiny_clip, tmp_path):
    clip = build("clip", model=str(tiny_clip))
    judge = build("copy", clip=clip, threshold=0.99)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    probe = _ref_probe(tmp_path, images[0])
    s = judge.score(images, probe)
    assert s[0] == pytest.approx(1.0, abs=1e-5) and s[1] < s[0]
    assert judge.detect(images, probe)[0]
    assert judge.describe()["threshold"] == 0.99


def test_copy_by_sscd_torchscript(tmp_path):
    class Desc(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))  # per-channel means: a toy descriptor the test can reason about

    torch.jit.script(Desc()).save(str(tmp_path / "sscd.pt"))
    judge = build("copy", sscd=str(tmp_path / "sscd.pt"), threshold=0.5)
    img = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    img[0, ..., 0] = 255  # red: same descriptor as the reference
    img[1, ..., 2] = 255  # blue
    probe = _ref_probe(tmp_path, img[0])
    np.testing.assert_array_equal(judge.detect(img, probe), [True, False])
    assert len(judge.describe()["sha256"]) == 64
    with pytest.raises(JudgeError, match="is not a file"):
        build("copy", sscd=str(tmp_path / "absent.pt"))


def test_copy_judge_reads_a_neighbour_without_reference_by_clip_accuracy(tiny_clip, tmp_path):
    class Desc(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    torch.jit.script(Desc()).save(str(tmp_path / "sscd.pt"))
    clip = build("clip", model=str(tiny_clip))
    built = []
    judge = build("copy", sscd=str(tmp_path / "sscd.pt"), clip=lambda: built.append(1) or clip)
    images = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    judge.detect(images, _ref_probe(tmp_path, images[0]))
    assert not built  # SSCD reads references; the CLIP is built only for a probe that needs it
    neighbour = {"name": "anchor:a poster", "target": {"kind": "memorized", "text": "a poster",
                                                       "contrast": "an image", "reference": None}}
    np.testing.assert_array_equal(judge.detect(images, neighbour), clip.detect(images, neighbour))
    assert built == [1]
    with pytest.raises(JudgeError, match="no target.reference image, and no CLIP"):
        build("copy", sscd=str(tmp_path / "sscd.pt")).detect(images, neighbour)
