"""The console: failed gates as a table naming the neighbour and the phase, progress readable in a
log (no escape codes) and in parallel tasks, and tables that fit 100 columns."""

import importlib.util
import io
import json
import re
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import erasure.cli as cli
from erasure.progress import Progress
from erasure.report import GatesFailed, failed_gates, gate_table

ROOT = Path(__file__).resolve().parents[1]
LONG = "the midnight lantern poster of a very long title indeed"


def _probe(before, after):
    return {"before": before, "after": after, "n": 24, "example_prompt": "x"}


def _metrics():
    """metrics.json as evaluate writes it: probes and a summary naming the worst neighbour."""
    return {"concepts": {
        "Pip": {"kind": "instance", "method": "ca", "anchor": "circle",
                "probes": {"target": _probe(1.0, 0.0), "anchor:circle": _probe(1.0, 0.79),
                           "neighbour:Zuzu": _probe(1.0, 0.96)},
                "summary": {"target_before": 1.0, "target_after": 0.0, "target_reduction": 1.0,
                            "neighbour_max_drop": 0.21, "worst_neighbour": "circle"}},
        LONG: {"kind": "memorized", "method": "ca", "anchor": None,
               "probes": {"target": _probe(1.0, 0.0), "neighbour:garden-gate": _probe(1.0, 0.88)},
               "summary": {"target_before": 1.0, "target_after": 0.0, "target_reduction": 1.0,
                           "neighbour_max_drop": 0.12, "worst_neighbour": "garden-gate"}},
        "Vasquez": {"kind": "style", "method": "esd", "anchor": None,
                    "probes": {"target": _probe(1.0, 0.29), "neighbour:Okafor": _probe(1.0, 1.0)},
                    "summary": {"target_before": 1.0, "target_after": 0.29, "target_reduction": 0.71,
                                "neighbour_max_drop": 0.0, "worst_neighbour": "Okafor"}}}}


def _gates():
    fail = lambda c, k, g, v, b: {"concept": c, "kind": k, "gate": g, "value": v, "bound": b,  # noqa: E731
                                  "passed": False}
    return [fail("Pip", "instance", "neighbour_max_drop", 0.21, 0.1),
            {"concept": "Pip", "kind": "instance", "gate": "target_max", "value": 0.0, "bound": 0.1, "passed": True},
            fail(LONG, "memorized", "neighbour_max_drop", 0.12, 0.1),
            fail("Vasquez", "style", "target_max", 0.29, 0.1)]


SEQUENTIAL = {"mode": "sequential", "history": [],
              "jobs": [{"concept": "Pip", "method": "ca"}, {"concept": LONG, "method": "ca"},
                       {"concept": "Vasquez", "method": "esd"}]}


def _render(renderable) -> list[str]:
    c = Console(width=100, record=True, file=io.StringIO())
    c.print(renderable)
    return c.export_text().splitlines()


