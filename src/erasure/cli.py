"""The `erasure` command. Thin: parse options, call the library, print, exit non-zero on bad input."""

from __future__ import annotations

import json
import os
import shutil
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .concept import KINDS
from .report import console, name

# Offline by default: this tool never needs the network to run on a local or shipped model.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")

app = typer.Typer(help="Erase concepts from text-to-image diffusion models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
miniworld_app = typer.Typer(help="The embedded miniature world and its shipped model.", no_args_is_help=True)
app.add_typer(miniworld_app, name="miniworld")
# At most 100 columns (report.WIDTH): tables stay whole in a log, and in a terminal up to its width.
out = console()
err = console(stderr=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'miniworld', a local diffusers folder, or a hub id.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when there is one), cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="fp32 or bf16: the dtype images are drawn in.")]


def _placement(device: str, dtype: str | None = None) -> dict:
    """load_pipeline's device (and dtype) keywords from the options, refused with one error before any work."""
    from .device import resolve_device, resolve_dtype

    out = {"device": str(_guard(resolve_device, device))}
    if dtype is not None:
        out["dtype"] = _guard(resolve_dtype, dtype)
    return out


def _fail(message: str, code: int = 2) -> None:
    # escape: a message quotes the user's text, which is not markup (`-c "[/]"` used to crash rich)
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _check_writable(flag: str, path: Path) -> None:
    """Before any work: `path` must be creatable (its parents exist or can be made, and accept files)."""
    from .io import writable_problem

    problem = writable_problem(path)
    if problem:
        _fail(f"{flag} {path}: cannot write there: {problem}")


def _guard(fn, *args, **kwargs):
    """Run library code; turn its known failures into one clear message and exit code 2."""
    from pydantic import ValidationError

    from .checkpoint import CheckpointError
    from .delta import DeltaError
    from .miniworld.detector import DetectorError
    from .models import ModelLoadError

    try:
        return fn(*args, **kwargs)
    except ValidationError as exc:  # a ValueError too, but its text spans lines and names no option
        _fail(_explain_validation(exc))
    except (ModelLoadError, DetectorError, DeltaError, CheckpointError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))


# Model fields whose command-line option is not simply `--<field>`.
_FLAGS = {"text": "--concept", "reference_images": "--reference-image", "options": "--option"}


def _explain_validation(exc, named: str | None = None) -> str:
    """A pydantic ValidationError as one line naming the option of each offending field.

    `named`: a field the caller's message already names (its option is not repeated).
    """
    parts = []
    for e in exc.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["loc"] and e["loc"] != (named,):
            field = str(e["loc"][0])
            flag = _FLAGS.get(field, "--" + field.replace("_", "-"))
            rest = ".".join(map(str, e["loc"][1:]))
            parts.append(f"{flag}{' ' + rest if rest else ''}: {msg}")
        else:
            parts.append(msg)
    return "; ".join(parts)


@app.command()
def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text prompt.")],
    model: ModelOpt = "miniworld",
    n: Annotated[int, typer.Option("-n", min=1, help="Number of images.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the first image; image i uses seed + i.")] = 0,
    steps: Annotated[int, typer.Option(min=1, help="Sampler steps.")] = 25,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 5.0,
    negative_prompt: Annotated[Optional[str], typer.Option(help="Negative prompt.")] = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Grid image to write.")] = Path("grid.png"),
    images_dir: Annotated[Optional[Path], typer.Option(help="Also write each image here.")] = None,
    zoom: Annotated[int, typer.Option(min=1, help="Enlarge the grid by this factor.")] = 1,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "fp32",
):
    """Generate images for a prompt and save them as a grid (and one file each if asked)."""
    from .models import load_pipeline
    from .sampling import generate as sample, grid

    pipe = _guard(load_pipeline, model, **_placement(device, dtype))
    images = sample(pipe, [prompt] * n, [seed + i for i in range(n)], steps=steps, guidance=guidance,
                    negative_prompt=negative_prompt)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    grid(images, zoom=zoom).save(out_path)
    if images_dir:
        from PIL import Image

        images_dir.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            Image.fromarray(img).save(images_dir / f"{seed + i:06d}.png")
    out.print(f"wrote {out_path}" + (f" and {n} images in {images_dir}" if images_dir else ""))


