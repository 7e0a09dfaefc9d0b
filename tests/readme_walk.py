"""The README walkthrough: every command in its ```bash blocks runs in the tests (tests/test_readme*.py),
block by block in README order, as a new user would type it, in a copy of the project whose params.yaml
is the shipped one at toy sizes.

What a command may differ in from the README, and nothing else (see `sized`):
- sizes: step, image, prompt and pool counts are cut to the smallest that run (`--steps 1`, `-n 2`, ...),
  added where the command leaves them to a default;
- where it writes, when its default is the shipped model inside the package or the user's home
  (`miniworld train`, `train-detector`), and placeholders (`<folder>`, `<params>`) filled in;
- servers the README starts (`mlflow ui`, `prefect server start`, `flows/deploy.py`) are started,
  checked to answer, and stopped.
`bash scripts/test.sh` is this suite itself (CI runs it). A test runs a README block whole, so a command
added to a block runs with it; tests/test_readme.py fails when a block is covered by no test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
EXEMPT = {"bash scripts/test.sh": "the test suite itself: CI runs it (.ci/run)"}


def readme_commands(text: str | None = None) -> list[str]:
    """Every command of the README's ```bash blocks: continuations joined, comments and blanks dropped."""
    text = text if text is not None else (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = _strip_comment(line).strip()
            if line:
                commands.append(" ".join(line.split()))
    return commands


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


COMMANDS = readme_commands()


def sized(command: str, tmp: Path, fill: dict[str, str] | None = None) -> list[str]:
    """The README command as argv at the smallest sizes its options allow (see the module docstring)."""
    argv = shlex.split(command)
    subs = {"--steps": "1", "-n": "2", "--diffusion-steps": "1", "--vae-steps": "1", "--decoder-steps": "0",
            "--implicit-steps": "1", "--robust-rounds": "1"}
    small_options = {"anchor_images": 2, "context_prompts": 2, "preserve_prompts": 2, "images": 2}
    out = []
    for i, a in enumerate(argv):
        if i and argv[i - 1] in subs:
            a = subs[argv[i - 1]]
        elif i and argv[i - 1] == "--option" and a.split("=")[0] in small_options:
            a = f"{a.split('=')[0]}={small_options[a.split('=')[0]]}"
        a = {"<folder>": str(tmp / "model"), "<params>": "params.yaml"}.get(a, a)
        for key, value in (fill or {}).items():
            a = a.replace(key, value)
        out.append(a)
    words = " ".join(argv)
    if "erasure erase" in words and "--steps" not in argv:
        out += ["--steps", "1"]
    if "erasure miniworld train " in f"{words} ":  # never the shipped folder nor the home directory
        out += ["--workdir", str(tmp / "train")]
        phase = argv[argv.index("train") + 1] if len(argv) > argv.index("train") + 1 else "all"
        if phase in ("all", "export", "export-implicit") and "--out" not in argv:
            out += ["--out", str(tmp / "model")]
        if phase == "all":
            out += ["--dataset-size", "64", "--vae-steps", "1", "--diffusion-steps", "1"]
        if phase == "implicit":
            out += ["--implicit-steps", "1"]
    if "erasure miniworld train-detector" in words:
        out += ["--steps", "1", "--out", str(tmp / "detector.safetensors"), "--measure-images", "8", "--images", "64"]
    if words.endswith("benchmarks/miniworld_card.py"):
        out += ["--n", "1", "--steps", "2", "--detector-images", "8"]
    return out


def toy_params(path: Path) -> None:
    """The shipped params.yaml at toy sizes; gates wide open (toy training erases little)."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["generate"].update(images_per_probe=2, generic_images=4, steps=4)
    for key, r in p["erase"]["recipes"].items():
        if key.startswith("uce/"):  # closed form: no schedule to shrink, only its prompt counts
            r["options"].update(context_prompts=2, preserve_prompts=4)
            continue
        r.update(steps=2, pool_size=4, batch_size=2)
        o = r["options"]
        o.update({k: 2 for k in ("context_prompts", "anchor_images", "preserve_prompts") if k in o})
        o.update({"ddim_steps": 4} if key.startswith("esd") else {"anchor_steps": 4})
    p["erase"]["checkpoint_every"] = 1
    p["attack"].update(images=2, inversion={"tokens": 1, "steps": 2, "lr": 0.01, "batch_size": 2},
                       soft_prompt={"tokens": 2, "steps": 2, "lr": 0.01, "batch_size": 2})
    p["release"]["gates"] = {k: {b: (0.0 if b == "reduction_min" else 1.0) for b in g}
                             for k, g in p["release"]["gates"].items()}
    p["release"]["quality"] = {"fid_max_ratio": 1e6, "drift_max": 1.0}
    path.write_text(yaml.safe_dump(p, sort_keys=False))


def make_project(tmp_path_factory):
    """A copy of the project (its code and the venv linked), with toy-sized params.yaml, as a git repo."""
    # run.sh sets up the venv first: were it out of date, it would reinstall this venv from the copy
    # (entry points pointing at a temporary folder). The suite's own setup (scripts/test.sh) makes it current.
    stamp, want = VENV_BIN.parent / ".erasure-installed", hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    if not stamp.is_file() or stamp.read_text().strip() != want.hexdigest():
        pytest.fail(f"{VENV_BIN.parent} is not set up for this pyproject.toml: run `bash scripts/setup.sh` first")
    tmp = tmp_path_factory.mktemp("readme")
    proj = tmp / "project"
    proj.mkdir()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        top = name.split("/")[0]
        if top in ("src", "tests", "dvc.lock", "params.yaml"):
            continue
        if (ROOT / name).is_file():
            (proj / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, proj / name)
    (proj / "src").symlink_to(ROOT / "src")  # the installed package's code, unchanged
    (proj / ".venv").symlink_to(VENV_BIN.parent)
    toy_params(proj / "params.yaml")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "toy"]):
        subprocess.run(cmd, cwd=proj, env=env, check=True, capture_output=True)
    return tmp, proj


class Session:
    """Runs README commands in order in the project: env, background servers, and what each printed."""

    def __init__(self, tmp: Path, proj: Path):
        self.tmp, self.proj = tmp, proj
        self.env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                    "PREFECT_HOME": str(tmp / "prefect-home"),
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
        self.background: list[subprocess.Popen] = []
        self.fill: dict[str, str] = {}  # placeholders a step before filled (a release tag's <id>)

    def run(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        assert command in COMMANDS, f"not a README command: {command!r}"
        argv = sized(command, self.tmp, self.fill)
        if argv[0] == "source":
            assert (self.proj / argv[1]).is_file()
            return subprocess.CompletedProcess(argv, 0, "", "")
        if argv[0] == "export":
            key, _, value = argv[1].partition("=")
            self.env[key] = value
            return subprocess.CompletedProcess(argv, 0, "", "")
        t0 = time.time()
        if Path(argv[0]).name == "erasure" and argv[1:] != ["--help"]:
            res = self.in_process(argv)
        else:
            res = subprocess.run(argv, cwd=self.proj, env=self.env, capture_output=True, text=True, timeout=timeout)
        with open(self.tmp / "timings.txt", "a") as fh:  # where the suite's time goes
            fh.write(f"{time.time() - t0:7.1f} s  {command}\n")
        assert "Traceback" not in res.stdout + res.stderr, f"{command}\n{res.stderr[-4000:]}"
        assert res.returncode == 0, f"{command}: exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
        return res

    def in_process(self, argv: list[str]) -> subprocess.CompletedProcess:
        """`erasure ...` through the same Typer app in this process (its console script is run once, by
        `erasure --help`): saves a torch and diffusers import per command."""
        import traceback

        import torch
        from typer.testing import CliRunner

        from erasure.cli import app

        cwd, threads = os.getcwd(), torch.get_num_threads()
        os.chdir(self.proj)
        try:
            r = CliRunner().invoke(app, argv[1:], env=self.env)
        finally:
            os.chdir(cwd)
            torch.set_num_threads(threads)
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise AssertionError(f"{' '.join(argv)}: Traceback\n{''.join(traceback.format_exception(*r.exc_info))}")
        return subprocess.CompletedProcess(argv, r.exit_code, r.stdout, r.stderr)

    def start(self, command: str, ready, timeout: float = 180) -> subprocess.Popen:
        """A server command: start it, wait until `ready()` holds (it answers), leave it running."""
        assert command in COMMANDS, f"not a README command: {command!r}"
        argv = [a for a in sized(command, self.tmp) if a != "&"]
        log = open(self.tmp / f"server-{len(self.background)}.log", "w")
        proc = subprocess.Popen(argv, cwd=self.proj, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.background.append(proc)
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert proc.poll() is None, f"{command} exited {proc.returncode}:\n{Path(log.name).read_text()[-3000:]}"
            if ready(Path(log.name).read_text()):
                return proc
            time.sleep(1)
        raise AssertionError(f"{command}: not ready after {timeout} s:\n{Path(log.name).read_text()[-3000:]}")

    def stop_all(self) -> None:
        for proc in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # a served Prefect flow ignores SIGTERM (README)
                proc.wait()
        self.background.clear()


def _answers(url: str):
    def ready(_log: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                return r.status == 200
        except OSError:
            return False
    return ready


def block(heading: str) -> list[str]:
    """The commands of the first ```bash block after a README heading (or its first line of text)."""
    text = (ROOT / "README.md").read_text()
    at = text.index(heading)
    return readme_commands(text[at:text.index("```\n", text.index("```bash", at) + 7) + 4])




# The README's headings whose first ```bash block a test runs whole (tests/test_readme*.py).
TESTED = ("## Two commands", "## The command line", "## Erasing a concept",
          "## The pipeline: from a blocklist to a release", "the next run then compares with it:",
          "Against a local server:", "### Retraining it")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    s = Session(*make_project(tmp_path_factory))
    yield s
    s.stop_all()
