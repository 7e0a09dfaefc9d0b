"""Stage 5, evaluate: per concept, presence before and after erasure on every probe; drift and FID
on generic prompts; everything to MLflow (one parent run, one nested run per concept).

Before-images come from the generate stage; after-images are drawn by the erased model (through
the same content-addressed cache, keyed by the erased weights). The judge params.evaluate names for
the concept's kind (erasure/judges/) reads both; metrics.json records each judge's identity.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from ..config import PipelineParams
from ..delta import apply_delta, load_delta, weights_digest
from .. import processes
from ..io import atomic_dir, atomic_file
from ..sampling import grid, side_by_side
from .. import worlds
from ..worlds import reference_name
from . import inputs
from .generate import GENERIC, base_model, image_cache, judges

GRID_IMAGES = 16


def erased_model(params: PipelineParams):
    """The base pipeline with the erase stage's delta applied, and a cache keyed by its weights."""
    delta = params.paths.stage("erase") / "delta.safetensors"
    if not delta.is_file():
        raise inputs.StageInputError(f"{delta}: missing; run the 'erase' stage first")
    tensors, meta = load_delta(delta)
    pipe, base_hash = base_model(params)
    apply_delta(pipe, tensors, meta, base_hash)
    # keyed by the weights, not the file (whose metadata lists the concepts in the blocklist's order)
    return pipe, base_hash, image_cache(params, f"{base_hash}+{weights_digest(tensors)}", pipe)


def evaluate_concept(params: PipelineParams, entry: dict, pipe, cache, panel) -> dict:
    """One concept's metrics, and its target prompts' images with the judge's reading of each (for
    the grids, written later; under `_images`, never in metrics.json)."""
    from ..evaluate import summarize

    folder = params.paths.stage("generate") / inputs.slug(entry["concept"])
    record = inputs.read_json(folder / "probes.json", "generate")
    before = np.load(folder / "before.npz")
    judge = panel.judge(entry["kind"])
    probes, after, hits = {}, {}, {}
    for p in record["probes"]:
        after[p["name"]] = cache.images(pipe, p["prompts"], p["seeds"], desc=f"{entry['concept'][:20]}: {p['name']}",
                                        guidance=(p.get("extra") or {}).get("guidance"))
        hits[p["name"]] = {"before": judge.detect(before[p["name"]], p), "after": judge.detect(after[p["name"]], p)}
        probes[p["name"]] = {"before": judge.presence(hits[p["name"]]["before"], p),
                             "after": judge.presence(hits[p["name"]]["after"], p),
                             "n": len(p["prompts"]), "example_prompt": p["prompts"][0]}
    s = inputs.slug(entry["concept"])
    target = record["probes"][0]
    name, k = target["name"], GRID_IMAGES
    return {"kind": entry["kind"], "method": record["method"], "anchor": record["anchor"], "slug": s,
            "judge": judge.name, "_judge": judge.describe(), "probes": probes, "summary": summarize(probes),
            "grids": {"before": f"grids/{s}-before.png", "after": f"grids/{s}-after.png",
                      "side_by_side": f"grids/{s}-side-by-side.png"},
            "_images": {"before": before[name][:k], "after": after[name][:k], "prompts": target["prompts"][:k],
                        "readings": {w: hits[name][w][:k].tolist() for w in ("before", "after")},
                        "label": _judged(target)}}


def _judged(probe: dict) -> str:
    """What the judge looks for on a probe, for the grid: "'Pip'", "a copy of 'midnight-lantern.png'"."""
    ref = reference_name(probe)
    if ref:
        return f"a copy of '{ref}'"
    return f"'{probe.get('label') or probe['target']['text']}'"


