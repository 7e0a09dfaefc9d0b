"""Show that the deployment's cron schedule creates and completes a flow run on a local Prefect server.

    .venv/bin/python scripts/schedule_demo.py [--params params.yaml] [--cron "* * * * *"]

Starts `prefect server start --host 127.0.0.1` (SQLite, a private PREFECT_HOME), serves
flows/deploy.py with the given cron, waits for the scheduler to create a run and for that run to
complete, prints the run's record, then stops both processes. With toy params (tests/test_pipeline.py
writes some) the run takes a few minutes; the default params take the main job's time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORT = 4243


def _wait_healthy(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"prefect server at {url} not healthy after {timeout:.0f} s")


async def _runs(deployment: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cron", default="* * * * *", help="default: every minute, so a run comes soon")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="prefect-demo-"))
    url = f"http://127.0.0.1:{PORT}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url, "DO_NOT_TRACK": "true",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)
    prefect = str(Path(sys.executable).parent / "prefect")
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(PORT)], env=env,
                              stdout=open(home / "server.log", "w"), stderr=subprocess.STDOUT)
    served = None
    try:
        t0 = time.time()
        _wait_healthy(url, 120)
        print(f"server healthy after {time.time() - t0:.0f} s at {url}", flush=True)
        served = subprocess.Popen([sys.executable, str(ROOT / "flows" / "deploy.py"), "--params", args.params,
                                   "--cron", args.cron, "--name", "schedule-demo"], cwd=ROOT, env=env,
                                  stdout=open(home / "serve.log", "w"), stderr=subprocess.STDOUT)
        print(f"serving deployment 'erasure-release/schedule-demo' with cron {args.cron!r}", flush=True)
        deadline = time.time() + args.timeout
        seen = None
        while time.time() < deadline:
            if served.poll() is not None:
                raise SystemExit(f"the served deployment exited ({served.returncode}); see {home / 'serve.log'}")
            runs = asyncio.run(_runs("schedule-demo"))
            done = [r for r in runs if r.state and r.state.is_final()]
            if runs and seen is None:
                r = runs[0]
                seen = r.id
                print(f"scheduler created run {r.name} ({r.id}) for {r.expected_start_time}, "
                      f"auto-scheduled={r.auto_scheduled}", flush=True)
            if done:
                r = done[0]
                print(f"run {r.name}: state {r.state.name} after {r.total_run_time}; "
                      f"expected start {r.expected_start_time}, started {r.start_time}, ended {r.end_time}")
                sys.exit(0 if r.state.is_completed() else 1)
            time.sleep(5)
        raise SystemExit(f"no scheduled run completed within {args.timeout:.0f} s")
    finally:
        for proc in (served, server):  # a served flow hangs on SIGTERM: SIGKILL it
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL if proc is served else signal.SIGTERM)
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
