#!/usr/bin/env bash
# Set up, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
# Two workers, whole modules each (module fixtures such as the README walkthrough's project stay in one):
# much of the suite waits on subprocess start-up and imports, which overlap well on two cores.
exec .venv/bin/python -m pytest -q -n 2 --dist loadscope --durations=15 "$@"
