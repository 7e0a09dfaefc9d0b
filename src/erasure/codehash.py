"""A hash of the code that produced a cached result, for cache keys.

`code_hash("cache.py", "models.py")` covers the project version, those modules and every module of
the package they import (found by reading their import statements, lazy imports inside functions
included), so editing any code a cached result depends on gives new keys, while editing unrelated
code (the command line, the flows) keeps the caches. A hand-kept list of files would drift.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from . import __version__

PACKAGE = Path(__file__).resolve().parent


def code_hash(*modules: str, root: Path = PACKAGE) -> str:
    """sha256 over the version and the sources of `modules` (paths relative to the package) and
    of every package module they import, directly or not."""
    root = Path(root).resolve()
    h = hashlib.sha256(f"erasure {__version__}\n".encode())
    for f in sorted(module_files(modules, root)):
        h.update(f.relative_to(root).as_posix().encode() + b"\n")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def module_files(modules, root: Path = PACKAGE) -> set[Path]:
    """The files of `modules` and of the package modules they import, transitively."""
    root = Path(root).resolve()
    todo = []
    for m in modules:
        f = (root / m).resolve()
        if not f.is_file():
            raise FileNotFoundError(f"code_hash: no module {m!r} in {root}")
        todo.append(f)
    seen: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo += _imported(f, root)
    return seen


def _imported(f: Path, root: Path) -> list[Path]:
    found = []
    for node in ast.walk(ast.parse(f.read_bytes(), filename=str(f))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y / from .. import z
                base = f.parent
                for _ in range(node.level - 1):
                    base = base.parent
                parts = node.module.split(".") if node.module else []
            elif node.module and node.module.split(".")[0] == "erasure":
                base, parts = root, node.module.split(".")[1:]
            else:
                continue
            target = base.joinpath(*parts)
            found += _module(target)
            found += [p for a in node.names for p in _module(target / a.name)]  # `from . import methods`
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "erasure":
                    found += _module(root.joinpath(*a.name.split(".")[1:]))
    return [p.resolve() for p in found if p.resolve().is_relative_to(root)]


def _module(path: Path) -> list[Path]:
    """The file of a module path: `x.py`, or a package's `x/__init__.py`; none when neither."""
    for candidate in (path.with_name(path.name + ".py"), path / "__init__.py"):
        if candidate.is_file():
            return [candidate]
    return []