@app.command()
def detect(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders of images.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (one object per image).")] = False,
    weights: Annotated[Optional[Path], typer.Option(help="Detector weights (default: shipped).")] = None,
):
    """Read miniworld concepts (object, color, style, instance, frame, memorized copies) from images."""
    from .miniworld.detector import MiniworldDetector
    from .sampling import load_images

    files, images = _guard(load_images, paths)
    if images.shape[1:3] != (32, 32):
        _fail(f"the miniworld detector reads 32x32 images; got {images.shape[2]}x{images.shape[1]}")
    det = _guard(MiniworldDetector.load, weights)
    found = det.detect(images)
    if as_json:
        print(json.dumps([{"file": str(f), **d.as_dict()} for f, d in zip(files, found)], indent=1))
        return
    folders = {f.parent for f in files}
    if len(folders) == 1:  # file names alone, under their folder: a long path cannot crowd the table
        out.print(f"images in {folders.pop()}:", highlight=False)
        _print_detections([f.name for f in files], found)
    else:
        _print_detections([str(f) for f in files], found)


def _print_detections(names: list[str], found) -> None:
    from .miniworld.detector import HEADS

    # Labels and copies never wrap; a long file name or prompt folds within its own column.
    table = Table()
    table.add_column("image", overflow="fold", min_width=16)
    for header in (*HEADS, "copy of"):
        table.add_column(header, no_wrap=True)
    for image, d in zip(names, found):
        table.add_row(Text(image), *(d.labels[k] for k in HEADS), ", ".join(d.copies) or "-")  # Text: no markup
    out.print(table)


@app.command()
def export(
    delta: Annotated[Path, typer.Option(help="Delta safetensors file written by an erasure run.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write (replaced atomically).")],
    model: ModelOpt = "miniworld",
):
    """Apply a delta to its base model and write a full diffusers folder."""
    from .delta import export as export_delta

    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"--out {out_dir} is a file; expected the folder to write (it is replaced whole)")
    _check_writable("--out", out_dir)
    _guard(export_delta, model, delta, out_dir)
    out.print(f"wrote {out_dir}")


_Kind = Enum("_Kind", {k: k for k in KINDS}, type=str)  # erasure.concept's kinds, as a command-line choice
_Mode = Enum("_Mode", {m: m for m in ("joint", "sequential")}, type=str)


