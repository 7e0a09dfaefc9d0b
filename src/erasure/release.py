"""Releases: gates on the evaluation, a release folder (delta, full diffusers export, model card
(erasure/model_card.py), lineage, manifest), published atomically under `releases/<id>` with
`releases/LATEST` moved to it.

Nothing in a release folder depends on when or where it was built (no timestamps, run ids or
absolute paths), so the same inputs give byte-identical files and the same release hash.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from pathlib import Path

from .config import PipelineParams
from .io import atomic_dir, atomic_file, file_sha256, owner_tag, sweep_stale
from .model_card import model_card

GATES = ("target_max", "reduction_min", "neighbour_max_drop", "attack_max")


def check_gates(metrics: dict, params: PipelineParams, attacks: dict | None = None,
                with_attacks: bool = True) -> list[dict]:
    """One record per (concept, gate) that applies to the concept's kind; attack_max reads `attacks`
    (the attack stage's metrics.json). `with_attacks` False: the gates the evaluation alone decides
    (what MLflow records after evaluate, before the attack stage has run)."""
    out = []
    for concept, m in metrics["concepts"].items():
        gate, s = _gate(params, concept, m["kind"]), m["summary"]
        values = {"target_max": s["target_after"], "reduction_min": s["target_reduction"],
                  # A concept without neighbours has nothing to damage: it passes with 0.
                  "neighbour_max_drop": s.get("neighbour_max_drop") or 0.0}
        attacked = ((attacks or {}).get("concepts") or {}).get(concept)
        for name in GATES:
            bound = getattr(gate, name)
            if bound is None or (name == "attack_max" and not with_attacks):
                continue
            if name == "attack_max":
                if attacked is None:  # a bound that was not measured must not pass
                    raise ValueError(f"concept {concept!r} ({m['kind']}): release.gates bound attack_max, and the "
                                     "attack stage has no figures for it; rerun the 'attack' stage")
                values[name] = attacked["attack_max"]
            # Rounded before comparing: (0.4 - 0.1) / 0.4 is 0.7499999..., which must pass a 0.75 bound.
            value = round(float(values[name]), 6)
            passed = value >= bound if name == "reduction_min" else value <= bound
            record = {"concept": concept, "kind": m["kind"], "gate": name, "value": value, "bound": bound,
                      "passed": bool(passed)}
            if name == "attack_max" and attacked.get("strongest"):
                record["attack"] = attacked["strongest"]["label"]  # which attack brought it back
            out.append(record)
    return out + check_quality(metrics, params)


QUALITY_GATES = ("fid_max_ratio", "fid_to_base_max", "drift_max")
QUALITY = "generic prompts"  # the "concept" of the quality gates' records
# What each quality gate reads in metrics["global"].
_QUALITY_VALUE = {"fid_max_ratio": "fid_ratio", "fid_to_base_max": "fid_to_base", "drift_max": "generic_drift"}


def check_quality(metrics: dict, params: PipelineParams) -> list[dict]:
    """One record per bound of release.quality, on the generic prompts; the costliest phase (a sequential
    run's) with every failed one."""
    g, out = metrics["global"], []
    for name in QUALITY_GATES:
        bound = getattr(params.release.quality, name)
        if bound is None:
            continue
        value = g.get(_QUALITY_VALUE[name])
        if value is None:  # a bound that was not measured must not pass
            raise ValueError(f"release.quality.{name}: the evaluation has no {_QUALITY_VALUE[name]} for model "
                             f"{params.model!r}; set it to null or rerun evaluate")
        value = round(float(value), 6)
        record = {"concept": QUALITY, "kind": "quality", "gate": name, "value": value, "bound": bound,
                  "passed": bool(value <= bound)}
        if not record["passed"] and g.get("costliest_phase"):
            record["costliest_phase"] = g["costliest_phase"]
        out.append(record)
    return out


def _gate(params: PipelineParams, concept: str, kind: str):
    gate = params.gate_for(kind)
    if gate is None or all(getattr(gate, name) is None for name in GATES):
        raise ValueError(f"concept {concept!r} ({kind}): release.gates has no gate for its kind (nor a 'default'); "
                         "every concept must be gated before a release")
    return gate


def require_every_gate(metrics: dict, gates: list[dict], params: PipelineParams) -> None:
    """The release invariant: at least one concept, and one passed record for every bound of every
    concept's gate. Checked again where a release is published, whoever computed `gates`."""
    if not metrics["concepts"]:
        raise ValueError("no concepts were evaluated: a release without gates is not published")
    expected = {(concept, name) for concept, m in metrics["concepts"].items()
                for name in GATES if getattr(_gate(params, concept, m["kind"]), name) is not None}
    expected |= {(QUALITY, name) for name in QUALITY_GATES if getattr(params.release.quality, name) is not None}
    passed = {(g["concept"], g["gate"]) for g in gates if g.get("passed") is True}
    missing = sorted(expected - passed)
    if missing or len(gates) != len(expected):
        shown = ", ".join(f"{c!r} {name}" for c, name in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"{len(gates)} gate record(s) for {len(expected)} gate(s) of {len(metrics['concepts'])} "
                         f"concept(s){'; not passed: ' + shown if missing else ''}: a release needs every gate passed")


# How a failed value compares with its bound.
SIGN = {"target_max": ">", "reduction_min": "<", "neighbour_max_drop": ">", "attack_max": ">"} | {
    q: ">" for q in QUALITY_GATES}


def value_and_bound(gate: dict) -> tuple[str, str]:
    """A gate's value and bound as text, with two decimals, or more where two would print "0.10 > 0.10"."""
    digits = 2
    while digits < 6 and f"{gate['value']:.{digits}f}" == f"{gate['bound']:.{digits}f}":
        digits += 1
    return f"{gate['value']:.{digits}f}", f"{gate['bound']:.{digits}f}"


def failures(gates: list[dict]) -> list[str]:
    """One line per failed gate: "concept 'Pip' (instance) failed target_max: 0.22 > 0.10"."""
    lines = []
    for g in gates:
        if g["passed"]:
            continue
        value, bound = value_and_bound(g)
        if g["kind"] == "quality":
            line = f"quality on the generic prompts failed {g['gate']}: {value} {SIGN[g['gate']]} {bound}"
            if g.get("costliest_phase"):
                ph = g["costliest_phase"]
                line += (f"; the phase that cost the most: {ph['phase'] + 1} ({', '.join(map(repr, ph['concepts']))}, "
                         f"FID +{ph['fid_rise']:.2f})")
            lines.append(line)
            continue
        by = f" (attack: {g['attack']})" if g.get("attack") else ""
        lines.append(f"concept {g['concept']!r} ({g['kind']}) failed {g['gate']}{by}: {value} {SIGN[g['gate']]} {bound}")
    return lines


def code_version() -> str:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        # dvc.lock and work/ (its metrics and plot data are committed) are rewritten by the run: outputs, not code.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                ":(exclude,top)dvc.lock", ":(exclude,top)work"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev.stdout.strip() + ("-dirty" if dirty else "")


def _portable_blocklist(blocklist: dict) -> dict:
    """The blocklist with reference images named by file name and content hash, not by path."""
    entries = []
    for e in blocklist["entries"]:
        e = dict(e)
        if "reference_images" in e:
            e["reference_images"] = [f"{Path(r).name} sha256:{file_sha256(Path(r))}" for r in e["reference_images"]]
        entries.append(e)
    return {"entries": entries, "sha256": blocklist["sha256"]}


def build(folder: Path, *, params: PipelineParams, metrics: dict, gates: list[dict], blocklist: dict,
          delta: Path, train: dict) -> str:
    """Write the release into `folder`; returns its release hash (sha256 over the manifest)."""
    from .delta import export

    # A run id (metrics.json may name the MLflow run) differs run to run: never part of a release.
    metrics = {k: v for k, v in metrics.items() if k != "mlflow"}
    train = train if isinstance(train, dict) else {}
    shutil.copyfile(delta, folder / "delta.safetensors")
    export(params.model, delta, folder / "model")
    lineage = {"base_model": params.model, "base_hash": metrics["base_hash"], "code_version": code_version(),
               "blocklist_sha256": blocklist["sha256"],
               # Where files and runs live is not lineage: paths, tracking and schedule are left out.
               "params": params.model_dump(mode="json", exclude={"paths", "tracking", "schedule"}),
               "training": {k: train[k] for k in ("mode", "jobs") if k in train}}
    files = {"blocklist.json": _portable_blocklist(blocklist), "metrics.json": metrics, "gates.json": gates,
             "lineage.json": lineage}
    for name, data in files.items():
        (folder / name).write_text(json.dumps(data, indent=1, sort_keys=True))
    (folder / "MODEL_CARD.md").write_text(model_card(metrics, gates, files["blocklist.json"], lineage))
    manifest = {str(p.relative_to(folder).as_posix()): file_sha256(p)
                for p in sorted(folder.rglob("*")) if p.is_file()}
    release_hash = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps({"files": manifest, "release_hash": release_hash}, indent=1,
                                                     sort_keys=True))
    return release_hash


def publish(params: PipelineParams, **inputs) -> tuple[str, Path]:
    """Build in a private folder, then move it in place and point LATEST at it. Returns (id, path)."""
    require_every_gate(inputs["metrics"], inputs["gates"], params)
    root = params.paths.releases
    root.mkdir(parents=True, exist_ok=True)
    # A publish killed mid-build leaves its staging folder (or the temporary it was built in): remove
    # those of processes no longer running, never a live one's (see erasure/io.py).
    for prefix in (".staging-", "..staging-"):
        sweep_stale(root, prefix)
    # A private staging name per call: two flows publishing at once never build into one folder.
    staging = root / f".staging-{owner_tag()}-{uuid.uuid4().hex[:12]}"
    with atomic_dir(staging) as tmp:  # a crash here leaves only hidden temporaries, never a release
        release_hash = build(tmp, params=params, **inputs)
    rid = release_hash[:12]
    final = root / rid
    try:
        if final.exists():  # the same release again: keep the one already published
            raise FileExistsError(final)
        staging.rename(final)
    except OSError:  # already published (possibly by a concurrent run): identical content by its hash
        shutil.rmtree(staging)
    with atomic_file(root / "LATEST") as fh:
        fh.write(rid + "\n")
    return rid, final


def show(releases: Path) -> dict:
    latest = Path(releases) / "LATEST"
    if not latest.is_file():
        raise FileNotFoundError(f"{releases}: no release yet (no LATEST); run the pipeline first")
    rid = latest.read_text().strip()
    folder = Path(releases) / rid
    if not (folder / "manifest.json").is_file():
        raise FileNotFoundError(f"{latest} names release {rid!r}, but {folder} holds no manifest.json")
    manifest = json.loads((folder / "manifest.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"path": str(folder.resolve()), "release_id": rid, "release_hash": manifest["release_hash"],
            "gates": json.loads((folder / "gates.json").read_text()),
            "concepts": {c: {"kind": m["kind"], "method": m["method"], **m["summary"]}
                         for c, m in metrics["concepts"].items()},
            "global": metrics["global"]}
