"""Stage 2, anchors: the anchor each concept is mapped onto, and why (see erasure/anchors.py)."""

from __future__ import annotations

import json

from ..anchors import SIMILARITY_NAMES, choose, guidance_embedder, text_embedder
from ..config import PipelineParams
from ..io import atomic_dir
from . import inputs


def run(params: PipelineParams) -> dict:
    chosen = choose_and_plan(params, inputs.entries(params))
    with atomic_dir(params.paths.stage("anchors")) as tmp:
        (tmp / "anchors.json").write_text(json.dumps({"anchors": chosen}, indent=1, sort_keys=True))
    return {c: a["anchor"] for c, a in chosen.items()}


def choose_and_plan(params: PipelineParams, entries: list[dict]) -> dict[str, dict]:
    """concept -> {"anchor", "reason", "scores"} for ingest's `entries`; writes nothing. The erase
    stage's plan is made too: an impossible combination (a method without the anchor it needs, a
    method that cannot erase the kind, joint mode over recipes with different learning rates) fails
    before any image is drawn (the flow calls this before it starts)."""
    embed = None

    def lazy_embed(texts):  # the model loads only when a choice needs it
        nonlocal embed
        if embed is None:
            embed = _embedder(params)
        return embed(texts)

    lazy_embed.kind = SIMILARITY_NAMES[params.anchors.similarity]
    chosen = {}
    listed = {e["concept"].casefold() for e in entries}  # never onto a concept the list erases too
    for e in entries:
        candidates = [c for c in params.anchors.candidates.get(e["kind"], []) if c.casefold() not in listed]
        c = choose(e["concept"], e["kind"], inputs.method_for(params, e), anchor=e.get("anchor"),
                   paraphrases=e.get("paraphrases") or [], candidates=candidates,
                   no_anchor_methods=params.anchors.none_for_methods, embed=lazy_embed)
        chosen[e["concept"]] = c.as_dict()
    from .erase import jobs_and_settings

    jobs_and_settings(params, chosen, entries)
    return chosen


def _embedder(params: PipelineParams):
    if params.anchors.similarity == "guidance":
        from ..device import resolve_device
        from ..models import load_pipeline

        return guidance_embedder(load_pipeline(params.model, device=str(resolve_device(params.device))))
    from ..models import load_text_encoder

    return text_embedder(*load_text_encoder(params.model))
