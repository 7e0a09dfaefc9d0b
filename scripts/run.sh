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
  if [ "$#" -eq 0 ]; then
    # The flow ran dvc.yaml's stages on params.yaml: record their outputs in dvc.lock, so that
    # `dvc repro` finds them up to date and `dvc metrics diff` compares with this run.
    .venv/bin/dvc commit -f -q || echo "dvc commit failed: dvc.lock does not record this run"
  fi
  .venv/bin/erasure release show
else
  echo "no release (flow exit $status)"
  # The failed gates again, as a table, when this run's release stage refused them; else the flow
  # stopped earlier, and its log above says why.
  gates=0
  .venv/bin/erasure release report "$@" --since "$start" 2>/dev/null || gates=$?
  case "$gates" in
    1) ;;  # the table names them
    0) echo "its gates passed, and the flow failed after them: see the log above" ;;
    *) echo "the flow stopped before its release stage: see the log above" ;;
  esac
fi
echo
# The review's page (the runs table with the gate columns), which the evaluate stage recorded.
review=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1])).get("review", ""))' \
  .cache/pipeline/mlflow-run.json 2>/dev/null || true)
echo "MLflow:  .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1   (then open http://127.0.0.1:5000$review)"
echo "metrics: .venv/bin/dvc metrics show"
.venv/bin/dvc metrics show || true
echo "main job finished in $(( $(date +%s) - start )) s (setup excluded)"
exit "$status"
