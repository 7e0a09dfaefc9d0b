import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from erasure.cli import app
from erasure.delta import DeltaError, apply_delta, export, load_delta, save_delta
from erasure.models import load_pipeline, weights_hash
from erasure.params import select_unet


def _changed(pipe):
    """Perturb the cross-attention of the tiny UNet; return the changed tensors as a delta."""
    torch.manual_seed(1)
    out = {}
    with torch.no_grad():
        for name, p in select_unet(pipe.unet, "xattn-kv").items():
            p.add_(torch.randn_like(p))
            out[f"unet.{name}"] = p.detach().clone()
    return out


def test_export_writes_a_loadable_folder_with_the_delta(tiny_pipeline_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(str(tiny_pipeline_dir))
    delta = _changed(pipe)
    path = tmp_path / "d.safetensors"
    save_delta(path, delta, method="esd", params={"eta": 1.0}, concepts=[{"concept": "cat"}],
               base_hash=weights_hash(tiny_pipeline_dir))
    tensors, meta = load_delta(path)
    assert meta["method"] == "esd" and meta["params"] == {"eta": 1.0}
    assert set(tensors) == set(delta)

    res = CliRunner().invoke(app, ["export", "--model", str(tiny_pipeline_dir), "--delta", str(path),
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    loaded = StableDiffusionPipeline.from_pretrained(str(tmp_path / "out"))
    params = dict(loaded.unet.named_parameters())
    for key, value in delta.items():
        assert torch.equal(params[key.split(".", 1)[1]], value)
    base = dict(load_pipeline(str(tiny_pipeline_dir)).unet.named_parameters())
    untouched = [n for n in params if f"unet.{n}" not in delta]
    assert all(torch.equal(params[n], base[n]) for n in untouched)
    assert json.loads((tmp_path / "out" / "erasure_delta.json").read_text())["method"] == "esd"


def test_export_does_not_depend_on_where_the_base_lies(tiny_pipeline_dir, tmp_path):
    """The same base in two folders (two checkouts) exports the same configs: each names the base
    as the caller gave it (for the shipped model, 'miniworld'), not the folder it was read from."""
    import shutil

    other = tmp_path / "elsewhere" / "base"
    shutil.copytree(tiny_pipeline_dir, other)
    pipe = load_pipeline(str(tiny_pipeline_dir))
    path = tmp_path / "d.safetensors"
    save_delta(path, _changed(pipe), method="esd", params={}, concepts=[],
               base_hash=weights_hash(tiny_pipeline_dir))
    export(str(tiny_pipeline_dir), path, tmp_path / "a")
    export(str(other), path, tmp_path / "b")
    configs = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.json"))
    assert any(c.name == "model_index.json" for c in configs)
    for rel in configs:
        a = json.loads((tmp_path / "a" / rel).read_text())
        b = json.loads((tmp_path / "b" / rel).read_text())
        if "_name_or_path" in a:
            assert (a.pop("_name_or_path"), b.pop("_name_or_path")) == (str(tiny_pipeline_dir), str(other))
        assert a == b, rel


def test_delta_refuses_another_base(tiny_pipeline_dir, tmp_path):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    path = tmp_path / "d.safetensors"
    save_delta(path, _changed(pipe), method="esd", params={}, concepts=[], base_hash="0" * 64)
    with pytest.raises(DeltaError, match="trained on base model"):
        export(str(tiny_pipeline_dir), path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_delta_shape_and_name_mismatch(tiny_pipeline_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    with pytest.raises(DeltaError, match="no counterpart"):
        apply_delta(pipe, {"unet.nope.weight": torch.zeros(1)}, {"base_hash": "h"}, None)
    name, p = next(iter(pipe.unet.named_parameters()))
    with pytest.raises(DeltaError, match="shape"):
        apply_delta(pipe, {f"unet.{name}": torch.zeros(p.numel() + 1)}, {"base_hash": "h"}, None)


def test_corrupt_or_foreign_delta_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(DeltaError, match="not a readable"):
        load_delta(bad)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(DeltaError, match="format"):
        load_delta(tmp_path / "plain.safetensors")
    with pytest.raises(DeltaError, match="no such file"):
        load_delta(tmp_path / "missing.safetensors")


def test_same_delta_same_bytes(tiny_pipeline_dir, tmp_path):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    delta = _changed(pipe)
    for name in ("a", "b"):
        save_delta(tmp_path / name, delta, method="ca", params={"x": 1}, concepts=[], base_hash="h")
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def _raw_delta(path, tensors, **meta):
    """A delta file written by hand (as a foreign or damaged tool would), bypassing save_delta's checks."""
    from safetensors.torch import save_file

    from erasure.delta import FORMAT

    meta = {"format": FORMAT, "method": "esd", "params": {}, "concepts": []} | meta
    save_file(tensors, str(path), metadata={"erasure": json.dumps(meta)})
    return path


def test_a_delta_without_its_base_hash_is_refused_on_load_apply_export_and_save(tiny_pipeline_dir, tmp_path):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    delta = _changed(pipe)
    for name, meta in (("none.safetensors", {}), ("empty.safetensors", {"base_hash": ""})):
        path = _raw_delta(tmp_path / name, delta, **meta)
        with pytest.raises(DeltaError, match=rf"{name} has no base_hash; it cannot be checked against a model"):
            load_delta(path)
        res = CliRunner().invoke(app, ["export", "--model", str(tiny_pipeline_dir), "--delta", str(path),
                                       "--out", str(tmp_path / "out")])
        assert res.exit_code == 2 and "has no base_hash" in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "out").exists()
    with pytest.raises(DeltaError, match="has no base_hash"):
        apply_delta(pipe, delta, {"method": "esd"}, weights_hash(tiny_pipeline_dir))
    with pytest.raises(DeltaError, match="base_hash"):
        save_delta(tmp_path / "new.safetensors", delta, method="esd", params={}, concepts=[], base_hash="")
    assert not (tmp_path / "new.safetensors").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_delta_with_a_non_finite_value_is_refused_on_load_apply_export_and_save(bad, tiny_pipeline_dir, tmp_path):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    delta = _changed(pipe)
    key = sorted(delta)[1]
    delta[key].view(-1)[3] = bad
    base = weights_hash(tiny_pipeline_dir)
    path = _raw_delta(tmp_path / "d.safetensors", delta, base_hash=base)
    with pytest.raises(DeltaError, match=rf"d.safetensors: tensor '{key}' holds 1 NaN or infinite value"):
        load_delta(path)
    res = CliRunner().invoke(app, ["export", "--model", str(tiny_pipeline_dir), "--delta", str(path),
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and key in res.output and "NaN or infinite" in res.output, res.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(DeltaError, match=key):
        apply_delta(pipe, delta, {"base_hash": base}, base)
    with pytest.raises(DeltaError, match=rf"not saved: tensor '{key}'"):
        save_delta(tmp_path / "new.safetensors", delta, method="esd", params={}, concepts=[], base_hash=base)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.safetensors"]


def _unwritable(tmp_path):
    """Places no one can write to, root included (permission bits do not stop root): below a
    regular file, and (on Linux) inside /proc."""
    (tmp_path / "a-file").write_text("not a folder")
    places = [(tmp_path / "a-file" / "sub", "a-file is a file, not a folder")]
    if os.path.isdir("/proc/self"):
        places.append((Path("/proc"), "cannot create files in /proc"))
    return places


def test_export_to_an_unwritable_place_is_one_error_before_any_work(tiny_pipeline_dir, tmp_path):
    for parent, why in _unwritable(tmp_path):
        out = parent / "export"
        # The delta named does not exist: the --out check comes first, before anything is read.
        res = CliRunner().invoke(app, ["export", "--model", str(tiny_pipeline_dir), "--delta",
                                       str(tmp_path / "missing.safetensors"), "--out", str(out)])
        assert res.exit_code == 2, res.output
        assert f"--out {out}: cannot write there: " in res.output and why in res.output, res.output
        assert "Traceback" not in res.output and "missing.safetensors" not in res.output
    res = CliRunner().invoke(app, ["export", "--model", str(tiny_pipeline_dir), "--delta",
                                   str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "a-file")])
    assert res.exit_code == 2 and "a-file is a file; expected the folder" in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_erase_to_an_unwritable_place_is_one_error_before_any_training(tiny_pipeline_dir, tmp_path):
    common = ["erase", "--model", str(tiny_pipeline_dir), "--concept", "cat", "--kind", "style", "--steps", "1"]
    for parent, why in _unwritable(tmp_path):
        for flag, args in (("--out", ["--out", str(parent / "d.safetensors")]),
                           ("--workdir", ["--out", str(tmp_path / "d.safetensors"), "--workdir", str(parent / "w")])):
            res = CliRunner().invoke(app, [*common, *args])
            assert res.exit_code == 2, res.output
            assert f"{flag} {parent}" in res.output and "cannot write there" in res.output and why in res.output
            assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no workdir, no delta


def test_the_weights_digest_follows_the_tensors_not_the_file(tmp_path):
    """Two deltas with the same tensors and other metadata (the concepts in another order) share the
    digest images are cached under; a changed value, dtype or name does not."""
    from erasure.delta import weights_digest

    w = {"unet.a.weight": torch.arange(6.0).reshape(2, 3), "text_encoder.b": torch.ones(2)}
    for i, concepts in enumerate(([{"text": "x"}, {"text": "y"}], [{"text": "y"}, {"text": "x"}])):
        save_delta(tmp_path / f"{i}.safetensors", w, method="uce", params={}, concepts=concepts, base_hash="h")
    a, b = (load_delta(tmp_path / f"{i}.safetensors")[0] for i in range(2))
    assert (tmp_path / "0.safetensors").read_bytes() != (tmp_path / "1.safetensors").read_bytes()
    assert weights_digest(a) == weights_digest(b) == weights_digest(w)
    changed = dict(w, **{"text_encoder.b": torch.tensor([1.0, 1.0 + 2**-20])})
    assert weights_digest(changed) != weights_digest(w)
    assert weights_digest(dict(w, **{"text_encoder.b": torch.ones(2, dtype=torch.float64)})) != weights_digest(w)
    renamed = {"unet.c.weight": w["unet.a.weight"], "text_encoder.b": w["text_encoder.b"]}
    assert weights_digest(renamed) != weights_digest(w)
