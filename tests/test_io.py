import os
import subprocess
import sys

import pytest
import torch

from erasure.io import atomic_dir, atomic_file, owner_tag, save_safetensors


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


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_runs_temporaries_are_removed_by_the_next_write_never_a_live_ones(tmp_path):
    host = owner_tag().rsplit("-", 1)[0]
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # another run, still writing
    try:
        stale = [tmp_path / f".erase.tmp-{host}-{dead}-abc123", tmp_path / f".x.json.tmp-{host}-{dead}-q1"]
        kept = [tmp_path / f".erase.tmp-{host}-{live.pid}-def456", tmp_path / f".erase.tmp-{owner_tag()}-ghi789",
                tmp_path / f".erase.tmp-otherhost-{dead}-jkl000",  # another machine's pid means nothing here
                tmp_path / ".erase.tmp-oldstyle1"]  # no owner in the name: left alone
        for d in (stale[0], *kept):
            d.mkdir()
            (d / "half.safetensors").write_bytes(b"x")
        stale[1].write_text("{")
        with atomic_dir(tmp_path / "erase") as tmp:
            assert tmp.name.startswith(f".erase.tmp-{owner_tag()}-")
            (tmp / "a").write_text("whole")
        with atomic_file(tmp_path / "x.json") as fh:
            fh.write("{}")
        assert not any(p.exists() for p in stale)
        assert all((p / "half.safetensors").is_file() for p in kept)
        assert (tmp_path / "erase" / "a").read_text() == "whole" and (tmp_path / "x.json").read_text() == "{}"
    finally:
        live.kill()
        live.wait()


def test_digest_records_and_writable_places(tmp_path):
    from erasure.io import digest_problem, write_digest, writable_problem

    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    assert "no content hash recorded" in digest_problem(f)
    write_digest(f)
    assert digest_problem(f) is None and digest_problem(f, b"abc") is None
    f.write_bytes(b"abd")
    assert "does not match" in digest_problem(f)
    assert writable_problem(tmp_path / "new" / "deeper" / "x") is None
    assert writable_problem(f / "x") == f"{f} is a file, not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin", "f.bin.sha256"]  # the probe left nothing
