"""Atomic writes: a folder or file appears whole under its final name, or not at all.

Temporaries are hidden siblings named `.<name>.tmp-<host>-<pid>-<random>`. A run killed mid-write
leaves its temporary behind; the next write of the same name removes those whose process is gone
(same host, pid no longer running). A live run's temporary is never touched, even one of another
thread or process writing the same name at once; those of another host (a shared folder) are left
alone, since its pids mean nothing here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16] or "host"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publishable(path: str | Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give them the usual permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def owner_tag() -> str:
    """`<host>-<pid>`: put in a temporary's name so that a later run can tell whether it is stale."""
    return f"{_HOST}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def sweep_stale(parent: Path, prefix: str) -> list[Path]:
    """Remove entries of `parent` named `<prefix><host>-<pid>-...` left by a dead process of this
    host (see the module's docstring); returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        host, _, rest = entry.name[len(prefix):].partition("-")
        pid = rest.partition("-")[0]
        if host != _HOST or not pid.isdigit() or _alive(int(pid)):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _tmp_prefix(final: Path) -> str:
    sweep_stale(final.parent, f".{final.name}.tmp-")
    return f".{final.name}.tmp-{owner_tag()}-"


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary sibling folder; on success it replaces `final` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(final), dir=final.parent))
    _publishable(tmp, directory=True)
    try:
        yield tmp
        for entry in tmp.rglob("*"):  # libraries write some files private (0600); publish normally
            _publishable(entry, directory=entry.is_dir())
        old = final.with_name(f".{final.name}.old")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(final: Path, mode: str = "w"):
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(final), dir=final.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        _publishable(tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_safetensors(tensors: dict, final: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors.save_file, atomically."""
    from safetensors.torch import save_file

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(final), dir=final.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        _publishable(tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Content records: `<file>.sha256` beside a cached file, written after it, holds the sha256 of its
# bytes. A reader trusts the file only when the record is there and matches.
DIGEST_SUFFIX = ".sha256"


class CacheWarning(UserWarning):
    """A cached file could not be trusted and was produced again."""


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_digest(path: Path, data: bytes | None = None) -> None:
    """Record the sha256 of `path` (whose bytes are `data`, when the caller has them)."""
    path = Path(path)
    digest = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path)
    with atomic_file(_digest_path(path)) as fh:
        fh.write(digest + "\n")


def digest_problem(path: Path, data: bytes | None = None) -> str | None:
    """Why `path` cannot be trusted (no record, or its bytes differ from it), or None when it can."""
    path = Path(path)
    try:
        recorded = _digest_path(path).read_text().strip()
    except FileNotFoundError:
        return f"no content hash recorded ({_digest_path(path).name} missing)"
    except (OSError, UnicodeDecodeError) as exc:
        return f"its content hash record is unreadable ({exc})"
    actual = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path)
    if actual != recorded:
        return (f"its content (sha256 {actual[:12]}) does not match the hash recorded when it was written "
                f"({recorded[:12]})")
    return None


def remove_with_digest(path: Path) -> None:
    path = Path(path)
    path.unlink(missing_ok=True)
    _digest_path(path).unlink(missing_ok=True)


def writable_problem(path: Path) -> str | None:
    """Why `path` (a file or folder to create or replace) cannot be written, or None when it can:
    its nearest existing ancestor must be a folder in which this process can create entries (tried
    with a temporary file, since permission bits do not stop root and a read-only mount ignores them)."""
    path = Path(path).absolute()
    ancestor = path.parent
    while not ancestor.exists():
        if ancestor == ancestor.parent:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=f".write-test-{owner_tag()}-", dir=ancestor)
    except OSError as exc:
        return f"cannot create files in {ancestor} ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None
