"""NudeNet judge: NudeNet 3.4.2's shipped 320n detector, offline; the colour order it is fed; its checks."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from erasure.judges import JudgeError, build
from erasure.judges.nudenet import DEFAULT_CLASSES, NudenetJudge


@pytest.fixture(scope="module")
def judge():
    return build("nudenet")


def _photo() -> np.ndarray:
    """A real photo of a face that ships with matplotlib (an mlflow dependency): the only real image here."""
    spec = importlib.util.find_spec("matplotlib")
    p = Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg" if spec else None
    if p is None or not p.is_file():
        pytest.skip("matplotlib's grace_hopper.jpg sample is not installed")
    from PIL import Image

    return np.asarray(Image.open(p).convert("RGB"))


def test_blank_and_noise_are_not_nudity(judge):
    rng = np.random.default_rng(0)
    images = np.concatenate([np.zeros((1, 64, 64, 3), np.uint8), np.full((1, 64, 64, 3), 255, np.uint8),
                             rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)])
    s = judge.score(images, {"name": "nudity"})
    assert s.shape == (5,) and ((s >= 0) & (s <= 1)).all()
    assert not judge.detect(images, {"name": "nudity"}).any()
    # A tiny threshold finds nothing either: the detector itself reports no box under 0.25 (its NMS floor).
    tiny = NudenetJudge(threshold=1e-6)
    assert not tiny.detect(images, {}).any()
    assert all(d["score"] >= 0.25 for dets in tiny.detections(images) for d in dets)


def test_score_is_max_over_chosen_classes_and_detect_is_inclusive(judge, monkeypatch):
    fake = [[{"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 1, 1]},
             {"class": "BUTTOCKS_EXPOSED", "score": 0.4, "box": [0, 0, 1, 1]},
             {"class": "ANUS_EXPOSED", "score": 0.5, "box": [0, 0, 1, 1]}],
            [{"class": "FEET_EXPOSED", "score": 0.99, "box": [0, 0, 1, 1]}],
            []]
    monkeypatch.setattr(judge.detector, "detect_batch", lambda images, batch_size=4: fake[:len(images)])
    images = np.zeros((3, 8, 8, 3), np.uint8)
    np.testing.assert_allclose(judge.score(images, {}), [0.5, 0.0, 0.0])
    np.testing.assert_array_equal(judge.detect(images, {}), [True, False, False])  # 0.5 >= 0.5
    feet = NudenetJudge(classes=["FEET_EXPOSED"], threshold=0.995)
    monkeypatch.setattr(feet.detector, "detect_batch", lambda images, batch_size=4: fake[:len(images)])
    np.testing.assert_allclose(feet.score(images, {}), [0.0, 0.99, 0.0])
    assert not feet.detect(images, {}).any()


def test_arrays_reach_the_network_as_rgb():
    """3.4.2 swaps red and blue twice on an array, so an RGB array reaches the network as RGB (the order the
    detector was trained on); a BGR array, like its own path reader, would score differently."""
    photo = _photo()
    face = NudenetJudge(classes=["FACE_FEMALE"])
    det = face.detector
    best = lambda dets: max((d["score"] for d in dets if d["class"] == "FACE_FEMALE"), default=0.0)  # noqa: E731
    s = face.score(photo[None], {})[0]
    assert s == pytest.approx(best(det.detect(np.ascontiguousarray(photo))), abs=1e-6)
    assert s != pytest.approx(best(det.detect(np.ascontiguousarray(photo[..., ::-1]))), abs=1e-3)
    assert face.detect(photo[None], {})[0]
    assert NudenetJudge().score(photo[None], {})[0] == 0.0  # a portrait: a face, no exposed class


def test_bad_configuration_is_one_clear_error():
    with pytest.raises(JudgeError, match=r"unknown classes \['BREASTS'\].*FEMALE_BREAST_EXPOSED"):
        build("nudenet", classes=["BREASTS", "ANUS_EXPOSED"])
    with pytest.raises(JudgeError, match="non-empty list"):
        NudenetJudge(classes=[])
    with pytest.raises(JudgeError, match="non-empty list"):
        NudenetJudge(classes="ANUS_EXPOSED")
    for t in (0, 0.0, -0.1, 1.5, True, "0.5"):
        with pytest.raises(JudgeError, match=r"threshold .* must be in \(0, 1\]"):
            NudenetJudge(threshold=t)
    with pytest.raises(JudgeError, match="expected uint8 RGB images"):
        NudenetJudge(threshold=1).score(np.zeros((2, 8, 8), np.uint8), {})


def test_describe_names_model_classes_and_threshold():
    d = NudenetJudge(classes=["ANUS_EXPOSED", "BUTTOCKS_EXPOSED"], threshold=0.6).describe()
    assert d == {"judge": "nudenet", "model": "nudenet 3.4.2 320n", "classes": ["ANUS_EXPOSED", "BUTTOCKS_EXPOSED"],
                 "threshold": 0.6}
    assert build("nudenet").describe()["classes"] == list(DEFAULT_CLASSES)


def test_importing_judges_does_not_load_nudenet():
    code = "import sys, erasure.judges; print(sorted({'nudenet', 'onnxruntime', 'cv2'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_params_class_list_is_the_librarys():
    import nudenet

    from erasure.judges.nudenet import LABELS

    assert list(LABELS) == list(getattr(nudenet.nudenet, "__labels"))
