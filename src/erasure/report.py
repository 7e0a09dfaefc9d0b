"""What the console shows of a release's gates: each failed gate as a row naming the concept, the
gate, its value and bound, the neighbour that fell (neighbour_max_drop) and the erasure phase that
caused it; and consoles at most 100 columns wide, for every table the project prints.

The phase: the erase stage reads no neighbour between its phases (train.json's `history` holds
no readings), so a neighbour's fall is put on the last sequential phase whose concept names that
neighbour (as its anchor, or in its text, alternative or paraphrases), or is said to be unknown;
a target gate is put on the concept's own phase, and a quality gate on the phase whose FID on the
generic prompts rose most. A joint run has one phase for all concepts.
"""

from __future__ import annotations

import re

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

WIDTH = 100  # columns: logs and terminals wider than this still get tables this wide


class GatesFailed(RuntimeError):
    """A release refused by its gates, as the flow fails with it; carries the release stage's report."""

    def __init__(self, report: dict):
        failed = report.get("failures") or []
        super().__init__(f"release refused, {len(failed)} gate{'s' if len(failed) != 1 else ''} failed: "
                         + "; ".join(failed))
        self.report = report

    def __reduce__(self):  # pickled with its report (Prefect may persist a state's exception)
        return type(self), (self.report,)


def console(stderr: bool = False, file=None) -> Console:
    """A rich Console as wide as the terminal up to WIDTH columns; WIDTH wide when not a terminal."""
    probe = Console(stderr=stderr, file=file)
    width = min(probe.width, WIDTH) if probe.is_terminal else WIDTH
    return Console(stderr=stderr, file=file, width=width)


def name(text: str) -> Text:
    """A table cell for a name: on one line, cut with an ellipsis where its column is too narrow.
    Its column stays wrappable, so that rich narrows it (not the numbers) when a table is too wide."""
    return Text(text, no_wrap=True, overflow="ellipsis")


def failed_gates(gates: list[dict], metrics: dict, train: dict | None, entries: list[dict] = (),
                 attacks: dict | None = None) -> list[dict]:
    """One row per failed gate: concept, kind, gate, value, bound, neighbour ({name, before, after}
    for neighbour_max_drop, else None) and phase (text; for attack_max, the attack that brought the
    concept back and what it does on the base model).

    `metrics`: evaluate's metrics.json (probes, summary, anchor per concept); `train`: erase's
    train.json (mode, jobs in phase order); `entries`: the blocklist's (paraphrases, alternative);
    `attacks`: the attack stage's metrics.json."""
    named = {e["concept"]: e for e in entries}
    spec = {c: {"text": c, "anchor": m.get("anchor"), "alternative": named.get(c, {}).get("alternative"),
                "paraphrases": named.get(c, {}).get("paraphrases")} for c, m in metrics.get("concepts", {}).items()}
    rows = []
    for g in gates:
        if g["passed"]:
            continue
        m = metrics.get("concepts", {}).get(g["concept"], {})
        neighbour = _neighbour(m) if g["gate"] == "neighbour_max_drop" else None
        if g["gate"] == "attack_max":
            phase = _attack(((attacks or {}).get("concepts") or {}).get(g["concept"]) or {})
        elif g["kind"] == "quality":
            phase = _costliest(g, train or {})
        else:
            phase = _phase(g["concept"], neighbour and neighbour["name"], train or {}, spec)
        rows.append({"concept": g["concept"], "kind": g["kind"], "gate": g["gate"], "value": g["value"],
                     "bound": g["bound"], "neighbour": neighbour, "phase": phase})
    return rows


