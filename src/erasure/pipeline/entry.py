"""The command-line entry of every stage (`python stages/<name>.py [--params params.yaml]`):
read params, run the stage, print its summary; on bad input one clear error and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
for _var in ("DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY"):
    os.environ.setdefault(_var, "true")

STAGES = ("ingest", "anchors", "generate", "erase", "evaluate", "attack", "release")


def main(stage: str, argv: list[str] | None = None) -> int:
    from ..config import ParamsError, load_params

    ap = argparse.ArgumentParser(prog=f"stages/{stage}.py", description=f"Run the pipeline's {stage} stage.")
    ap.add_argument("--params", default="params.yaml", help="the pipeline's params file (default: params.yaml)")
    args = ap.parse_args(argv)
    try:  # the whole file is checked before the stage loads anything
        params = load_params(args.params)
    except ParamsError as exc:
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"erasure.pipeline.{stage}")
    try:
        summary = module.run(params)
    except (ParamsError, ValueError, FileNotFoundError, RuntimeError) as exc:
        from pydantic import ValidationError

        message = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        print(f"error: {stage}: {message}", file=sys.stderr)
        return 2
    print(json.dumps({"stage": stage, **(summary if isinstance(summary, dict) else {"result": summary})},
                     default=str)[:2000])
    if isinstance(summary, dict) and summary.get("passed") is False:  # release: a gate failed
        from ..report import print_failed_gates

        print_failed_gates(summary.get("failed") or [])
        return 1
    return 0
