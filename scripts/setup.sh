#!/usr/bin/env bash
# Create .venv and install the project with its pinned dependencies. Idempotent and quick when
# nothing changed (a stamp of pyproject.toml is kept in the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.erasure-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned dependencies (first time: about a minute)"
  # torch first and exactly pinned, with pip: it takes the CPU wheel on this disk (an unpinned torch,
  # or uv, would pull a multi-GB CUDA build).
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  # The rest with uv: the same versions as pip in about 10 s instead of 90 (a third of the main
  # job's setup); pip remains the fallback. Compiled to bytecode now (about 30 s): where
  # PYTHONDONTWRITEBYTECODE is set (as on these machines), every process otherwise recompiles the
  # diffusers and transformers modules it imports, about 3.5 s per stage, CLI call or test subprocess.
  if ! { .venv/bin/python -m pip install --quiet "uv==0.13.9" \
         && .venv/bin/uv pip install --python .venv/bin/python --quiet --compile-bytecode -e ".[dev]"; }; then
    echo "setup: uv failed; installing with pip"
    .venv/bin/python -m pip install --quiet -e ".[dev]"
  fi
  echo "$want" > "$stamp"
fi