def test_a_failed_gate_names_its_value_bound_neighbour_and_phase():
    rows = failed_gates(_gates(), _metrics(), SEQUENTIAL)
    by = {(r["concept"], r["gate"]): r for r in rows}
    assert list(by) == [("Pip", "neighbour_max_drop"), (LONG, "neighbour_max_drop"), ("Vasquez", "target_max")]
    pip = by["Pip", "neighbour_max_drop"]
    assert (pip["value"], pip["bound"]) == (0.21, 0.1)
    assert pip["neighbour"] == {"name": "circle", "before": 1.0, "after": 0.79}
    assert pip["phase"] == "1/3 Pip (ca)\nits anchor"  # Pip's CA phase mapped it onto the circle
    # No phase names the other memorized image, and the erase stage reads no neighbours between
    # phases: said plainly, not guessed.
    assert by[LONG, "neighbour_max_drop"]["phase"].startswith("unknown")
    assert by["Vasquez", "target_max"]["neighbour"] is None
    assert by["Vasquez", "target_max"]["phase"] == "3/3, its own (esd)"
    # A neighbour named by a later concept's paraphrases is put on that later phase.
    entries = [{"concept": "Vasquez", "paraphrases": ["a print like the garden gate"]}]
    assert failed_gates(_gates(), _metrics(), SEQUENTIAL, entries)[1]["phase"] == "3/3 Vasquez (esd)\nits paraphrases"
    joint = failed_gates(_gates(), _metrics(), {**SEQUENTIAL, "mode": "joint"})
    assert joint[0]["phase"] == "unknown (joint run)" and joint[2]["phase"] == "the joint phase (all 3)"
    # Consolidated: the trained phase first, then one solve of the closed-form concepts (train.json's phases).
    solved = {"mode": "consolidated", "history": [], "phases": [[LONG], ["Pip", "Vasquez"]],
              "jobs": [{"concept": "Pip", "method": "uce"}, {"concept": LONG, "method": "ca"},
                       {"concept": "Vasquez", "method": "uce"}]}
    rows2 = failed_gates(_gates(), _metrics(), solved)
    assert rows2[0]["phase"] == "2/2, one solve of 2 (uce): Pip\nits anchor"
    assert rows2[2]["phase"] == "2/2, one solve of 2 (uce): Vasquez"

    # A quality gate is put on the phase whose generic-prompt FID rose most (not "not in train.json").
    quality = {"concept": "generic prompts", "kind": "quality", "gate": "fid_max_ratio", "value": 2.94,
               "bound": 2.0, "passed": False,
               "costliest_phase": {"phase": 2, "concepts": ["Vasquez"], "fid_rise": 0.09}}
    assert failed_gates([quality], _metrics(), SEQUENTIAL)[0]["phase"] == "3/3 Vasquez\nthe costliest (FID +0.09)"

    lines = _render(gate_table(rows))
    text = "\n".join(lines)
    assert max(map(len, lines)) <= 100
    assert "release refused: 3 gates failed" in text
    assert re.search(r"Pip +neighbour_max_drop +0\.21 +0\.10 +circle +1/3 Pip \(ca\)", text), text
    assert re.search(r"1\.00 -> 0\.79 +its anchor", text) and "1.00 -> 0.88" in text
    assert re.search(r"Vasquez +target_max +0\.29 +0\.10 +- +3/3, its own \(esd\)", text), text
    # The long name stays on one line: whole, or cut with an ellipsis.
    row = next(line for line in lines if line.startswith("the midnight"))
    assert LONG in row or "…" in row.split("  ")[0]


def test_gates_failed_pickles_with_its_report():
    import pickle

    report = {"passed": False, "failures": ["concept 'Pip' (instance) failed target_max: 0.22 > 0.10"], "failed": []}
    exc = pickle.loads(pickle.dumps(GatesFailed(report)))
    assert exc.report == report and str(exc) == ("release refused, 1 gate failed: concept 'Pip' (instance) "
                                                 "failed target_max: 0.22 > 0.10")


def test_progress_outside_a_terminal_is_plain_lines_without_escape_codes():
    log = io.StringIO()  # not a tty, as Prefect's log or CI
    with Progress(96, "generate Pip", "img", file=log, interval=0) as p:
        for _ in range(2):
            p.update(48)
            p.set_postfix(loss="0.0213")
    lines = log.getvalue().splitlines()
    assert "\x1b" not in log.getvalue() and "\r" not in log.getvalue()
    assert re.fullmatch(r"generate Pip: 48/96 img, \d+ s, ETA \d+ s", lines[0]), lines
    assert re.fullmatch(r"generate Pip: 96/96 img in \d+ s, loss 0.0213", lines[-1]), lines
    assert len(lines) == 2

    quiet = io.StringIO()
    with Progress(10, "x", file=quiet, interval=3600) as p:  # between lines: nothing
        p.update(5)
        assert quiet.getvalue() == ""
    assert quiet.getvalue().startswith("x: 5/10 it in ")  # where a loop stopped early
    with Progress(10, "y", file=quiet, enabled=False) as p:
        p.update(10)
    assert "y:" not in quiet.getvalue()


