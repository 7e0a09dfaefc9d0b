"""Serve the release flow as a deployment on a cron schedule (the nightly blocklist run).

    python flows/deploy.py                         # schedule from params.yaml (schedule.cron)
    python flows/deploy.py --cron "*/5 * * * *"    # another schedule

Runs until stopped; each scheduled run executes in this process. Without PREFECT_API_URL Prefect
starts a temporary local API; to see runs in the UI, start `prefect server start --host 127.0.0.1`
and set PREFECT_API_URL=http://127.0.0.1:4200/api first (README, "Scheduling").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prefect.schedules import Cron  # noqa: E402
from release_flow import checked_params, exit_with, release_flow  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cron", help="cron expression (default: schedule.cron in params.yaml)")
    ap.add_argument("--name", default="nightly-blocklist")
    args = ap.parse_args()
    schedule = checked_params(args.params).schedule
    try:  # a --cron of the command line is checked here, as Prefect will read it, before serving
        cron = Cron(args.cron or schedule.cron, timezone=schedule.timezone)
    except ValueError as exc:
        exit_with([f"{'--cron' if args.cron else f'{args.params}: schedule.cron'}: {exc}"])
    release_flow.serve(name=args.name, schedules=[cron],
                       parameters={"params_path": args.params}, tags=["erasure"],
                       limit=1)  # runs share work/ and the erase work folder: one at a time


if __name__ == "__main__":
    main()