def evaluate_generic(params: PipelineParams, pipe, cache, panel) -> dict:
    """Drift from the base model at the same prompts and seeds; FID to the world's true renders where it
    has them (the miniworld, on its detector's features): the base model's against the world as it is,
    the erased model's against the world as the release promises it (an erased implicit attribute
    absent: drawing it no longer is what the model should do); else FID and KID between the base and
    the erased model's images and their CLIP scores, on the quality CLIP (evaluate.clip.model). The
    same after each phase of a sequential run (`phases`, on the first generate.phase_images prompts,
    the base model's FID and the last phase's too), and the phase that cost the most."""
    from ..evaluate import drift

    folder = params.paths.stage("generate") / GENERIC
    record = inputs.read_json(folder / "probes.json", "generate")
    data = np.load(folder / "before.npz")
    after = cache.images(pipe, record["prompts"], record["seeds"], desc="generic prompts")
    erased = {e["concept"] for e in inputs.entries(params)}
    phases = _phases(params, after)
    m = len(phases[-1]["images"])  # the prompts every phase drew
    whole = _quality(params, panel, data, [after], [erased])
    each = _quality(params, panel, {k: data[k][:m] for k in data.files}, [ph["images"] for ph in phases],
                    [ph["erased"] for ph in phases])
    out = {"generic_drift": drift(data["generic"], after), "n_generic": len(after)}
    if "real" in data:
        out |= {"fid_base": whole["fid_base"], "fid_erased": whole["fid"][0],
                "fid_ratio": whole["fid"][0] / max(whole["fid_base"], 1e-12)}
    else:
        from ..judges import quality as q

        clip = panel.clip()
        subset = max(2, min(len(after), 100) // 2)  # KID's subsets: half the images, at least two
        kid, kid_std = q.kid(clip, data["generic"], after, subset_size=subset)
        out |= {"fid_to_base": whole["fid"][0], "kid_to_base": kid, "kid_to_base_std": kid_std,
                "clip_score_base": q.clip_score(clip, data["generic"], record["prompts"]),
                "clip_score_erased": q.clip_score(clip, after, record["prompts"])}
    out["phases"] = [{"phase": ph["phase"], "concepts": ph["concepts"], "fid": fid, "n": m,
                      "drift": drift(data["generic"][:m], ph["images"])} for ph, fid in zip(phases, each["fid"])]
    return out | costliest(out["phases"], each.get("fid_base", 0.0))


def costliest(phases: list[dict], fid_start: float) -> dict:
    """The phase whose FID rose most over the one before it (the base model's before the first)."""
    if len(phases) < 2:
        return {}
    rises = [ph["fid"] - (phases[k - 1]["fid"] if k else fid_start) for k, ph in enumerate(phases)]
    k = max(range(len(phases)), key=lambda i: rises[i])
    return {"costliest_phase": {"phase": phases[k]["phase"], "concepts": phases[k]["concepts"],
                                "fid_rise": rises[k]}}


def _phases(params: PipelineParams, after: np.ndarray) -> list[dict]:
    """Each phase's images of the first generic prompts (the erase stage's phase_images.npz; the final
    model's for the last), with the concepts it erased and every concept erased up to it."""
    train = inputs.read_json(params.paths.stage("erase") / "train.json", "erase")
    if "phases" not in train:
        raise inputs.StageInputError(f"{params.paths.stage('erase') / 'train.json'}: no 'phases' (written by an "
                                     "older erase stage); rerun the 'erase' stage")
    groups = train["phases"]  # as the trainer ran them (erasure.trainer.phases_of)
    path = params.paths.stage("erase") / "phase_images.npz"
    if not path.is_file():
        raise inputs.StageInputError(f"{path}: missing; run the 'erase' stage first")
    stored = np.load(path)
    if sorted(stored.files, key=int) != [str(k) for k in range(len(groups) - 1)]:
        raise inputs.StageInputError(f"{path}: holds phases {sorted(stored.files)}, expected 0 to {len(groups) - 2} "
                                     "(train.json's phases but the last); rerun the 'erase' stage")
    m = min([len(stored[k]) for k in stored.files] or [params.generate.phase_count(len(after))])
    return [{"phase": k, "concepts": g, "erased": {c for h in groups[:k + 1] for c in h},
             "images": stored[str(k)][:m] if k < len(groups) - 1 else after[:m]} for k, g in enumerate(groups)]


def _quality(params: PipelineParams, panel, data, images: list[np.ndarray], erased: list[set[str]]) -> dict:
    """FID of each image set: to the world's renders as promised after those concepts' erasure (the
    miniworld), else to the base model's images (CLIP features); and the base model's own. `data`
    holds the base model's images (and the world's renders) of the same prompts as each set."""
    if "real" not in data:
        from ..judges import quality as q

        clip = panel.clip()
        return {"fid": [q.fid(clip, data["generic"], im) for im in images]}
    world = panel.get("miniworld")
    blocked = {e["concept"] for e in inputs.entries(params)}
    n = len(data["generic"])
    return {"fid_base": world.fid(data["real"], data["generic"]),
            "fid": [world.fid(worlds.promised_renders(params, blocked, e)[:n], im) for im, e in zip(images, erased)]}


def write(params: PipelineParams, base_hash: str, concepts: dict[str, dict], generic: dict,
          track: bool = True) -> dict:
    """metrics.json, the grids, summary/ (for `dvc metrics`) and plots/ (for `dvc plots`), in one atomic
    folder; then MLflow."""
    metrics = {"model": params.model, "base_hash": base_hash, "images_per_probe": params.generate.images_per_probe,
               "judges": {r["kind"]: r["_judge"] for r in concepts.values() if "_judge" in r},  # who read each kind, and how
               "concepts": {c: {k: v for k, v in r.items() if not k.startswith("_")} for c, r in concepts.items()},
               "global": generic}
    out = params.paths.stage("evaluate")
    with atomic_dir(out) as tmp:
        (tmp / "grids").mkdir()
        for concept, r in concepts.items():
            im = r["_images"]
            for when in ("before", "after"):
                grid(im[when], cols=8, zoom=3).save(tmp / r["grids"][when])
            s = r["summary"]
            title = (f"{concept} ({r['kind']}, {r['method']}): target prompts, presence "
                     f"{s['target_before']:.2f} -> {s['target_after']:.2f}")
            side_by_side(im["before"], im["after"], im["prompts"], im["readings"], im["label"],
                         title).save(tmp / r["grids"]["side_by_side"])
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        # summary/ and plots/ are small and committed to git (dvc.yaml: cache: false), so `dvc metrics diff`
        # and `dvc plots diff` read them at any commit; a file per concept is a row in `dvc metrics show`.
        for folder, files in (("summary", _summary(metrics)), ("plots", _plots(metrics))):
            (tmp / folder).mkdir()
            for name, data in files.items():
                (tmp / folder / name).write_text(json.dumps(data, indent=1) + "\n")
    if track:  # after the folder is in place: MLflow's artifacts are copies of published files
        from ..tracking import experiment_id as _experiment_id
        from ..tracking import log_pipeline, review_url

        blocklist = inputs.read_json(params.paths.stage("ingest") / "blocklist.json", "ingest")
        previous, previous_metrics = _previous_release(params)
        losses = params.paths.stage("erase") / "losses.json"
        run_id = log_pipeline(params, metrics, out, _train(params), previous_metrics, blocklist.get("sha256"),
                              losses=json.loads(losses.read_text()) if losses.is_file() else None,
                              start_time_ms=_job_start(params), previous_release=previous)
        # Kept out of work/: run ids differ run to run, and releases must not.
        with atomic_file(params.paths.cache / "mlflow-run.json") as fh:
            json.dump({"run_id": run_id, "uri": params.tracking.uri, "experiment": params.tracking.experiment,
                       "metrics_sha256": _sha256(out / "metrics.json"), "logged_ms": int(time.time() * 1000),
                       "review": review_url("", _experiment_id(params))}, fh)
    return metrics


def run(params: PipelineParams, track: bool = True) -> dict:
    pipe, base_hash, cache = erased_model(params)
    panel = judges(params)
    concepts = {e["concept"]: evaluate_concept(params, e, pipe, cache, panel) for e in inputs.entries(params)}
    generic = evaluate_generic(params, pipe, cache, panel)
    if not processes.is_main():  # several processes shared the drawing; the main one writes and tracks
        processes.wait()
        return {"concepts": sorted(concepts), "written_by": "the main process"}
    metrics = write(params, base_hash, concepts, generic, track)
    processes.wait()
    return metrics


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# summary/<slug>.json: what the release gates read, under short names (dvc prints a column per key).
_SUMMARY = {"before": "target_before", "after": "target_after", "reduction": "target_reduction",
            "neighbour_drop": "neighbour_max_drop"}


GLOBAL_SUMMARY = ("generic_drift", "fid_base", "fid_erased", "fid_ratio", "fid_to_base", "kid_to_base", "clip_score_base",
                  "clip_score_erased")


def _summary(metrics: dict) -> dict[str, dict]:
    """{file name: numbers} for work/evaluate/summary/: one file per concept, _global.json (a slug has no "_")."""
    g = metrics["global"]
    out = {"_global.json": {k: g[k] for k in GLOBAL_SUMMARY if k in g}}
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


def _previous_release(params: PipelineParams) -> tuple[dict | None, dict | None]:
    """({"release_id", "release_hash"}, metrics.json) of the release LATEST names, or (None, None)."""
    latest = params.paths.releases / "LATEST"
    if not latest.is_file():
        return None, None
    folder = params.paths.releases / latest.read_text().strip()
    if not (folder / "metrics.json").is_file():
        return None, None
    manifest = folder / "manifest.json"
    release_hash = json.loads(manifest.read_text()).get("release_hash") if manifest.is_file() else None
    return {"release_id": folder.name, "release_hash": release_hash}, json.loads((folder / "metrics.json").read_text())


JOB_START = "job-start.json"  # in params.paths.cache, written by ingest: when the job began


def _job_start(params: PipelineParams) -> int | None:
    """When this job's ingest ran (ms), the parent run's start; None (now) when that record is from an
    earlier job, i.e. older than the last run logged (ingest was up to date and skipped)."""
    try:
        start = json.loads((params.paths.cache / JOB_START).read_text())["start_ms"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        last = json.loads((params.paths.cache / "mlflow-run.json").read_text()).get("logged_ms", 0)
    except (OSError, ValueError, AttributeError):
        last = 0
    return int(start) if int(start) > int(last or 0) else None
