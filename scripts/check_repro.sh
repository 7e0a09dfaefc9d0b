#!/usr/bin/env bash
# Rebuild a committed release from a clean clone and compare it with what the commit recorded:
# clone the repository at COMMIT (default HEAD) into a temporary folder, run `dvc repro` there (an
# empty DVC cache and no pipeline caches: every stage runs), then compare every output's md5 with
# the commit's dvc.lock. Exit 0 only when the weights (work/erase/delta.safetensors) are identical.
#
#   bash scripts/check_repro.sh [COMMIT]
#
# The clone gets its own .venv (scripts/setup.sh, under a minute): it must run its own code, not
# this checkout's editable install.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
commit=${1:-HEAD}
git -C "$root" cat-file -e "$commit:dvc.lock" 2>/dev/null \
  || { echo "check_repro: $commit has no dvc.lock; run 'dvc repro' and commit dvc.lock first" >&2; exit 2; }
dest=$(mktemp -d "${TMPDIR:-/tmp}/erasure-repro.XXXXXX")
git clone -q "$root" "$dest/clone"
cd "$dest/clone"
git checkout -q "$commit"
bash scripts/setup.sh
source scripts/env.sh
start=$(date +%s)
dvc repro
echo "dvc repro in the clean clone: $(( $(date +%s) - start )) s ($dest/clone)"
git -C "$root" show "$commit:dvc.lock" > "$dest/recorded.lock"
python - "$dest/recorded.lock" dvc.lock <<'EOF'
import sys

import yaml


def outs(path):
    stages = yaml.safe_load(open(path))["stages"]
    return {o["path"]: o.get("md5") for s in stages.values() for o in s.get("outs", [])}


recorded, rebuilt = outs(sys.argv[1]), outs(sys.argv[2])
for path in sorted(recorded):
    same = recorded[path] == rebuilt.get(path)
    print(f"{'same' if same else 'DIFFERENT':9}  {path}  recorded {recorded[path]}  rebuilt {rebuilt.get(path)}")
print("(expected to differ: timing.json holds wall-clock times, losses.json only the phases not taken from "
      "the phase cache, work/ingest the diff against the releases present where it ran, report.json the "
      "release's path and its code version)")
weights = "work/erase/delta.safetensors"
ok = recorded.get(weights) is not None and recorded[weights] == rebuilt.get(weights)
print(f"weights {'identical' if ok else 'NOT identical'}: {weights}")
sys.exit(0 if ok else 1)
EOF
