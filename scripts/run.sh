#!/usr/bin/env bash
# Set up, then run the main job on the embedded default (the miniworld model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec .venv/bin/erasure run "$@"
