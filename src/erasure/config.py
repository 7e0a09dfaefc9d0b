"""params.yaml as plain data: every knob of the pipeline, validated once, read by every stage.

    params = load_params("params.yaml")
    params.paths.stage("ingest")      # work/ingest: where the ingest stage writes

Stages read only their own section (plus `model`, `seed`, `paths`), so DVC can declare exactly
which params each stage depends on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .concept import KINDS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Paths(_Section):
    blocklist: Path = Path("blocklists/default.yaml")
    work: Path = Path("work")  # stage outputs, versioned by DVC
    releases: Path = Path("releases")  # published releases, one folder each, and LATEST
    cache: Path = Path(".cache/pipeline")  # content-addressed images, erasure phases, run workdirs

    def stage(self, name: str) -> Path:
        return self.work / name


class AnchorParams(_Section):
    # Candidates the automatic choice picks from, per kind (the target and its paraphrases are never chosen).
    candidates: dict[str, list[str]] = {}
    # Kinds whose method needs no anchor (ESD maps onto the unconditional prediction).
    none_for_methods: list[str] = ["esd", "loss-max"]
    # How closeness is measured (erasure/anchors.py): the model's guidance directions, or the text encoder.
    similarity: Literal["guidance", "text"] = "guidance"


class GenerateParams(_Section):
    images_per_probe: int = Field(32, gt=0)  # evaluation images per prompt set
    generic_images: int = Field(64, gt=0)  # prompts naming no blocklisted concept: drift and FID
    steps: int = Field(25, gt=0)  # DDIM steps
    guidance: float = Field(5.0, ge=0)
    batch_size: int = Field(64, gt=0)
    misspellings: int = Field(1, ge=0)  # misspelled variants of each concept in the evaluation


class EraseParams(_Section):
    mode: Literal["joint", "sequential"] = "sequential"
    # The method per concept kind; a blocklist entry's `method` wins.
    methods: dict[str, str] = {"style": "esd", "object": "esd", "instance": "ca", "nudity": "esd",
                               "implicit": "esd", "memorized": "ca"}
    # EraseSettings fields per "<method>/<kind>" (e.g. "esd/style"); missing keys take the method's defaults.
    recipes: dict[str, dict] = {}
    seed: int = 0
    checkpoint_every: int = Field(25, gt=0)
    mixed_precision: Literal["no", "bf16"] = "no"
    gradient_checkpointing: bool = False
    zero_stage: Literal[0, 1, 2, 3] = 0


class EvaluateParams(_Section):
    detector: str = "miniworld"


class Gate(_Section):
    target_max: float | None = None  # presence on prompts naming the concept, after erasure
    reduction_min: float | None = None  # relative cut of presence (implicit concepts: prompts not naming it)
    neighbour_max_drop: float | None = None  # largest fall of a neighbour's presence from the base model


class ReleaseParams(_Section):
    gates: dict[str, Gate] = {}  # per kind; "default" for kinds not listed
    registry_name: str = "erasure-release"
    alias: str = "production"


class TrackingParams(_Section):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "erasure"


class ScheduleParams(_Section):
    cron: str = "0 2 * * *"  # the nightly blocklist run (flows/deploy.py)
    timezone: str = "UTC"


class PipelineParams(_Section):
    model: str = "miniworld"
    seed: int = 0
    paths: Paths = Paths()
    anchors: AnchorParams = AnchorParams()
    generate: GenerateParams = GenerateParams()
    erase: EraseParams = EraseParams()
    evaluate: EvaluateParams = EvaluateParams()
    release: ReleaseParams = ReleaseParams()
    tracking: TrackingParams = TrackingParams()
    schedule: ScheduleParams = ScheduleParams()

    def gate_for(self, kind: str) -> Gate:
        return self.release.gates.get(kind) or self.release.gates.get("default") or Gate()


class ParamsError(ValueError):
    pass


def load_params(path: Path | str = "params.yaml", root: Path | None = None) -> PipelineParams:
    """Read and validate params.yaml; relative paths in it are taken from `root` (default: its folder)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        params = PipelineParams(**raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ParamsError(f"{path}: {where}: {first['msg']}") from None
    for kind in params.release.gates:
        if kind != "default" and kind not in KINDS:
            raise ParamsError(f"{path}: release.gates.{kind}: unknown kind; expected one of default, {', '.join(KINDS)}")
    root = Path(root) if root is not None else path.resolve().parent
    p = params.paths
    params.paths = Paths(**{k: (v if Path(v).is_absolute() else root / v) for k, v in p.model_dump().items()})
    return params
