"""The `erasure` command. Thin: parse options, call the library, print, exit non-zero on bad input."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

# Offline by default: this tool never needs the network to run on a local or shipped model.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")

app = typer.Typer(help="Erase concepts from text-to-image diffusion models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
miniworld_app = typer.Typer(help="The embedded miniature world and its shipped model.", no_args_is_help=True)
app.add_typer(miniworld_app, name="miniworld")
out = Console()
err = Console(stderr=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'miniworld', a local diffusers folder, or a hub id.")]


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _guard(fn, *args, **kwargs):
    """Run library code; turn its known failures into one clear message and exit code 2."""
    from .delta import DeltaError
    from .detectors.miniworld import DetectorError
    from .models import ModelLoadError

    try:
        return fn(*args, **kwargs)
    except (ModelLoadError, DetectorError, DeltaError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))


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
):
    """Generate images for a prompt and save them as a grid (and one file each if asked)."""
    from .models import load_pipeline
    from .sampling import generate as sample, grid

    pipe = _guard(load_pipeline, model)
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
    from .detectors.miniworld import MiniworldDetector
    from .sampling import load_images

    files, images = _guard(load_images, paths)
    if images.shape[1:3] != (32, 32):
        _fail(f"the miniworld detector reads 32x32 images; got {images.shape[2]}x{images.shape[1]}")
    det = _guard(MiniworldDetector.load, weights)
    found = det.detect(images)
    if as_json:
        print(json.dumps([{"file": str(f), **d.as_dict()} for f, d in zip(files, found)], indent=1))
        return
    _print_detections([str(f) for f in files], found)


def _print_detections(names: list[str], found) -> None:
    from .detectors.miniworld import HEADS

    table = Table("image", *HEADS, "copy of")
    for name, d in zip(names, found):
        table.add_row(name, *(d.labels[k] for k in HEADS), ", ".join(d.copies) or "-")
    out.print(table)


@app.command()
def export(
    delta: Annotated[Path, typer.Option(help="Delta safetensors file written by an erasure run.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write (replaced atomically).")],
    model: ModelOpt = "miniworld",
):
    """Apply a delta to its base model and write a full diffusers folder."""
    from .delta import export as export_delta

    _guard(export_delta, model, delta, out_dir)
    out.print(f"wrote {out_dir}")


@app.command()
def run(
    model: ModelOpt = "miniworld",
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the grid and readings.")] = Path("outputs/run"),
    seed: int = 0,
):
    """The main job on the embedded default: sample one prompt per concept kind, read them back."""
    from .detectors.miniworld import MiniworldDetector
    from .miniworld.concepts import catalog
    from .models import load_pipeline
    from .sampling import generate as sample, grid

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
    pipe = _guard(load_pipeline, model)
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
    table = Table("kind", "name", "phrase", "anchor")
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
    phase: Annotated[str, typer.Argument(help="data | vae | diffusion | decoder | export | all")] = "all",
    workdir: Annotated[Path, typer.Option(help="Checkpoints and cached data; runs resume from here.")] = Path(
        "~/.cache/erasure/miniworld-train").expanduser(),
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Export folder (default: the shipped one).")] = None,
    vae_steps: Optional[int] = None,
    diffusion_steps: Optional[int] = None,
    decoder_steps: Optional[int] = None,
    threads: int = 2,
):
    """Train the miniworld model from scratch (resumable; every phase continues from its checkpoint)."""
    import torch

    from .miniworld.train import PHASES, TrainConfig, export
    from .models import MINIWORLD_PATH

    cfg = TrainConfig(workdir=workdir, threads=threads)
    for name, value in (("vae_steps", vae_steps), ("diffusion_steps", diffusion_steps), ("decoder_steps", decoder_steps)):
        if value is not None:
            setattr(cfg, name, value)
    torch.set_num_threads(threads)
    order = ["data", "vae", "diffusion", "decoder", "export"] if phase == "all" else [phase]
    for p in order:
        if p == "export":
            export(cfg, out_path or MINIWORLD_PATH)
        elif p in PHASES:
            PHASES[p](cfg)
        else:
            _fail(f"unknown phase {p!r}; expected one of data, vae, diffusion, decoder, export, all")


@miniworld_app.command("train-detector")
def miniworld_train_detector(
    steps: int = 2500,
    out_path: Annotated[Optional[Path], typer.Option("--out")] = None,
    threads: int = 2,
):
    """Train the miniworld concept detector and print its accuracy on 2,000 fresh images."""
    import torch

    from .detectors import miniworld_train as mt
    from .detectors.miniworld import WEIGHTS

    torch.set_num_threads(threads)
    net = mt.train(out_path or WEIGHTS, steps=steps)
    print(json.dumps(mt.measure(net), indent=1))


def main() -> None:  # pragma: no cover
    sys.exit(app())
