"""Stage 5, evaluate: per concept, presence before and after erasure on every probe; drift and FID
on generic prompts; everything to MLflow (one parent run, one nested run per concept).

Before-images come from the generate stage; after-images are drawn by the erased model (through
the same content-addressed cache, keyed by the erased weights). The miniworld detector reads both.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from ..config import PipelineParams
from ..delta import apply_delta, load_delta
from ..io import atomic_dir, atomic_file
from ..sampling import grid
from . import inputs
from .generate import GENERIC, base_model, image_cache

GRID_IMAGES = 16


def erased_model(params: PipelineParams):
    """The base pipeline with the erase stage's delta applied, and a cache keyed by its weights."""
    delta = params.paths.stage("erase") / "delta.safetensors"
    if not delta.is_file():
        raise inputs.StageInputError(f"{delta}: missing; run the 'erase' stage first")
    tensors, meta = load_delta(delta)
    pipe, base_hash = base_model(params)
    apply_delta(pipe, tensors, meta, base_hash)
    return pipe, base_hash, image_cache(params, f"{base_hash}+{hashlib.sha256(delta.read_bytes()).hexdigest()}", pipe)


def evaluate_concept(params: PipelineParams, entry: dict, pipe, cache, detector) -> dict:
    """One concept's metrics, and before/after grids of its target prompts (images, written later)."""
    from ..evaluate import presence, summarize

    folder = params.paths.stage("generate") / inputs.slug(entry["concept"])
    record = inputs.read_json(folder / "probes.json", "generate")
    before = np.load(folder / "before.npz")
    probes, after = {}, {}
    for p in record["probes"]:
        after[p["name"]] = cache.images(pipe, p["prompts"], p["seeds"], desc=f"{entry['concept'][:20]}: {p['name']}")
        probes[p["name"]] = {"before": presence(detector, before[p["name"]], p),
                             "after": presence(detector, after[p["name"]], p),
                             "n": len(p["prompts"]), "example_prompt": p["prompts"][0]}
    s = inputs.slug(entry["concept"])
    target = record["probes"][0]["name"]
    return {"kind": entry["kind"], "method": record["method"], "anchor": record["anchor"], "slug": s,
            "probes": probes, "summary": summarize(probes),
            "grids": {"before": f"grids/{s}-before.png", "after": f"grids/{s}-after.png"},
            "_images": {"before": before[target][:GRID_IMAGES], "after": after[target][:GRID_IMAGES]}}


def evaluate_generic(params: PipelineParams, pipe, cache, detector) -> dict:
    from ..evaluate import drift, fid

    folder = params.paths.stage("generate") / GENERIC
    record = inputs.read_json(folder / "probes.json", "generate")
    data = np.load(folder / "before.npz")
    after = cache.images(pipe, record["prompts"], record["seeds"], desc="generic prompts")
    return {"generic_drift": drift(data["generic"], after), "fid_base": fid(detector, data["real"], data["generic"]),
            "fid_erased": fid(detector, data["real"], after), "n_generic": len(after)}


def write(params: PipelineParams, base_hash: str, concepts: dict[str, dict], generic: dict,
          track: bool = True) -> dict:
    """metrics.json, the grids, summary/ (for `dvc metrics`) and plots/ (for `dvc plots`), in one atomic
    folder; then MLflow."""
    metrics = {"model": params.model, "base_hash": base_hash, "images_per_probe": params.generate.images_per_probe,
               "concepts": {c: {k: v for k, v in r.items() if k != "_images"} for c, r in concepts.items()},
               "global": generic}
    out = params.paths.stage("evaluate")
    with atomic_dir(out) as tmp:
        (tmp / "grids").mkdir()
        for r in concepts.values():
            for when, images in r["_images"].items():
                grid(images, cols=8, zoom=3).save(tmp / r["grids"][when])
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        # summary/ and plots/ are small and committed to git (dvc.yaml: cache: false), so `dvc metrics diff`
        # and `dvc plots diff` read them at any commit; a file per concept is a row in `dvc metrics show`.
        for folder, files in (("summary", _summary(metrics)), ("plots", _plots(metrics))):
            (tmp / folder).mkdir()
            for name, data in files.items():
                (tmp / folder / name).write_text(json.dumps(data, indent=1) + "\n")
    if track:  # after the folder is in place: MLflow's artifacts are copies of published files
        from ..tracking import log_pipeline

        blocklist = inputs.read_json(params.paths.stage("ingest") / "blocklist.json", "ingest")
        run_id = log_pipeline(params, metrics, out, _train(params), _previous_metrics(params), blocklist.get("sha256"))
        # Kept out of work/: run ids differ run to run, and releases must not.
        with atomic_file(params.paths.cache / "mlflow-run.json") as fh:
            json.dump({"run_id": run_id, "uri": params.tracking.uri, "experiment": params.tracking.experiment,
                       "metrics_sha256": _sha256(out / "metrics.json")}, fh)
    return metrics


def run(params: PipelineParams, track: bool = True) -> dict:
    from ..detectors.miniworld import MiniworldDetector

    pipe, base_hash, cache = erased_model(params)
    detector = MiniworldDetector.load()
    concepts = {e["concept"]: evaluate_concept(params, e, pipe, cache, detector) for e in inputs.entries(params)}
    return write(params, base_hash, concepts, evaluate_generic(params, pipe, cache, detector), track)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# summary/<slug>.json: what the release gates read, under short names (dvc prints a column per key).
_SUMMARY = {"before": "target_before", "after": "target_after", "reduction": "target_reduction",
            "neighbour_drop": "neighbour_max_drop"}


def _summary(metrics: dict) -> dict[str, dict]:
    """{file name: numbers} for work/evaluate/summary/: one file per concept, _global.json (a slug has no "_")."""
    g = metrics["global"]
    out = {"_global.json": {k: g[k] for k in ("generic_drift", "fid_base", "fid_erased")}}
    for c in metrics["concepts"].values():
        out[f"{c['slug']}.json"] = {short: c["summary"][k] for short, k in _SUMMARY.items()
                                    if c["summary"].get(k) is not None}
    return out


def _plots(metrics: dict) -> dict[str, list]:
    """before.json and after.json for `dvc plots`: a bar per concept and probe, side by side by file."""
    return {f"{when}.json": [{"probe": f"{concept}: {name}", "presence": p[when]}
                             for concept, c in metrics["concepts"].items() for name, p in c["probes"].items()]
            for when in ("before", "after")}


def _train(params: PipelineParams) -> dict | None:
    path = params.paths.stage("erase") / "train.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _previous_metrics(params: PipelineParams) -> dict | None:
    latest = params.paths.releases / "LATEST"
    if not latest.is_file():
        return None
    path = params.paths.releases / latest.read_text().strip() / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None
