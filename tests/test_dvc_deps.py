"""dvc.yaml's deps cannot drift from the code: every module of src/erasure a stage can import (at module
level or inside a function, absolutely or relatively, transitively) is among that stage's deps, so
`dvc repro` after editing it reruns the stage. A toy pipeline shows why it matters: DVC reruns a
stage for an edited module it declares, and silently not for one it does not. And what the stages
give DVC for review: metrics per concept and plot data that `dvc metrics/params/plots diff` read
against an earlier commit (a previous release)."""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = "erasure"
DVC = Path(sys.executable).with_name("dvc")

# stages/<name>.py calls erasure.pipeline.entry.main(name), which imports erasure.pipeline.<name> by name
# (importlib): the one dynamic import in the package, which the walk below cannot see. The test fails
# when another appears (test_no_other_dynamic_imports).
DYNAMIC = {"src/erasure/pipeline/entry.py": lambda stage: [f"{PACKAGE}.pipeline.{stage}"]}

# Data the code reads at run time, next to it in the package: the stages whose code reaches the loader
# need the data among their deps too (the same rule the dvc.yaml comment states).
DATA = {"src/erasure/models.py": "src/erasure/miniworld/shipped/pipeline",
        "src/erasure/miniworld/detector.py": "src/erasure/miniworld/shipped/detector.safetensors"}


