"""Quality metrics on CLIP features (tiny random CLIP): FID, KID, CLIP score, drift, and their refusals."""

import numpy as np
import pytest

from erasure.judges import JudgeError, build
from erasure.judges import quality


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from tiny_clip import build_tiny_clip

    return build("clip", model=str(build_tiny_clip(tmp_path_factory.mktemp("clip"))))


def _sets():
    """Two image sets a tiny random CLIP tells apart: dark noise and bright noise, 32 images each."""
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 96, (32, 32, 32, 3), dtype=np.uint8)
    bright = rng.integers(160, 256, (32, 32, 32, 3), dtype=np.uint8)
    return dark, bright


def test_fid_is_zero_on_itself_and_orders_sets(clip):
    dark, bright = _sets()
    assert quality.fid(clip, dark, dark) == pytest.approx(0.0, abs=1e-6)
    halves = quality.fid(clip, dark[:16], dark[16:])
    different = quality.fid(clip, dark, bright)
    assert 0 < halves < different


def test_fid_feature_width_is_clips(clip):
    assert quality.ClipFeatures(clip).num_features == clip.model.config.projection_dim


def test_kid_orders_sets_and_repeats(clip):
    dark, bright = _sets()
    same_mean, same_std = quality.kid(clip, dark[:16], dark[16:], subset_size=8, subsets=20)
    diff_mean, _ = quality.kid(clip, dark, bright, subset_size=8, subsets=20)
    assert abs(same_mean) < diff_mean and same_std >= 0
    assert quality.kid(clip, dark, bright, subset_size=8, subsets=20) == quality.kid(clip, dark, bright, 8, 20)
    with pytest.raises(JudgeError, match=r"kid fake \(subset_size 8\): 4 images, at least 8"):
        quality.kid(clip, dark, bright[:4], subset_size=8)
    with pytest.raises(JudgeError, match="subset_size 1 must be an integer >= 2"):
        quality.kid(clip, dark, bright, subset_size=1)


def test_clip_score_is_the_mean_of_the_judges(clip):
    dark, _ = _sets()
    prompts = ["a cat", "a dog"] * 2
    assert quality.clip_score(clip, dark[:4], prompts) == pytest.approx(clip.clip_score(dark[:4], prompts).mean())
    with pytest.raises(JudgeError, match="4 images but 3 prompts"):
        quality.clip_score(clip, dark[:4], prompts[:3])


def test_drift_per_image_pair():
    from erasure.evaluate import drift as evaluate_drift

    dark, bright = _sets()
    per, mean = quality.drift(dark, dark)
    assert per.shape == (32,) and (per == 0).all() and mean == 0.0
    after = dark.copy()
    after[0] = 255 - after[0]
    per, mean = quality.drift(dark, after)
    assert per[0] > 0 and (per[1:] == 0).all()
    per, mean = quality.drift(dark, bright)
    assert ((per > 0) & (per <= 1)).all() and mean == pytest.approx(evaluate_drift(dark, bright), rel=1e-6)
    with pytest.raises(JudgeError, match="drift: before .* and after .* differ"):
        quality.drift(dark, bright[:4])


def test_too_few_or_wrong_images_are_refused(clip):
    dark, bright = _sets()
    with pytest.raises(JudgeError, match="fid real: 1 images, at least 2"):
        quality.fid(clip, dark[:1], bright)
    with pytest.raises(JudgeError, match="expected uint8 RGB images"):
        quality.fid(clip, dark.astype(np.float32), bright)