@app.command()
def erase(
    concepts: Annotated[list[str], typer.Option("--concept", "-c", help="Concept to erase; repeat for several.")],
    kind: Annotated[_Kind, typer.Option(help="What kind of concept (applies to every --concept).")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Delta file to write (.safetensors).")],
    model: ModelOpt = "miniworld",
    method: Annotated[str, typer.Option(help="esd, ca, abo, loss-max or uce.")] = "esd",
    anchor: Annotated[Optional[str], typer.Option(help="CA: the concept the target is mapped onto.")] = None,
    alternative: Annotated[Optional[str], typer.Option(
        help="All-but-One: what prompts naming the target show instead.")] = None,
    erase_from: Annotated[Optional[str], typer.Option(help="ESD: a broader concept the trained model sees.")] = None,
    reference_images: Annotated[Optional[list[Path]], typer.Option(
        "--reference-image", exists=True, help="Memorized image file or folder; repeatable.")] = None,
    rule: Annotated[Optional[str], typer.Option(
        help="Parameters to train: xattn-kv, xattn, attn, noxattn, noxattn-linear, full or embedding "
             "(default: the method's for the kind).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Steps per concept (default: the method's).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default: the method's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Batch size (default: the method's).")] = None,
    options: Annotated[Optional[list[str]], typer.Option(
        "--option", help="Method option key=value (value read as JSON when it parses); repeatable.")] = None,
    mode: Annotated[_Mode, typer.Option(help="Several concepts: all at once, or one after another.")] = _Mode("joint"),
    seed: Annotated[int, typer.Option(help="Seeds every random draw: same seed and settings, same delta.")] = 0,
    workdir: Annotated[Optional[Path], typer.Option(
        help="Pools and checkpoints; a rerun resumes from here (default: <out>.work).")] = None,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Steps between checkpoints.")] = 50,
    device: DeviceOpt = "auto",
    mixed_precision: Annotated[str, typer.Option(help="no, or bf16: compute in bf16 (weights stay fp32).")] = "no",
    robust_rounds: Annotated[int, typer.Option(
        min=0, help="Rounds of robust erasure after the concepts (learned attacks trained against; 0: none).")] = 0,
):
    """Fine-tune the model so that it stops generating the concept(s); write the change as a delta file.

    --anchor, --alternative, --erase-from and --reference-image apply to every --concept. A rerun with
    the same settings resumes from the last checkpoint in --workdir.
    """
    if lr is not None and not lr > 0:
        _fail(f"--lr {lr}: expected a positive learning rate")
    if out_path.is_dir():
        _fail(f"--out {out_path} is a folder; expected the path of the delta file to write")
    _check_writable("--out", out_path)
    if workdir is not None:
        _check_writable("--workdir", workdir)
    method_options = _parse_options(options or [])
    built = _guard(_build_concepts, concepts, kind.value, anchor, alternative, erase_from, reference_images or [])

    from .models import MINIWORLD, MINIWORLD_PATH, load_pipeline, source_folder, weights_hash
    from .trainer import EraseSettings, erase as run_erase, plan
    from .worlds import recipe

    folder = _guard(source_folder, model)
    spec = MINIWORLD if folder.resolve() == MINIWORLD_PATH.resolve() else model
    given = {k: v for k, v in dict(rule=rule, steps=steps, lr=lr, batch_size=batch_size).items() if v is not None}
    base = recipe(spec, method, kind.value)  # the methods' own defaults are for SD-scale models
    if base:
        err.print(f"miniworld recipe for {method} / {kind.value}: {json.dumps(base)} (options given win)",
                  highlight=False, soft_wrap=True)
    fields = {**base, **given, "method": method, "options": {**base.get("options", {}), **method_options},
              "mode": mode.value, "seed": seed, "checkpoint_every": checkpoint_every,
              "mixed_precision": mixed_precision, "robust": {"rounds": robust_rounds}}
    settings = _guard(EraseSettings, **fields)
    jobs = _guard(plan, built, settings)
    pipe = _guard(load_pipeline, model, **_placement(device))  # fp32 weights to train
    base_hash = weights_hash(folder)
    workdir = workdir or Path(f"{out_path}.work")
    fresh = not workdir.exists()
    try:
        result = _guard(run_erase, pipe, jobs, settings, workdir, out_path, model_spec=spec, base_hash=base_hash)
    except typer.Exit:
        # Some combinations fail only while the pools are built. A workdir this call created and left
        # without a checkpoint holds nothing to resume, but would refuse the corrected command's run.
        if fresh and not (workdir / "checkpoint").exists():
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    total = sum(j.steps for j in jobs)
    ran = f" ({result.steps_run} this run)" if result.steps_run != total else ""
    last = f", last loss {result.losses[-1]:.4g}" if result.losses else ""
    out.print(f"wrote {result.delta}", highlight=False, soft_wrap=True)
    out.print(f"{', '.join(dict.fromkeys(j.method for j in jobs))}, rule "
              f"{', '.join(dict.fromkeys(j.rule for j in jobs))}: {total} steps{ran}, "
              f"{result.seconds_per_step:.3f} s/step (pools {result.seconds_pool:.1f} s), "
              f"{result.trainable_params:,} trainable parameters{last}", highlight=False, soft_wrap=True)


def _parse_options(items: list[str]) -> dict:
    """`key=value` pairs -> dict; a value is JSON when it parses as JSON, else the plain string."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--option {item!r}: expected key=value (e.g. --option eta=2.0)")
        try:
            parsed[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key.strip()] = value
    return parsed


def _build_concepts(texts: list[str], kind: str, anchor, alternative, erase_from, reference_images) -> list:
    from pydantic import ValidationError

    from .concept import Concept, ConceptError

    built = []
    for text in texts:
        try:
            built.append(Concept(text=text, kind=kind, anchor=anchor, alternative=alternative,
                                 erase_from=erase_from, reference_images=tuple(reference_images)))
        except ValidationError as exc:
            raise ConceptError(f"--concept {text!r}: {_explain_validation(exc, named='text')}") from None
    return built


@app.command()
def run(
    model: ModelOpt = "miniworld",
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the grid and readings.")] = Path("outputs/run"),
    seed: int = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "fp32",
):
    """A quick look at a model: sample one prompt per concept kind; on the miniworld, read them back
    with its detector (the main job is the release flow: scripts/run.sh)."""
    from .miniworld.detector import MiniworldDetector
    from .miniworld.concepts import catalog
    from .models import MINIWORLD_PATH, load_pipeline, source_folder
    from .sampling import generate as sample, grid

    folder = _guard(source_folder, model)
    if folder.resolve() != MINIWORLD_PATH.resolve():
        # Another model's images mean nothing to the miniworld detector: a grid of everyday prompts only.
        from .probes import generic

        prompts, seeds = generic(8, seed, set())
        pipe = _guard(load_pipeline, model, **_placement(device, dtype))
        images = sample(pipe, prompts, seeds)
        out_dir.mkdir(parents=True, exist_ok=True)
        grid(images, cols=4).save(out_dir / "grid.png")
        (out_dir / "prompts.json").write_text(json.dumps([{"prompt": p, "seed": s} for p, s in zip(prompts, seeds)],
                                                         indent=1))
        err.print(f"{model}: {len(images)} images of everyday prompts in {out_dir / 'grid.png'}; no readings (the "
                  "miniworld detector reads only the miniworld; the release flow's judges read any model)",
                  highlight=False, soft_wrap=True)
        return
    cat = catalog()
    prompts = [
        "an image of a red star",
        f"an image of a blue heart {cat['style'][0]['phrase']}",
        f"an image of a green moon {cat['style'][2]['phrase']}",
        f"an image of {cat['instance'][0]['phrase']}",
        cat["memorized"][0]["phrase"],
        f"an image of a yellow cross {cat['implicit'][0]['phrase']}",
    ]
    per = 4
    pipe = _guard(load_pipeline, model, **_placement(device, dtype))
    det = _guard(MiniworldDetector.load)
    all_prompts = [p for p in prompts for _ in range(per)]
    images = sample(pipe, all_prompts, [seed + i for i in range(len(all_prompts))])
    out_dir.mkdir(parents=True, exist_ok=True)
    grid(images, cols=per, zoom=4).save(out_dir / "grid.png")
    found = det.detect(images)
    (out_dir / "readings.json").write_text(json.dumps(
        [{"prompt": p, "seed": seed + i, **d.as_dict()} for i, (p, d) in enumerate(zip(all_prompts, found))], indent=1))
    _print_detections(all_prompts, found)
    out.print(f"grid: {out_dir / 'grid.png'} (rows: one prompt each); readings: {out_dir / 'readings.json'}")


@miniworld_app.command("concepts")
def miniworld_concepts(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False):
    """List every miniworld concept by kind, with its anchor and the phrase a prompt uses."""
    from .miniworld.concepts import catalog

    cat = catalog()
    if as_json:
        print(json.dumps(cat, indent=1))
        return
    table = Table()
    for header in ("kind", "name", "phrase"):
        table.add_column(header, no_wrap=True)
    table.add_column("anchor")  # a memorized image's anchor is a whole prompt: it wraps
    for kind, items in cat.items():
        for c in items:
            table.add_row(kind, c["name"], c["phrase"], c["anchor"] or "-")
    out.print(table)


@miniworld_app.command("path")
def miniworld_path():
    """Print the folder of the shipped miniworld model (a standard diffusers folder)."""
    from .models import MINIWORLD_PATH

    print(MINIWORLD_PATH)


@miniworld_app.command("render")
def miniworld_render(
    n: Annotated[int, typer.Option("-n", min=1)] = 64,
    seed: int = 0,
    out_path: Annotated[Path, typer.Option("--out", "-o")] = Path("world.png"),
    captions: Annotated[bool, typer.Option(help="Print each image's caption and labels.")] = False,
):
    """Render procedural world images (the ground truth the model was trained on) as a grid."""
    from .miniworld.world import labels, make_dataset
    from .sampling import grid

    images, caps, scenes = make_dataset(seed, n)
    grid(images, zoom=4).save(out_path)
    if captions:
        for i, (c, s) in enumerate(zip(caps, scenes)):
            print(json.dumps({"index": i, "caption": c, **labels(s)}))
    out.print(f"wrote {out_path}")


@miniworld_app.command("train")
def miniworld_train(
    phase: Annotated[str, typer.Argument(
        help="data | vae | diffusion | decoder | export | all, or implicit | export-implicit (refine --base)")] = "all",
    workdir: Annotated[Path, typer.Option(help="Checkpoints and cached data; runs resume from here.")] = Path(
        "~/.cache/erasure/miniworld-train").expanduser(),
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Export folder (default: the shipped one).")] = None,
    vae_steps: Optional[int] = None,
    diffusion_steps: Optional[int] = None,
    decoder_steps: Optional[int] = None,
    implicit_steps: Optional[int] = None,
    dataset_size: Annotated[Optional[int], typer.Option(min=1, help="World images rendered by the data phase.")] = None,
    base: Annotated[Optional[Path], typer.Option(
        help="Exported pipeline the implicit phases refine (default: the shipped one).")] = None,
    threads: int = 2,
):
    """Train the miniworld model from scratch (resumable; every phase continues from its checkpoint)."""
    import torch

    from .miniworld.train import PHASES, TrainConfig, export, export_implicit, refine_implicit
    from .models import MINIWORLD_PATH

    cfg = TrainConfig(workdir=workdir, threads=threads)
    for name, value in (("vae_steps", vae_steps), ("diffusion_steps", diffusion_steps), ("decoder_steps", decoder_steps),
                        ("implicit_steps", implicit_steps), ("dataset_size", dataset_size)):
        if value is not None:
            setattr(cfg, name, value)
    if phase in ("implicit", "export-implicit") and base is not None and not (base / "model_index.json").is_file():
        _fail(f"--base {base}: expected an exported diffusers pipeline folder (with model_index.json)")
    torch.set_num_threads(threads)
    order = ["data", "vae", "diffusion", "decoder", "export"] if phase == "all" else [phase]
    for p in order:
        if p == "export":
            export(cfg, out_path or MINIWORLD_PATH)
        elif p == "implicit":
            _guard(refine_implicit, cfg, base or MINIWORLD_PATH)
        elif p == "export-implicit":
            _guard(export_implicit, cfg, base or MINIWORLD_PATH, out_path or MINIWORLD_PATH)
        elif p in PHASES:
            PHASES[p](cfg)
        else:
            _fail(f"unknown phase {p!r}; expected one of data, vae, diffusion, decoder, export, all, "
                  "implicit, export-implicit")


@miniworld_app.command("train-detector")
def miniworld_train_detector(
    steps: int = 2500,
    out_path: Annotated[Optional[Path], typer.Option("--out")] = None,
    threads: int = 2,
    measure_images: Annotated[int, typer.Option(min=1, help="Fresh images the accuracy is measured on.")] = 2000,
    images: Annotated[int, typer.Option(min=1, help="Procedural training images rendered.")] = 30000,
):
    """Train the miniworld concept detector and print its accuracy on fresh images (2,000 by default)."""
    import torch

    from .miniworld import detector_train as mt
    from .miniworld.detector import WEIGHTS

    torch.set_num_threads(threads)
    net = mt.train(out_path or WEIGHTS, steps=steps, count=images)
    print(json.dumps(mt.measure(net, count=measure_images), indent=1))


@miniworld_app.command("train-clip")
def miniworld_train_clip(
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Folder to save the CLIP to.")] = None,
    steps: int = 1500,
    renders: Annotated[int, typer.Option(min=1, help="True renders trained on.")] = 12000,
    generated: Annotated[int, typer.Option(min=0, help="Images drawn by the shipped model (0: none).")] = 2048,
    cache: Annotated[Path, typer.Option(help="Generated images and the resumable checkpoint.")] = Path("build/clip"),
    seed: int = 0,
    threads: int = 1,
):
    """Train the miniworld's small CLIP (the `clip` judge's model on the miniworld); resumes from its checkpoint."""
    import torch

    from .miniworld import clip_train

    torch.set_num_threads(threads)
    info = clip_train.train(out_path or clip_train.SHIPPED_CLIP, steps=steps, renders=renders, generated=generated,
                            seed=seed, cache=cache)
    print(json.dumps({k: v for k, v in info.items() if k != "history"}, indent=1))


release_app = typer.Typer(help="Published releases of the pipeline.", no_args_is_help=True)
app.add_typer(release_app, name="release")


@release_app.command("show")
def release_show(
    releases: Annotated[Path, typer.Option("--releases", help="Folder of published releases.")] = Path("releases"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """The latest release: its path, hash, gate results and per-concept metrics."""
    from .release import show

    info = _guard(show, releases)
    if as_json:
        print(json.dumps(info, indent=1))
        return
    out.print(f"release {info['release_id']} at {info['path']}\nrelease hash {info['release_hash']}")
    # Narrow enough for an 80-column log; the gates by name are in --json and the model card. A long
    # concept name is cut with an ellipsis, never wrapped a word per line.
    table = Table()
    table.add_column("concept", min_width=8, max_width=40)
    for header in ("kind", "method", "target", "cut", "neighbour\ndrop", "gates"):
        table.add_column(header, no_wrap=True)
    for concept, m in info["concepts"].items():
        gates = [g for g in info["gates"] if g["concept"] == concept]
        failed = [g["gate"] for g in gates if not g["passed"]]
        table.add_row(name(concept), m["kind"], m["method"], f"{m['target_before']:.2f} -> {m['target_after']:.2f}",
                      f"{m['target_reduction']:.0%}", f"{m['neighbour_max_drop']:.2f}",
                      f"FAIL: {', '.join(failed)}" if failed else f"{len(gates)}/{len(gates)} pass")
    out.print(table)


@release_app.command("report")
def release_report(
    params_path: Annotated[Path, typer.Option("--params", help="The pipeline's params file.")] = Path("params.yaml"),
    since: Annotated[Optional[float], typer.Option(
        help="Only a report written at or after this Unix time (scripts/run.sh: its own run's).")] = None,
):
    """The gates of the last release stage run (<work>/release/report.json): a table of the failed
    ones (the neighbour that fell, the phase that caused it), exit 1; or that all passed, exit 0."""
    from .config import load_params
    from .report import failed_gates, print_failed_gates

    params = _guard(load_params, params_path)
    path = params.paths.stage("release") / "report.json"
    if not path.is_file():
        _fail(f"{path}: no gate report; the release stage has not run")
    if since is not None and path.stat().st_mtime < since:
        _fail(f"{path}: written before this run; its release stage did not run")
    try:
        report = json.loads(path.read_text())
        gates = report["gates"]
    except (ValueError, KeyError, TypeError):
        _fail(f"{path}: not a release stage report (expected JSON with 'gates'); rerun the release stage")
    if report.get("passed"):
        out.print(f"all {len(gates)} gates passed: release {report.get('release_id')}", highlight=False)
        return
    # Reports written before the table existed hold no "failed" rows: the gates alone still name them.
    print_failed_gates(report.get("failed") or failed_gates(gates, {}, None), out)
    raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    sys.exit(app())