def test_parallel_tasks_write_whole_lines_each_naming_its_task():
    log = io.StringIO()

    def task(name):
        with Progress(50, f"generate {name}", "img", file=log, interval=0) as p:
            for _ in range(50):
                p.update(1)
                time.sleep(0.0005)

    threads = [threading.Thread(target=task, args=(n,)) for n in ("Pip", "Vasquez")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = log.getvalue().splitlines()
    assert len(lines) == 100 and all(re.fullmatch(r"generate (Pip|Vasquez): \d+/50 img(, | in ).*", x) for x in lines)
    assert {x.split(":")[0] for x in lines if " in " in x} == {"generate Pip", "generate Vasquez"}


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_in_a_terminal_is_a_tqdm_bar_with_eta_and_loss():
    tty = _Tty()
    with Progress(4, "erasing 1/2 Pip", "step", file=tty, interval=0) as p:
        for _ in range(4):
            p.set_postfix(loss="0.5")
            p.update()
    assert "\r" in tty.getvalue() and "erasing 1/2 Pip" in tty.getvalue() and "loss=0.5" in tty.getvalue()
    assert "4/4" in tty.getvalue()


def test_drawing_images_and_erasing_report_progress_in_a_log(tiny_pipeline_dir, tmp_path, capsys, one_thread):
    from erasure.concept import Concept
    from erasure.models import load_pipeline, weights_hash
    from erasure.sampling import generate
    from erasure.trainer import EraseSettings, erase, plan

    pipe = load_pipeline(str(tiny_pipeline_dir))
    generate(pipe, ["a cat"] * 2, [0, 1], steps=2, desc="cat: target")
    settings = EraseSettings(method="esd", options={"ddim_steps": 4}, steps=3, pool_size=8)
    erase(pipe, plan([Concept(text="cat", kind="style")], settings), settings, tmp_path / "w", None,
          model_spec="tiny", base_hash=weights_hash(tiny_pipeline_dir))
    err = capsys.readouterr().err  # pytest's capture is not a terminal: lines, as in a log
    assert "\x1b" not in err and "\r" not in err
    assert re.search(r"^cat: target: 2/2 img in \d+ s$", err, re.M), err
    assert re.search(r"^cat: trajectories: \d+/\d+ sample-step in \d+ s$", err, re.M), err  # the pool
    assert re.search(r"^erasing 1/1 cat: 3/3 step in \d+ s, loss [0-9.e-]+$", err, re.M), err


def _release(tmp_path: Path, concept: str) -> Path:
    """A published release's JSON files as `release show` reads them (the model itself is not read)."""
    folder = tmp_path / "releases" / "0123456789ab"
    folder.mkdir(parents=True)
    summary = {"target_before": 1.0, "target_after": 0.0, "target_reduction": 1.0, "paraphrase_after": 0.0,
               "misspelling_after": None, "neighbour_max_drop": 0.08, "worst_neighbour": "garden-gate"}
    metrics = {"concepts": {concept: {"kind": "memorized", "method": "ca", "summary": summary},
                            "Pip": {"kind": "instance", "method": "ca", "summary": summary}},
               "global": {"generic_drift": 0.1}}
    gates = [{"concept": c, "kind": "memorized", "gate": g, "value": 0.0, "bound": 0.1, "passed": True}
             for c in metrics["concepts"] for g in ("target_max", "neighbour_max_drop")]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "gates.json").write_text(json.dumps(gates))
    (folder / "manifest.json").write_text(json.dumps({"files": {}, "release_hash": "f" * 64}))
    (tmp_path / "releases" / "LATEST").write_text("0123456789ab\n")
    return tmp_path / "releases"


@pytest.fixture
def recorded(monkeypatch):
    """The CLI's console, 100 columns wide and recorded."""
    c = Console(width=100, record=True, file=io.StringIO())
    monkeypatch.setattr(cli, "out", c)
    return c


@pytest.mark.parametrize("concept,width", [("the midnight lantern poster", 100), (LONG, 100), (LONG, 80)])
def test_release_show_fits_100_columns_with_names_on_one_line(tmp_path, monkeypatch, concept, width):
    recorded = Console(width=width, record=True, file=io.StringIO())
    monkeypatch.setattr(cli, "out", recorded)
    res = CliRunner().invoke(cli.app, ["release", "show", "--releases", str(_release(tmp_path, concept))])
    assert res.exit_code == 0, res.output
    lines = recorded.export_text().splitlines()
    assert max(map(len, lines)) <= width and lines[-1].endswith("┘")  # whole: its right edge not cut off
    row = next(line for line in lines if "the mid" in line)
    assert concept in row or "…" in row  # whole, or cut with an ellipsis: never a word per line
    assert "1.00 -> 0.00" in row and "2/2 pass" in row


def test_miniworld_concepts_and_detect_fit_100_columns(tmp_path, recorded):
    from PIL import Image

    res = CliRunner().invoke(cli.app, ["miniworld", "concepts"])
    assert res.exit_code == 0, res.output
    lines = recorded.export_text().splitlines()
    assert max(map(len, lines)) <= 100
    assert any("the midnight lantern poster" in line for line in lines)
    assert any(re.search(r"style +│ Vasquez +│ in the style of Vasquez", line) for line in lines)

    folder = tmp_path / ("a-folder-with-a-rather-long-name-for-the-images-of-this-test" * 2)
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "000000.png")
    Image.new("RGB", (32, 32), (30, 30, 200)).save(folder / "[b]x.png")  # a name is not rich markup
    res = CliRunner().invoke(cli.app, ["detect", str(folder)])
    assert res.exit_code == 0, res.output
    lines = recorded.export_text().splitlines()
    assert max(map(len, lines)) <= 100 and "".join(lines).startswith(f"images in {folder}:")
    assert any(line.startswith("│ 000000.png ") for line in lines) and any("│ [b]x.png " in x for x in lines)
    assert any(re.search(r"│ (circle|square|triangle|diamond|star|cross|heart|moon) +│", line) for line in lines)