def module_file(name: str) -> Path | None:
    """erasure.a.b -> src/erasure/a/b.py or src/erasure/a/b/__init__.py; None if neither (an attribute)."""
    base = SRC.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def module_name(path: Path) -> tuple[str | None, str | None]:
    """(module, package) of a file: None, None for a script outside src/ (stages/*.py)."""
    try:
        rel = path.relative_to(SRC).with_suffix("")
    except ValueError:
        return None, None
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def imported_modules(path: Path) -> set[str]:
    """Every `erasure...` module a file imports, anywhere in it; `from m import x` names m and m.x (x may
    be a submodule); the caller keeps those that are files."""
    _, package = module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert package is not None, f"{path}: relative import outside the package"
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def closure(script: Path, stage: str) -> set[Path]:
    """The files of src/erasure that running `script` can import, each package's __init__.py included."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        names = imported_modules(f)
        names.update(DYNAMIC.get(str(f.relative_to(ROOT)), lambda s: [])(stage))
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                target = module_file(".".join(parts[:i]))
                if target is not None and target not in seen:
                    todo.append(target)
    seen.discard(script)
    return seen


def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_script(stage: str, spec: dict) -> Path:
    argv = shlex.split(spec["cmd"])
    assert argv[0] == "python" and argv[1].startswith("stages/"), f"dvc.yaml: stage {stage!r}: unexpected cmd"
    return ROOT / argv[1]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_stage_deps_hold_every_module_it_imports(stage):
    spec = dvc_stages()[stage]
    script = stage_script(stage, spec)
    deps = [str(d) for d in spec.get("deps", [])]
    needed = {str(f.relative_to(ROOT)) for f in closure(script, stage)} | {str(script.relative_to(ROOT))}
    needed |= {data for code, data in DATA.items() if code in needed}
    assert f"src/{PACKAGE}/pipeline/{stage}.py" in needed  # the walk found the stage's own module
    missing = sorted(p for p in needed if not covered(p, deps))
    assert not missing, f"dvc.yaml: stage {stage!r} runs code (or reads data) its deps omit: {', '.join(missing)}"
    made = {next(iter(o)) if isinstance(o, dict) else o for s in dvc_stages().values() for o in s.get("outs", [])}
    for d in deps:  # a typo in a dep would leave its file unwatched
        assert d in made or (ROOT / d).exists(), f"dvc.yaml: stage {stage!r}: dep {d} does not exist"


def test_walk_follows_every_import_form(tmp_path, monkeypatch):
    """The walk itself: function-level, relative, `from . import sub`, packages' __init__, cycles."""
    pkg = tmp_path / "src" / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    files = {"__init__.py": "", "a.py": "def f():\n    from .sub import b\n", "sub/__init__.py": "",
             "sub/b.py": "from . import c\nfrom .. import a\n", "sub/c.py": "from erasure.d import thing\n",
             "d.py": "thing = 1\n", "unused.py": ""}
    for name, text in files.items():
        (pkg / name).write_text(text)
    script = tmp_path / "stages" / "x.py"
    script.parent.mkdir()
    script.write_text("import erasure.a\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "src")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    got = {str(f.relative_to(pkg)) for f in closure(script, "x")}
    assert got == {"__init__.py", "a.py", "sub/__init__.py", "sub/b.py", "sub/c.py", "d.py"}


def test_no_other_dynamic_imports():
    """An import by name (importlib, __import__, runpy) elsewhere would hide a module from the walk."""
    found = []
    for f in sorted((SRC / PACKAGE).rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if name in ("import_module", "__import__", "spec_from_file_location", "run_module", "run_path"):
                    found.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert {x.split(":")[0] for x in found} <= set(DYNAMIC), f"dynamic imports the deps test cannot follow: {found}"


def _toy_repo(tmp: Path) -> callable:
    """A git + DVC repository in tmp; returns a runner of dvc (or git) commands there (their stdout)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def run(*argv: str) -> str:
        cmd = [str(DVC), *argv] if argv[0] != "git" else list(argv)
        done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout}{done.stderr}"
        return done.stdout

    run("git", "init", "-q")
    run("init", "-q")
    # what `dvc config core.analytics false` and `core.check_update false` write (two commands, 1.5 s)
    (tmp / ".dvc" / "config").write_text("[core]\n    analytics = false\n    check_update = false\n")
    return run


def test_dvc_repro_reruns_a_stage_for_a_declared_module_only(tmp_path):
    """Editing a module the stage declares reruns it; editing one it imports without declaring does not:
    the stale output stays, which is what test_stage_deps_hold_every_module_it_imports prevents."""
    dvc = _toy_repo(tmp_path)
    (tmp_path / "lib.py").write_text("VALUE = 1\n")
    (tmp_path / "hidden.py").write_text("VALUE = 10\n")
    (tmp_path / "stage.py").write_text("import hidden, lib\nopen('out.txt', 'w').write(str(lib.VALUE + hidden.VALUE))\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"toy": {
        "cmd": f"{shlex.quote(sys.executable)} stage.py", "deps": ["stage.py", "lib.py"], "outs": ["out.txt"]}}}))
    out = lambda: (tmp_path / "out.txt").read_text()  # noqa: E731
    assert "Running stage 'toy'" in dvc("repro") and out() == "11"

    (tmp_path / "lib.py").write_text("VALUE = 2\n")
    assert "Running stage 'toy'" in dvc("repro") and out() == "12"

    (tmp_path / "hidden.py").write_text("VALUE = 20\n")  # imported, not declared
    log = dvc("repro")
    assert "Running stage" not in log and out() == "12", log  # stale: 22 is what the code now makes


# --- what the pipeline gives `dvc metrics` and `dvc plots` -------------------------------------------------

def _concept(slug: str, before: float, after: float, neighbour_after: float) -> dict:
    from erasure.evaluate import summarize

    probes = {"target": {"before": before, "after": after, "n": 4, "example_prompt": "x"},
              "neighbour:circle": {"before": 1.0, "after": neighbour_after, "n": 4, "example_prompt": "y"}}
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    return {"kind": "style", "method": "esd", "anchor": None, "slug": slug, "probes": probes,
            "summary": summarize(probes), "grids": {"before": f"grids/{slug}-before.png", "after": f"grids/{slug}-after.png",
                                                    "side_by_side": f"grids/{slug}-side-by-side.png"},
            "_images": {"before": images, "after": images, "prompts": ["x", "x"], "label": "'x'",
                        "readings": {"before": [True, True], "after": [False, False]}}}


def _evaluate_outputs(project: Path, pip_after: float) -> None:
    """The evaluate and erase stages' files for dvc, as their writers make them, under project/work."""
    from erasure.config import load_params
    from erasure.pipeline import erase, evaluate

    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    params = load_params(project / "params.yaml")
    concepts = {"Pip": _concept("pip", 1.0, pip_after, 0.9), "Vasquez": _concept("vasquez", 0.5, 0.0, 1.0)}
    evaluate.write(params, "base", concepts, {"generic_drift": 0.1, "fid_base": 0.2, "fid_erased": 0.3, "n_generic": 8},
                   track=False)
    job = lambda text, steps: SimpleNamespace(steps=steps, concept=SimpleNamespace(text=text))  # noqa: E731
    (project / "work" / "erase").mkdir(exist_ok=True)
    (project / "work" / "erase" / "losses.json").write_text(erase._losses([[job("Pip", 2)], [job("Vasquez", 3)]],
                                                                          [0.5, 0.4, 0.3]))


def test_loss_records_name_phase_and_concept_and_count_cached_steps():
    from erasure.pipeline.erase import _losses

    job = lambda text, steps: SimpleNamespace(steps=steps, concept=SimpleNamespace(text=text))  # noqa: E731
    jobs = [job("Pip", 2), job("Vasquez", 3)]
    sequential, joint = [[j] for j in jobs], [jobs]
    # Pip's phase came from the phase cache: the losses are Vasquez's, at steps 2..4.
    assert json.loads(_losses(sequential, [0.5, 0.4, 0.3])) == [
        {"step": 2, "phase": 1, "concept": "Vasquez", "loss": 0.5}, {"step": 3, "phase": 1, "concept": "Vasquez", "loss": 0.4},
        {"step": 4, "phase": 1, "concept": "Vasquez", "loss": 0.3}]
    assert [(r["step"], r["phase"], r["concept"]) for r in json.loads(_losses(sequential, [1.0] * 5))] == [
        (0, 0, "Pip"), (1, 0, "Pip"), (2, 1, "Vasquez"), (3, 1, "Vasquez"), (4, 1, "Vasquez")]
    assert {r["concept"] for r in json.loads(_losses(joint, [1.0] * 5))} == {"Pip + Vasquez"}
    assert json.loads(_losses(sequential, [])) == []


def test_dvc_metrics_params_and_plots_diff_against_a_commit(tmp_path):
    """The real dvc.yaml on the stages' own files: metrics per concept, diffs against the commit before,
    and both plots rendered with the data the stages wrote."""
    dvc = _toy_repo(tmp_path)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    _evaluate_outputs(tmp_path, pip_after=0.25)
    summary = tmp_path / "work" / "evaluate" / "summary"
    assert sorted(p.name for p in summary.iterdir()) == ["_global.json", "pip.json", "vasquez.json"]
    assert json.loads((summary / "pip.json").read_text()) == {"before": 1.0, "after": 0.25, "reduction": 0.75,
                                                               "neighbour_drop": pytest.approx(0.1)}
    # What gets committed: the metrics and plot data, nothing else of work/ (DVC's cache holds that).
    dvc("git", "add", "-A")
    tracked = dvc("git", "ls-files", "work").split()
    assert sorted(tracked) == ["work/evaluate/plots/after.json", "work/evaluate/plots/before.json",
                               "work/evaluate/summary/_global.json", "work/evaluate/summary/pip.json",
                               "work/evaluate/summary/vasquez.json"]
    dvc("git", "commit", "-qm", "release 1")

    rows = {line.split()[0]: line.split()[1:] for line in dvc("metrics", "show").splitlines()}
    assert rows["Path"] == ["after", "before", "fid_base", "fid_erased", "generic_drift", "neighbour_drop", "reduction"]
    assert rows["work/evaluate/summary/pip.json"] == ["0.25", "1.0", "-", "-", "-", "0.1", "0.75"]  # a row per concept
    assert len(rows) == 4

    _evaluate_outputs(tmp_path, pip_after=0.0)  # the next run
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    p["generate"]["steps"] += 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    diff = json.loads(dvc("metrics", "diff", "HEAD", "--json"))
    assert diff["work/evaluate/summary/pip.json"]["after"] == {"old": 0.25, "new": 0.0, "diff": -0.25}
    assert "work/evaluate/summary/vasquez.json" not in diff  # unchanged
    params = json.loads(dvc("params", "diff", "HEAD", "--json"))
    assert params == {"params.yaml": {"generate.steps": {"old": p["generate"]["steps"] - 1, "new": p["generate"]["steps"], "diff": 1}}}

    plots = json.loads(dvc("plots", "diff", "HEAD", "--json"))
    # The only error: the loss history is not in git (at HEAD), it is the erase stage's, not the release's.
    assert [(e["rev"], e["source"]) for e in plots["errors"]] == [("HEAD", "work/erase/losses.json")], plots["errors"]
    bars = plots["data"]["before_after"][0]["content"]["data"]["values"]
    after = {(b["rev"], b["probe"]): b["presence"] for b in bars if b["filename"].endswith("after.json")}
    assert after[("HEAD", "Pip: target")] == 0.25 and after[("workspace", "Pip: target")] == 0.0
    assert {b["filename"].rsplit("/", 1)[-1] for b in bars} == {"before.json", "after.json"}
    loss = plots["data"]["loss"][0]["content"]["data"]["values"]  # not in git: the workspace's only
    assert [(r["rev"], r["step"], r["loss"]) for r in loss] == [("workspace", 2, 0.5), ("workspace", 3, 0.4),
                                                              ("workspace", 4, 0.3)]
