#!/usr/bin/env bash
# The main job: set up, then run the release flow over the default blocklist on the embedded
# miniworld model (ingest -> anchors -> generate -> erase -> evaluate -> release), and say where
# everything is. Extra arguments go to the flow (e.g. --params my-params.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
start=$(date +%s)
status=0
.venv/bin/python flows/release_flow.py "$@" || status=$?
echo
if [ "$status" -eq 0 ]; then
  .venv/bin/erasure release show
else
  echo "no release (flow exit $status): see the log above; when a gate failed, work/release/report.json"
  echo "says which concept failed which gate"
fi
echo
echo "MLflow:  .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1   (then open http://127.0.0.1:5000)"
echo "metrics: .venv/bin/dvc metrics show"
.venv/bin/dvc metrics show || true
echo "main job finished in $(( $(date +%s) - start )) s (setup excluded)"
exit "$status"
