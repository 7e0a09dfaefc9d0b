"""Stage 3, generate: per concept, its evaluation prompt sets and the base model's images of them;
plus generic prompts (no blocklisted concept), with the world's true renders where it has them, for
drift, FID and CLIP score. The judges the evaluation will use are built first: a judge model that
cannot be had fails here, before any image is drawn.

Images come from the content-addressed cache (erasure/cache.py): a re-run, or a run after adding
one concept, draws only images it has not drawn before.
"""

from __future__ import annotations

import json
import shutil

import numpy as np

from ..cache import ImageCache, sampler_id
from ..config import PipelineParams
from ..device import placement_tag
from ..io import atomic_dir
from .. import processes, worlds
from ..prompts import anchor_prompts
from . import inputs

GENERIC = "_generic"


def base_model(params: PipelineParams):
    """The base pipeline and its weights hash."""
    from ..device import resolve_device, resolve_dtype
    from ..models import load_pipeline, source_folder, weights_hash

    pipe = load_pipeline(params.model, dtype=resolve_dtype(params.dtype), device=str(resolve_device(params.device)))
    return pipe, weights_hash(source_folder(params.model))


_PANELS: dict[str, object] = {}


def judges(params: PipelineParams):
    """The run's judges (erasure/judges/panel.py), each built on first use and shared by every stage and
    flow task of this process that asks with the same model, device and evaluate section (a CLIP-L is
    loaded once, not once per concept)."""
    from ..judges.panel import Panel

    key = json.dumps([params.model, params.device, params.evaluate.model_dump(mode="json")], sort_keys=True)
    if key not in _PANELS:
        _PANELS[key] = Panel(params)
    return _PANELS[key]


def image_cache(params: PipelineParams, weights_key: str, pipe) -> ImageCache:
    """The content-addressed image cache for `pipe`, whose weights hash to `weights_key`."""
    g = params.generate
    return ImageCache(params.paths.cache / "images", weights_key, g.steps, g.guidance, g.batch_size,
                      sampler=sampler_id(pipe) + placement_tag(pipe.unet), processes=processes.launched())


def model_and_cache(params: PipelineParams):
    """The base pipeline, its weights hash, and the image cache for it."""
    pipe, base_hash = base_model(params)
    return pipe, base_hash, image_cache(params, base_hash, pipe)


def generate_concept(params: PipelineParams, entry: dict, anchor: str | None, blocked: set[str], pipe, cache) -> dict:
    """One concept's folder: probes.json and before.npz (base-model images per probe)."""
    probes = worlds.concept_probes(params, entry, anchor, blocked)
    drawn, kept = cache.misses, cache.hits
    images = {p["name"]: cache.images(pipe, p["prompts"], p["seeds"], desc=f"{entry['concept'][:20]}: {p['name']}",
                                      guidance=(p.get("extra") or {}).get("guidance"))  # an I2P file's own
              for p in probes}
    concept = inputs.concept(entry, anchor)
    record = {"concept": entry["concept"], "kind": entry["kind"], "anchor": anchor,
              "method": inputs.method_for(params, entry), "probes": probes,
              "anchor_prompts": anchor_prompts(concept, 8, params.model) if anchor else []}
    summary = {"concept": entry["concept"], "probes": len(probes),
               "images_drawn": cache.misses - drawn, "images_from_cache": cache.hits - kept}
    if processes.is_main():  # the main process writes the folder (the same images)
        with atomic_dir(params.paths.stage("generate") / inputs.slug(entry["concept"])) as tmp:
            (tmp / "probes.json").write_text(json.dumps(record, indent=1))
            np.savez_compressed(tmp / "before.npz", **images)
    return summary


def generate_generic(params: PipelineParams, blocked: set[str], pipe, cache) -> dict:
    prompts, seeds, real = worlds.generic(params, blocked)
    drawn, kept = cache.misses, cache.hits
    images = cache.images(pipe, prompts, seeds, desc="generic prompts")
    if processes.is_main():
        with atomic_dir(params.paths.stage("generate") / GENERIC) as tmp:
            (tmp / "probes.json").write_text(json.dumps({"prompts": prompts, "seeds": seeds}, indent=1))
            np.savez_compressed(tmp / "before.npz", generic=images, **({"real": real} if real is not None else {}))
    return {"concept": GENERIC, "images_drawn": cache.misses - drawn, "images_from_cache": cache.hits - kept}


def run(params: PipelineParams) -> dict:
    entries = inputs.entries(params)
    anchors = inputs.anchors(params)
    blocked = {e["concept"] for e in entries}
    judges(params).check([e["kind"] for e in entries], quality=params.model != "miniworld")
    pipe, _, cache = model_and_cache(params)
    for e in entries:
        generate_concept(params, e, anchors[e["concept"]]["anchor"], blocked, pipe, cache)
    generate_generic(params, blocked, pipe, cache)
    keep = {inputs.slug(e["concept"]) for e in entries} | {GENERIC}
    for stale in params.paths.stage("generate").iterdir() if processes.is_main() else ():
        if stale.is_dir() and stale.name not in keep:  # concepts no longer on the blocklist
            shutil.rmtree(stale)
    processes.wait()  # no process reports done before the folders are written
    out = {"concepts": len(entries), "images_drawn": cache.misses, "images_from_cache": cache.hits}
    state = processes.launched()
    if state is not None:
        out |= {"process": f"{state.process_index}/{state.num_processes}", "images_drawn_here": cache.drawn}
    return out