def _report(tmp_path: Path, report: dict) -> Path:
    (tmp_path / "work" / "release").mkdir(parents=True)
    (tmp_path / "work" / "release" / "report.json").write_text(json.dumps(report))
    (tmp_path / "params.yaml").write_text(f"paths: {{work: {tmp_path / 'work'}}}\n")
    return tmp_path / "params.yaml"


def test_release_report_prints_the_failed_gates_of_this_run(tmp_path, recorded):
    rows = failed_gates(_gates(), _metrics(), SEQUENTIAL)
    params = _report(tmp_path, {"passed": False, "gates": _gates(), "failures": [], "failed": rows})
    res = CliRunner().invoke(cli.app, ["release", "report", "--params", str(params)])
    assert res.exit_code == 1, res.output
    text = recorded.export_text()
    assert "release refused: 3 gates failed" in text and "garden-gate" in text and "its anchor" in text
    # scripts/run.sh asks only for its own run's report: an older one is not shown as this run's.
    res = CliRunner().invoke(cli.app, ["release", "report", "--params", str(params), "--since", str(time.time() + 60)])
    assert res.exit_code == 2 and "written before this run" in res.output
    (tmp_path / "work" / "release" / "report.json").write_text(json.dumps(
        {"passed": True, "gates": _gates()[1:2], "release_id": "0123456789ab"}))
    res = CliRunner().invoke(cli.app, ["release", "report", "--params", str(params)])
    assert res.exit_code == 0 and "all 1 gates passed: release 0123456789ab" in recorded.export_text()


def _flow_module():
    spec = importlib.util.spec_from_file_location("release_flow_console", ROOT / "flows" / "release_flow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_flow_fails_naming_the_gates_and_its_command_prints_the_table(monkeypatch, capsys):
    """The flow's body with its tasks stubbed (Prefect itself is not started): a refused release ends
    the flow Failed, with the gates in its message; `python flows/release_flow.py` exits 1 with the table."""
    flow = _flow_module()
    rows = failed_gates(_gates(), _metrics(), SEQUENTIAL)
    report = {"passed": False, "gates": _gates(), "failed": rows,
              "failures": ["concept 'Vasquez' (style) failed target_max: 0.29 > 0.10"]}

    class Done:
        def __init__(self, value):
            self.value = value

        def result(self):
            return self.value

    class Task:
        def __init__(self, fn):
            self.fn = fn

        def __call__(self, *a):
            return self.fn(*a)

        def submit(self, *a):
            return Done(self.fn(*a))

    entries = [{"concept": "Vasquez", "kind": "style"}]
    stubs = {"ingest": lambda p: {"concepts": 1, "added": []}, "choose_anchors": lambda p: {"Vasquez": None},
             "generate_concept": lambda *a: {"concept": "Vasquez", "images_drawn": 0, "images_from_cache": 0},
             "generate_generic": lambda *a: {"concept": "_generic", "images_drawn": 0, "images_from_cache": 0},
             "check_judges": lambda *a: None,
             "erase": lambda p: {"steps_run": 0, "phases_from_cache": 1}, "evaluate_concept": lambda *a: {},
             "evaluate_generic": lambda p: ("h", {}), "record_evaluation": lambda *a: {},
             "attack": lambda p: {"concepts": {"Vasquez": {"attack_max": 0.0, "strongest": None}}},
             "release": lambda p: report}
    for name, fn in stubs.items():
        monkeypatch.setattr(flow, name, Task(fn))
    for sub in ("generate_all", "evaluate_all"):  # subflows: their bodies, over the stubbed tasks
        monkeypatch.setattr(flow, sub, Task(getattr(flow, sub).fn))
    monkeypatch.setattr(flow, "load_params", lambda path: object())
    monkeypatch.setattr(flow.inputs, "entries", lambda p: entries)
    state = flow.release_flow.fn("params.yaml")
    assert state.is_failed() and "failed target_max: 0.29 > 0.10" in state.message
    assert isinstance(state.data, GatesFailed) and state.data.report is report

    def refused(path):
        raise GatesFailed(report)

    monkeypatch.setattr(flow, "release_flow", refused)
    monkeypatch.setattr(flow, "checked_params", lambda path: None)  # main()'s params check (test_params_file.py)
    monkeypatch.setattr(sys, "argv", ["release_flow.py"])
    with pytest.raises(SystemExit) as exit_:
        flow.main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "release refused: 3 gates failed" in err and "3/3, its own (esd)" in err
    assert max(map(len, err.splitlines())) <= 100 and "\x1b" not in err