def gate_table(rows: list[dict]) -> Table:
    """The failed gates as a table that fits WIDTH columns (names are cut with an ellipsis, never wrapped)."""
    from .release import value_and_bound

    table = Table(title=f"release refused: {len(rows)} gate{'s' if len(rows) != 1 else ''} failed",
                  title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  caption="phase: for a target, the concept's own erasure phase; for a neighbour, the last phase "
                          "whose concept names it (the erase stage reads no neighbours between phases); for "
                          "attack_max, the strongest attack",
                  caption_justify="left")
    table.add_column("concept", min_width=8, max_width=30)
    table.add_column("gate", no_wrap=True)
    table.add_column("value", no_wrap=True, justify="right")
    table.add_column("bound", no_wrap=True, justify="right")
    table.add_column("neighbour", min_width=12, max_width=22)
    table.add_column("phase", min_width=12)
    for r in rows:
        value, bound = value_and_bound(r)
        n = r["neighbour"]
        fell = f"{n['name']}\n{n['before']:.2f} -> {n['after']:.2f}" if n else "-"
        table.add_row(name(r["concept"]), r["gate"], value, bound, name(fell), name(r["phase"]))
    return table


def print_failed_gates(rows: list[dict], out: Console | None = None) -> None:
    (out or console(stderr=True)).print(gate_table(rows))


def _neighbour(m: dict) -> dict | None:
    worst = (m.get("summary") or {}).get("worst_neighbour")  # summarize() reads neighbour: and anchor: probes
    probes = m.get("probes") or {}
    probe = probes.get(f"neighbour:{worst}") or probes.get(f"anchor:{worst}")
    if worst is None or probe is None:
        return None
    return {"name": worst, "before": probe["before"], "after": probe["after"]}


def _phase(concept: str, neighbour: str | None, train: dict, spec: dict[str, dict]) -> str:
    """The phase a failed gate is put on (see the module's docstring), as the table shows it."""
    jobs = {j["concept"]: j for j in train.get("jobs") or []}
    # train.json's phases (concept names per phase, in the order they ran); older ones: one per job
    phases = train.get("phases") or [[c] for c in jobs]
    if not phases:
        return "unknown (train.json names no phases)"
    if train.get("mode") == "joint":
        return "unknown (joint run)" if neighbour else f"the joint phase (all {len(jobs)})"
    n = len(phases)

    def label(k: int, c: str) -> str:  # the phase, and which of its concepts the row is about
        method = jobs.get(c, {}).get("method", "?")
        if len(phases[k]) == 1:
            return f"{k + 1}/{n} {c} ({method})"
        return f"{k + 1}/{n}, one solve of {len(phases[k])} ({method}): {c}"

    if neighbour is None:  # a target gate: the concept's own phase (its name is in the row already)
        own = [k for k, names in enumerate(phases) if concept in names]
        if not own:
            return "unknown (not in train.json)"
        k = own[-1]
        return f"{k + 1}/{n}, its own ({jobs[concept]['method']})" if len(phases[k]) == 1 else label(k, concept)
    for k in reversed(range(n)):
        for c in phases[k]:
            why = _names(spec.get(c, {}), neighbour)
            if why:
                return f"{label(k, c)}\n{why}"
    return "unknown\nno phase names it"


def _attack(m: dict) -> str:
    """An attack_max row's last column: the strongest attack, its success rate and the base model's."""
    top = m.get("strongest")
    if not top:
        return "unknown (no gated attack)"
    return f"attack: {top['label']}\n{top['erased']:.2f} (base model {top['base']:.2f})"


def _costliest(gate: dict, train: dict) -> str:
    """A quality gate's phase: the one whose generic-prompt FID rose most (evaluate's costliest_phase)."""
    ph = gate.get("costliest_phase")
    if not ph:
        return "unknown (no per-phase FID)" if train.get("mode") != "joint" else "the joint phase"
    n = len(train.get("phases") or train.get("jobs") or []) or "?"
    return f"{ph['phase'] + 1}/{n} {', '.join(ph['concepts'])}\nthe costliest (FID +{ph['fid_rise']:.2f})"


def _names(c: dict, neighbour: str) -> str | None:
    """How a phase's concept names the neighbour ("its anchor", "its text", ...), or None."""
    word = re.compile(rf"(?<!\w){re.escape(_plain(neighbour))}(?!\w)")
    fields = {"its anchor": [c.get("anchor")], "its text": [c.get("text")], "its alternative": [c.get("alternative")],
              "its paraphrases": list(c.get("paraphrases") or [])}
    for why, texts in fields.items():
        if any(t and word.search(_plain(t)) for t in texts):
            return why
    return None


def _plain(text: str) -> str:
    return re.sub(r"[-_]+", " ", text.casefold())
