"""The pipeline's stages: one definition each, driven by `dvc.yaml` (through `stages/*.py`) and by
the Prefect flow (`flows/release_flow.py`).

Each module holds one stage: `run(params: PipelineParams) -> dict` reads only what earlier stages
wrote, writes its own folder under `params.paths.work` atomically, and returns a short summary.

    ingest    blocklist file             -> work/ingest/{blocklist.json, diff.json}
    anchors   work/ingest                -> work/anchors/anchors.json
    generate  work/ingest, work/anchors  -> work/generate/<concept slug>/probes.json (+ cached images)
    erase     work/ingest, work/anchors  -> work/erase/{delta.safetensors, train.json}
    evaluate  work/generate, work/erase  -> work/evaluate/{metrics.json, grids/}, MLflow runs
    release   work/evaluate, work/erase  -> work/release/report.json, releases/<id>/ when the gates pass
"""
