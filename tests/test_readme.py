"""The README's commands, as written, on the shipped model at toy sizes (see tests/readme_walk.py):
the main job, the command line, erasing, the pipeline and its DVC review. The scheduling and retraining
blocks are in tests/test_readme_schedule.py and tests/test_readme_retrain.py (apart, so that
`pytest -n 2` runs them beside this one)."""

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from readme_walk import COMMANDS, EXEMPT, ROOT, TESTED, _answers, block, readme_commands, session  # noqa: F401

pytestmark = pytest.mark.slow


def test_every_readme_command_is_in_a_tested_block():
    covered = {c for heading in TESTED for c in block(heading)}
    missing = [c for c in COMMANDS if c not in covered and c not in EXEMPT]
    assert not missing, f"README commands in a block no test runs: {missing}"
    assert len(readme_commands()) >= 30  # the parser still finds the README's blocks


def test_two_commands_main_job(session):
    (main_job,) = [c for c in block("## Two commands") if c not in EXEMPT]
    res = session.run(main_job)
    assert "release " in res.stdout and "main job finished" in res.stdout
    assert (session.proj / "releases" / "LATEST").is_file()


def test_command_line_block(session):
    p = session.proj
    for command in block("## The command line"):
        res = session.run(command)
        if "--help" in command:
            assert "erase" in res.stdout and "export" in res.stdout
        elif "detect" in command:
            assert len(json.loads(res.stdout)) == 2
        elif "concepts --json" in command:
            assert {"style", "instance", "memorized"} <= set(json.loads(res.stdout))
        elif command.endswith("miniworld path"):
            assert (Path(res.stdout.strip()) / "model_index.json").is_file()
        elif "render" in command:
            assert (p / "world.png").is_file() and len(res.stdout.strip().splitlines()) >= 2
    assert (p / "grid.png").is_file() and len(list((p / "pip").glob("*.png"))) == 2


def test_erasing_a_concept_block(session):
    p = session.proj
    for command in block("## Erasing a concept"):
        res = session.run(command)
        out = shlex.split(command)[shlex.split(command).index("--out") + 1]
        if " erase " in f" {command} ":
            assert "wrote" in res.stdout and (p / out).is_file()
        else:
            assert (p / out / "model_index.json").is_file()


def test_pipeline_block(session):
    for command in block("## The pipeline: from a blocklist to a release"):
        if "mlflow ui" in command:
            session.start(command, _answers("http://127.0.0.1:5000/health"), timeout=240)
            session.stop_all()
            continue
        res = session.run(command)
        if "release show --json" in command:
            info = json.loads(res.stdout)
            assert (session.proj / "releases" / info["release_id"]).is_dir()
        if command.endswith("dvc repro"):  # the main job's dvc commit recorded the flow's stages: none reruns
            assert "Stage 'erase'" in res.stdout and "Running stage" not in res.stdout, res.stdout[-2000:]
        if "stages/ingest.py" in command:
            assert json.loads(res.stdout.splitlines()[-1])["stage"] == "ingest"


def test_dvc_review_block(session):
    """After a release, the README commits the review files and tags the commit; then compares with it."""
    p, env = session.proj, session.env
    rid = (p / "releases" / "LATEST").read_text().strip()
    for cmd in (["git", "add", "dvc.lock", "work/evaluate"], ["git", "commit", "-qm", f"release {rid}"],
                ["git", "tag", f"release-{rid}"]):
        subprocess.run(cmd, cwd=p, env={**env, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"},
                       check=True, capture_output=True)
    session.fill["<id>"] = rid
    for command in block("the next run then compares with it:"):
        res = session.run(command)
        if "metrics show" in command:
            assert "target" in res.stdout or "after" in res.stdout
    assert (p / "dvc_plots" / "index.html").is_file()
