"""Screenshots of the MLflow review in a real browser: starts `mlflow ui` on a tracking store, takes
headless Chromium screenshots, stops the server.

    python scripts/review_screenshots.py --params params.yaml --out docs/review
    python scripts/review_screenshots.py --tracking-uri sqlite:///mlflow.db --experiment erasure --out shots

Screenshots (of the latest pipeline run; `--concept` picks the concept, else the first):
    1-runs-table.png        the runs table, parent runs with per-concept targets and gate columns
    2-concept-run.png       the concept's run: description (gates table), params, metrics, tags
    3-concept-grid.png      its side-by-side before/after grid (prompt and judge's reading per image)
    4-concept-loss.png      its training loss per step (the erase stage's losses.json)
    5-compare-runs.png      MLflow's comparison of this concept's run with the previous release's
    6-previous-delta.png    the delta table against the previous release (previous_release/comparison.html)
    7-previous-grid.png     the previous release's grid, logged beside this run's

Needs Chromium (`apt-get install -y chromium`, or --chromium PATH). Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _wait(url: str, seconds: float, server: subprocess.Popen) -> None:
    end = time.time() + seconds
    while time.time() < end:
        if server.poll() is not None:
            _fail(f"mlflow ui exited with code {server.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    _fail(f"mlflow ui did not answer {url} within {seconds:.0f} s")


def _targets(uri: str, experiment: str, concept: str | None) -> dict:
    """Experiment id, the latest pipeline run, its concept run, and the previous release's runs."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        _fail(f"{uri}: no experiment {experiment!r}; run the pipeline first (or pass --experiment)")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.mlflow.runName = 'pipeline'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        _fail(f"{uri}: experiment {experiment!r} has no 'pipeline' run yet")
    parent = parents[0]

    def children(run_id):
        return client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                                  order_by=["attributes.start_time ASC"])

    kids = children(parent.info.run_id)
    names = [r.info.run_name for r in kids]
    if not kids:
        _fail(f"the latest pipeline run {parent.info.run_id} has no concept runs")
    if concept is not None and concept not in names:
        _fail(f"--concept {concept!r}: expected one of the latest run's concepts {names}")
    run = kids[names.index(concept)] if concept else kids[0]
    grid = next((a.path for a in client.list_artifacts(run.info.run_id, "grids")), None)
    previous = parent.data.tags.get("previous_run_id")
    old = next((r for r in children(previous) if r.info.run_name == run.info.run_name), None) \
        if previous and previous != "-" else None
    return {"experiment_id": exp.experiment_id, "parent": parent.info.run_id, "run": run.info.run_id,
            "concept": run.info.run_name, "grid": grid, "previous_parent": previous if old else None,
            "previous_run": old.info.run_id if old else None}


def _shoot(chromium: str, url: str, out: Path, profile: Path, size: str, budget_ms: int) -> None:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={profile}", f"--window-size={size}", f"--virtual-time-budget={budget_ms}",
           f"--screenshot={out}", url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if res.returncode != 0 or not out.is_file():
        _fail(f"chromium failed on {url} (exit {res.returncode}): {res.stderr.strip()[-500:]}")
    print(f"{out}  <- {url}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", help="read the tracking URI and experiment from this params file")
    ap.add_argument("--tracking-uri")
    ap.add_argument("--experiment")
    ap.add_argument("--concept", help="the concept whose run is shown (default: the first)")
    ap.add_argument("--out", required=True, type=Path, help="folder for the PNGs")
    ap.add_argument("--port", type=int, default=5071)
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    ap.add_argument("--host", default="127.0.0.2", help="loopback address for mlflow ui (default 127.0.0.2)")
    ap.add_argument("--size", help="window size WIDTH,HEIGHT for every page (default: chosen per page)")
    ap.add_argument("--budget-ms", type=int, default=15000, help="virtual time a page gets to render")
    args = ap.parse_args()

    uri, experiment = args.tracking_uri, args.experiment
    if args.params:
        from erasure.config import ParamsError, load_params

        try:
            params = load_params(args.params)
        except (ParamsError, ValueError, FileNotFoundError) as exc:
            _fail(str(exc))
        uri, experiment = uri or params.tracking.uri, experiment or params.tracking.experiment
    uri, experiment = uri or "sqlite:///mlflow.db", experiment or "erasure"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        _fail(f"--tracking-uri {uri}: no such database file")
    if not args.chromium or not Path(args.chromium).exists() and not shutil.which(args.chromium):
        _fail("no chromium found: install it (apt-get install -y chromium) or pass --chromium PATH")
    t = _targets(uri, experiment, args.concept)
    from erasure.tracking import review_url

    args.out.mkdir(parents=True, exist_ok=True)

    # 127.0.0.2, still loopback: on localhost / 127.0.0.1 the UI opens its assistant panel over a third
    # of every page. Its host and origin must then be allowed (MLflow's DNS-rebinding and CORS checks).
    host = args.host
    base = f"http://{host}:{args.port}"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    log = open(args.out / "mlflow-ui.log", "w")  # noqa: SIM115 (open while the server runs)
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host,
                               "--port", str(args.port), "--allowed-hosts", f"{host}:{args.port},{host}",
                               "--cors-allowed-origins", base], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        _wait(f"{base}/health", 180, server)
        e, run = t["experiment_id"], t["run"]
        # `workflowType=machine_learning`: the model-training view (the UI's default is GenAI's).
        ml = "workflowType=machine_learning"
        tall, wide = "1500,1900", "1700,1000"
        pages = [("1-runs-table.png", review_url(base, e), "2000,700"),
                 ("2-concept-run.png", f"{base}/#/experiments/{e}/runs/{run}?{ml}", tall)]
        if t["grid"]:
            pages.append(("3-concept-grid.png", f"{base}/#/experiments/{e}/runs/{run}/artifacts/{t['grid']}?{ml}",
                          "1700,1250"))
        q = urllib.parse.quote
        pages.append(("4-concept-loss.png", f"{base}/#/metric?runs={q(json.dumps([run]))}&metric=%22loss%22"
                                            f"&experiments={q(json.dumps([e]))}&plot_metric_keys=%5B%22loss%22%5D"
                                            "&plot_layout=%7B%7D&x_axis=step&y_axis_scale=linear&line_smoothness=1"
                                            "&show_point=false&deselected_curves=%5B%5D&last_linear_y_axis_range=%5B%5D"
                                            f"&{ml}", "1500,800"))
        if t["previous_run"]:
            runs = urllib.parse.quote(json.dumps([t["previous_run"], run]))
            pages += [("5-compare-runs.png", f"{base}/#/compare-runs?runs={runs}&experiments="
                                             f"{urllib.parse.quote(json.dumps([e]))}&{ml}", "1500,2600"),
                      ("6-previous-delta.png",
                       f"{base}/#/experiments/{e}/runs/{run}/artifacts/previous_release/comparison.html?{ml}", wide)]
            if t["grid"]:
                pages.append(("7-previous-grid.png", f"{base}/#/experiments/{e}/runs/{run}/artifacts/"
                                                     f"previous_release/{Path(t['grid']).name}?{ml}", "1700,1250"))
        else:
            print("no previous release's run: the comparison screenshots are skipped")
        with tempfile.TemporaryDirectory() as profile:  # a fresh browser: no view settings remembered
            for name, url, size in pages:
                _shoot(args.chromium, url, args.out / name, Path(profile), args.size or size, args.budget_ms)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


if __name__ == "__main__":
    main()
