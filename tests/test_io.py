import os

import pytest
import torch

from erasure.io import atomic_dir, atomic_file, save_safetensors


def test_atomic_dir_publishes_whole_or_nothing(tmp_path):
    final = tmp_path / "release"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("whole")
    assert (final / "a.txt").read_text() == "whole"
    assert oct(final.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def test_atomic_file_and_safetensors_have_normal_permissions(tmp_path):
    with atomic_file(tmp_path / "x.json") as fh:
        fh.write("{}")
    save_safetensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    for name in ("x.json", "w.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors", "x.json"]


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m
