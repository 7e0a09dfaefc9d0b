"""The image cache trusts a file only when its recorded content hash matches; keys follow the code."""

import warnings

import numpy as np
import pytest

from erasure.cache import CacheWarning, ImageCache, sampler_id
from erasure.codehash import code_hash, module_files
from erasure.models import load_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS, SEEDS = ["a cat", "a dog"], [0, 1]


def _cache(root, pipe, **kw):
    return ImageCache(root, "w" * 64, steps=2, guidance=3.0, sampler=sampler_id(pipe), **kw)


def test_a_swapped_or_truncated_image_is_redrawn_with_a_warning(tiny_pipeline_dir, tmp_path):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    cache = _cache(tmp_path, pipe)
    fresh = cache.images(pipe, PROMPTS, SEEDS, progress=False)
    assert cache.misses == 2 and not np.array_equal(fresh[0], fresh[1])
    cat, dog = (cache.path(p, s) for p, s in zip(PROMPTS, SEEDS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sound cache warns about nothing
        assert np.array_equal(cache.images(None, PROMPTS, SEEDS), fresh) and cache.hits == 2

    cat.write_bytes(dog.read_bytes())  # another cached image's bytes: a valid PNG, the wrong one
    dog.write_bytes(dog.read_bytes()[:40])  # truncated
    with pytest.warns(CacheWarning) as caught:
        again = cache.images(pipe, PROMPTS, SEEDS, progress=False)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and str(cat) in messages[0] + messages[1] and str(dog) in messages[0] + messages[1]
    assert all("drawing it again" in m and "does not match" in m for m in messages)
    assert np.array_equal(again, fresh) and cache.misses == 4  # both redrawn, equal to the first draw
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(cache.images(None, PROMPTS, SEEDS), fresh)  # and stored whole again


def test_an_image_without_its_record_or_undecodable_is_redrawn(tiny_pipeline_dir, tmp_path):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    cache = _cache(tmp_path, pipe)
    fresh = cache.images(pipe, PROMPTS[:1], SEEDS[:1], progress=False)
    png = cache.path(PROMPTS[0], SEEDS[0])
    png.with_name(png.name + ".sha256").unlink()  # a run killed between the image and its record
    with pytest.warns(CacheWarning, match="no content hash recorded"):
        assert np.array_equal(cache.images(pipe, PROMPTS[:1], SEEDS[:1], progress=False), fresh)
    # Garbage whose record matches (written so by a faulty writer): still not used.
    from erasure.io import write_digest

    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    write_digest(png)
    with pytest.warns(CacheWarning, match="not a readable PNG"):
        assert np.array_equal(cache.images(pipe, PROMPTS[:1], SEEDS[:1], progress=False), fresh)


def test_keys_name_the_sampler_and_the_code(tiny_pipeline_dir, tmp_path):
    from diffusers import EulerDiscreteScheduler

    pipe = load_pipeline(str(tiny_pipeline_dir))
    base = _cache(tmp_path, pipe).key("a cat", 0)
    assert _cache(tmp_path, pipe, code="other code").key("a cat", 0) != base
    assert _cache(tmp_path, pipe).key("a cat", 0) == base
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    assert _cache(tmp_path, pipe).key("a cat", 0) != base
    assert sampler_id(pipe).startswith("EulerDiscreteScheduler:")


def test_code_hash_follows_the_modules_imported(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("from .b import f\n\ndef g():\n    from .sub import c\n")
    (pkg / "b.py").write_text("import os\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from ..b import f\n")
    (pkg / "unrelated.py").write_text("x = 1\n")
    assert {p.name for p in module_files(["a.py"], pkg)} == {"a.py", "b.py", "__init__.py", "c.py"}
    before = code_hash("a.py", root=pkg)
    (pkg / "unrelated.py").write_text("x = 2\n")
    assert code_hash("a.py", root=pkg) == before
    (pkg / "sub" / "c.py").write_text("from ..b import f  # lazily imported, two levels down\n")
    assert code_hash("a.py", root=pkg) != before
    with pytest.raises(FileNotFoundError, match="no module"):
        code_hash("nosuch.py", root=pkg)


def test_the_real_caches_cover_the_code_that_makes_their_entries():
    from erasure.cache import IMAGE_CODE
    from erasure.codehash import PACKAGE
    from erasure.trainer import TRAINING_CODE

    images = {p.relative_to(PACKAGE).as_posix() for p in module_files(IMAGE_CODE)}
    assert {"cache.py", "sampling.py", "models.py"} <= images
    training = {p.relative_to(PACKAGE).as_posix() for p in module_files(TRAINING_CODE)}
    assert {"trainer.py", "methods/esd.py", "methods/ablation.py", "editable.py", "frozen.py", "trajectories.py",
            "prompts.py", "params.py", "concept.py", "delta.py", "checkpoint.py", "sampling.py"} <= training
    assert "cli.py" not in training and "cli.py" not in images


def test_a_guidance_scale_per_image_draws_and_keys_each_with_its_own(tiny_pipeline_dir, tmp_path):
    from erasure.sampling import generate

    pipe = load_pipeline(str(tiny_pipeline_dir))
    cache = _cache(tmp_path, pipe)
    mixed = cache.images(pipe, PROMPTS, SEEDS, progress=False, guidance=[3.0, 9.0])
    assert cache.path("a dog", 1, 9.0) != cache.path("a dog", 1) and cache.path("a cat", 0, 3.0) == cache.path("a cat", 0)
    alone = generate(pipe, ["a dog"], [1], steps=2, guidance=9.0, batch_size=64, progress=False)
    np.testing.assert_array_equal(mixed[1], alone[0])  # drawn at its own scale
    np.testing.assert_array_equal(mixed[0], cache.images(None, PROMPTS[:1], SEEDS[:1])[0])  # 3.0: the default key
    with pytest.raises(ValueError, match="2 prompts but 1 guidance"):
        cache.images(pipe, PROMPTS, SEEDS, guidance=[3.0])
