"""Concept Ablation side by side: the official implementation against ours, on one miniworld instance.

    python benchmarks/ca_official.py --official /work/exp/concept-ablation \\
        --official-python /work/exp/ca-venv/bin/python                  # issue 19: 200 steps, 128 images
    python benchmarks/ca_official.py --official ... --official-python ... \\
        --steps 2 --anchor-images 4 --n 4 --results /tmp/ca-smoke           # a toy run

Erases the instance Pip onto its class, the circle, twice from the shipped miniworld model, each run
timed by its wall clock as a subprocess (interpreter start, imports, model loading, anchor images,
training, saving):
  - theirs: the official code (github nupurkmr9/concept-ablation, `diffusers/train.py`, run from the
    checkout given with --official, never copied here), model-based ablation of the target caption
    onto the anchor (`--concept_type object --caption_target "a circle+Pip"`: each anchor prompt with
    "a circle" replaced by "Pip", the target prompt our CA makes from it), cross-attention K/V
    (`--parameter_group cross-attn`), on the miniworld exported as a diffusers folder;
  - ours: `erasure erase -c Pip --kind instance --method ca --anchor circle` with the miniworld recipe
    `ca/instance` (src/erasure/miniworld/recipes.py), the methods benchmark's row `ca-instance`.
Both get the same steps, anchor-image count, learning rate and batch size (the recipe's, without the
official `--scale_lr`: the recipe's rate is already the effective one) and the same anchor prompts (the
official script reads ours from a file, `--class_prompt`, instead of asking an LLM for them). Then each
delta is loaded into the miniworld pipeline and the miniworld detector reads --n images per probe on
the held-out templates (the methods benchmark's `Probes`): Pip's presence (efficacy) and the circle's
(specificity; --all-probes adds the other instances, Bobo and Zuzu, as in the methods benchmark's row).
Timings depend on the machine being otherwise idle: run it alone (another job on the 2 cores slowed a
2-thread run about 40x here). Results: <results>/ca_official.md and .json.

The official script as published does not run here unchanged; it is run through a small launcher
(LAUNCHER below, written into the work folder) that changes the environment, not their code:
  1. torchvision: their utils.py imports it. The torchvision that pairs with torch 2.13.0 (0.28.0) is
     reachable only as the CUDA build, whose C++ ops cannot load against the CPU torch; its package
     `__init__` then fails. The launcher imports its pure-Python `torchvision.transforms` (all utils.py
     uses) without that `__init__`. Install it with `pip install --no-deps torchvision==0.28.0` into a
     separate interpreter (see --official-python); never into the project's .venv.
  2. transformers >= 5 removed `CLIPFeatureExtractor`, which model_pipeline.py imports for a type
     annotation only: the launcher aliases it to `CLIPImageProcessor` when missing.
  3. Their dataset's loss mask assumes the SD VAE's 8x downsampling (`size // 8`); the miniworld's VAE
     downsamples 2x, so the mask would not broadcast against the latents. The launcher recomputes the
     mask on the model's latent grid with their rule for un-augmented images (the image's area less a
     one-latent-cell border); the harness passes `--noaug`, the only case this covers.
  4. Their script saves the trained weights with torch.save as a pickle (`delta.bin`, no safetensors
     option): the launcher has that call write the same tensors as `delta.safetensors` instead, so no
     pickle is written or read.
Their script also imports `openai` (used only to have an LLM write anchor prompts, which this harness
does not ask for); it must be importable in --official-python. Both sample anchor images with 25 steps
(theirs: DPM-Solver, guidance 6, as their train.py hard-codes; ours: DDIM, the recipe's anchor_steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods import RESULTS, ROWS, Probes  # noqa: E402  (the methods benchmark's probes)

import torch  # noqa: E402

TARGET, ANCHOR = "Pip", "circle"
ROW = ROWS["ca-instance"]  # Pip onto the circle; probes: Pip, the circle, the other instances

LAUNCHER = r'''"""Runs the official Concept Ablation diffusers/train.py unchanged, after the compatibility
measures described in benchmarks/ca_official.py (environment only; their files are not modified)."""
import importlib.util
import os
import runpy
import sys
import types

import numpy as np

official = os.environ["CA_OFFICIAL_DIR"]
factor = int(os.environ["CA_LATENT_FACTOR"])
sys.path.insert(0, official)

# 1. torchvision's pure-Python transforms, without the package __init__ that loads its C++ ops.
try:
    import torchvision.transforms  # noqa: F401
except Exception as exc:  # the CUDA build against a CPU torch
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise SystemExit("launcher: torchvision is not installed in this interpreter; their utils.py needs it")
    pkg = types.ModuleType("torchvision")
    pkg.__path__, pkg.__file__, pkg.__spec__ = list(spec.submodule_search_locations), spec.origin, spec
    sys.modules["torchvision"] = pkg
    import torchvision.transforms  # noqa: F401,F811
    print(f"[launcher] torchvision's C++ ops do not load ({type(exc).__name__}); using its Python transforms",
          flush=True)

# 2. transformers >= 5 has no CLIPFeatureExtractor (a type annotation in model_pipeline.py).
import transformers  # noqa: E402

try:
    transformers.CLIPFeatureExtractor
except (AttributeError, ImportError):
    replacement = transformers.CLIPImageProcessor
    # (resolving a name can rebind sys.modules["transformers"]: set it on the module imports will see)
    sys.modules["transformers"].CLIPFeatureExtractor = replacement
    print("[launcher] transformers.CLIPFeatureExtractor aliased to CLIPImageProcessor", flush=True)

# 3. The loss mask on this model's latent grid (their rule: the image less one latent cell all round).
import utils  # noqa: E402  (theirs: diffusers/utils.py)

if factor != 8:
    original = utils.CustomDiffusionDataset.preprocess

    def preprocess(self, image, scale, resample):
        if self.aug or scale != self.size:
            raise SystemExit("launcher: the mask is recomputed for un-augmented images only (pass --noaug)")
        image, _ = original(self, image, scale, resample)
        mask = np.zeros((self.size // factor, self.size // factor))
        mask[1:-1, 1:-1] = 1.0
        return image, mask

    utils.CustomDiffusionDataset.preprocess = preprocess
    print(f"[launcher] loss mask on the {factor}x latent grid", flush=True)

# 4. Their weights as safetensors: their model_pipeline.save calls torch.save(delta_dict, ".../delta.bin")
#    with delta_dict = {"unet": {name: tensor}}; written instead as delta.safetensors (no pickle is made,
#    so none is ever read back).
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

_torch_save = torch.save


def save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)) and str(f).endswith("delta.bin"):
        if not (isinstance(obj, dict) and set(obj) == {"unet"}):
            raise SystemExit(f"launcher: {f}: expected {{'unet': tensors}}, got keys {sorted(obj)}")
        save_file({k: v.contiguous() for k, v in obj["unet"].items()}, str(f)[:-len(".bin")] + ".safetensors")
        return None
    return _torch_save(obj, f, *args, **kwargs)


torch.save = save

sys.argv = [os.path.join(official, "train.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def export_miniworld(folder: Path) -> dict:
    """The shipped miniworld, as the project loads it, saved as a plain diffusers folder."""
    from erasure.models import load_pipeline

    pipe = load_pipeline()
    pipe.save_pretrained(str(folder), safe_serialization=True)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return {"resolution": pipe.unet.config.sample_size * factor, "latent_factor": factor}


def anchor_prompts(n: int) -> tuple[list[str], str]:
    """Our CA's anchor prompts for Pip -> circle, and the official caption_target that turns each into
    the same target prompt our CA makes (checked here)."""
    from erasure.concept import Concept
    from erasure.prompts import anchor_prompts as ours, target_prompt

    concept = Concept(text=TARGET, kind="instance", anchor=ANCHOR)
    prompts = ours(concept, n, "miniworld", seed=0)
    caption_target = f"a {ANCHOR}+{TARGET}"
    old, new = caption_target.split("+")
    differ = [p for p in prompts if p.replace(old, new) != target_prompt(concept, p)]
    if differ:
        raise SystemExit(f"caption_target {caption_target!r} does not make our target prompt from {differ[:3]}")
    return prompts, caption_target


def timed(cmd: list[str], log: Path, env: dict, cwd: Path | None, marks: dict[str, str]) -> dict:
    """Run cmd, output to log; wall seconds to the end and to each marker's first line."""
    seen: dict[str, float] = {}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        # text mode reads tqdm's carriage returns as line ends: every update is a line, timed as it comes
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=cwd, bufsize=1)
        try:
            for line in proc.stdout:
                now = time.perf_counter() - t0
                fh.write(f"{now:9.2f} {line}")
                for key, needle in marks.items():
                    if key not in seen and needle in line:
                        seen[key] = now
            rc = proc.wait()
        except BaseException:  # interrupted: leave no run behind
            proc.kill()
            proc.wait()
            raise
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text().splitlines()[-40:]
        raise SystemExit(f"{cmd[0]} ... exited {rc}; last lines of {log}:\n" + "\n".join(tail))
    return {"wall_s": wall, "marks": seen, "log": log.read_text()}


def run_official(args, work: Path, export: Path, geo: dict, prompts: list[str], caption_target: str,
                 recipe: dict, env: dict) -> dict:
    train_py = args.official / "diffusers" / "train.py"
    if not train_py.is_file():
        raise SystemExit(f"--official {args.official}: no diffusers/train.py there (a checkout of "
                         "github nupurkmr9/concept-ablation expected)")
    prompt_file = work / "anchor_prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n")
    launcher = work / "launch_official.py"
    launcher.write_text(LAUNCHER)
    out = work / "official-out"
    flags = ["--pretrained_model_name_or_path", str(export), "--output_dir", str(out),
             "--class_data_dir", str(work / "official-anchor"), "--class_prompt", str(prompt_file),
             "--caption_target", caption_target, "--concept_type", "object",
             "--resolution", str(geo["resolution"]), "--train_batch_size", str(recipe["batch_size"]),
             "--learning_rate", str(recipe["lr"]), "--max_train_steps", str(args.steps),
             "--num_class_images", str(args.anchor_images), "--parameter_group", "cross-attn",
             "--loss_type_reverse", "model-based", "--noaug", "--mixed_precision", "no",
             "--dataloader_num_workers", "0", *shlex.split(args.official_extra)]
    env = env | {"CA_OFFICIAL_DIR": str(train_py.parent), "CA_LATENT_FACTOR": str(geo["latent_factor"])}
    cmd = [str(args.official_python), str(launcher), *flags]
    print("official: " + " ".join(shlex.quote(c) for c in ["train.py", *flags]), flush=True)
    res = timed(cmd, work / "official.log", env, train_py.parent,
                {"generation": "Number of class images to sample", "training": "***** Running training *****",
                 "steps_done": "Steps: 100%"})
    delta = out / "delta.safetensors"  # the launcher's: their delta.bin's tensors, never pickled
    if not delta.is_file():
        raise SystemExit(f"official run wrote no {delta}; see {work / 'official.log'}")
    m = res["marks"]
    return {"wall_s": res["wall_s"], "flags": flags, "launcher": "benchmarks/ca_official.py LAUNCHER",
            "seconds_startup": m.get("generation"),
            "seconds_anchor_images": (m["training"] - m["generation"]) if {"generation", "training"} <= m.keys()
            else None,
            "seconds_training": (m["steps_done"] - m["training"]) if {"training", "steps_done"} <= m.keys() else None,
            "seconds_save_exit": (res["wall_s"] - m["steps_done"]) if "steps_done" in m else None,
            "phase_note": "startup: process start to 'Number of class images to sample' (imports, model load); "
                          "anchor images: to '***** Running training *****' (includes loading the training "
                          "models); training: to the first 'Steps: 100%' line; then saving delta.bin and exit",
            "weights": str(delta), "weights_format": "their delta.bin's UNet tensors, written as safetensors by the launcher"}


def run_ours(args, work: Path, recipe: dict, env: dict) -> dict:
    exe = Path(sys.executable).with_name("erasure")
    cli = [str(exe)] if exe.is_file() else [sys.executable, "-c", "from erasure.cli import app; app()"]
    delta = work / "ours.safetensors"
    flags = ["erase", "-c", TARGET, "--kind", "instance", "--method", "ca", "--anchor", ANCHOR,
             "--steps", str(args.steps), "--lr", str(recipe["lr"]), "--batch-size", str(recipe["batch_size"]),
             "--option", f"anchor_images={args.anchor_images}", "--checkpoint-every", str(max(1000, args.steps + 1)),
             "--out", str(delta), "--workdir", str(work / "ours.work")]
    print("ours: erasure " + " ".join(shlex.quote(c) for c in flags), flush=True)
    res = timed(cli + flags, work / "ours.log", env, None, {})
    found = re.search(r"([\d.]+) s/step \(pools ([\d.]+) s\)", res["log"].replace("\n", " "))
    per_step, pool = (float(found.group(1)), float(found.group(2))) if found else (None, None)
    return {"wall_s": res["wall_s"], "flags": flags, "seconds_anchor_images": pool,
            "seconds_training": per_step * args.steps if per_step is not None else None,
            "phase_note": "anchor images: the CLI's pool time (anchor images, then the frozen model's targets on "
                          "them); training: steps x its s/step; the rest of the wall time is start-up, model "
                          "load and saving",
            "weights": str(delta), "weights_format": "safetensors delta"}


def load_official(pipe, path: Path) -> int:
    from safetensors.torch import load_file

    state = load_file(str(path))
    params = dict(pipe.unet.named_parameters())
    unknown = [k for k in state if k not in params or params[k].shape != state[k].shape]
    if unknown or not state:
        raise SystemExit(f"{path}: {len(unknown)} tensors do not fit the miniworld UNet, e.g. {unknown[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)
    return len(state)


def measure(args, official: dict | None, ours: dict | None) -> dict:
    from erasure.delta import apply_delta, load_delta
    from erasure.models import load_pipeline

    probes = Probes(args.n)
    keys = ROW["target"] + (ROW["neighbours"] if args.all_probes else [p for p in ROW["neighbours"] if p[1] == ANCHOR])
    out = {"base": probes.measure(load_pipeline(), keys)}
    if official:
        pipe = load_pipeline()
        official["tensors_loaded"] = load_official(pipe, Path(official["weights"]))
        out["official"] = probes.measure(pipe, keys)
    if ours:
        pipe = load_pipeline()
        tensors, meta = load_delta(Path(ours["weights"]))
        apply_delta(pipe, tensors, meta, None)
        ours["tensors_loaded"] = len(tensors)
        out["ours"] = probes.measure(pipe, keys)
    return out


def report(rec: dict) -> str:
    s = rec["settings"]
    toy = s["steps"] != 200 or s["anchor_images"] != 128
    f = (lambda v: "-" if v is None else f"{v:.1f}")
    keys = list(rec["presence"]["base"])
    names = [k.split(":", 1)[1] for k in keys]
    lines = ["# Concept Ablation: the official implementation against ours", "",
             f"Generated by `python benchmarks/ca_official.py` on {rec['date']}: {TARGET} onto the {ANCHOR} on "
             f"the miniworld, {s['steps']} steps, {s['anchor_images']} anchor images, lr {s['lr']}, batch "
             f"{s['batch_size']}, {rec['threads']} threads, load average {rec['loadavg_start']:.2f} at start. "
             f"Presence: the miniworld detector on {s['n']} images per probe (held-out templates)."
             + (" **Toy sizes: not the issue's measurement.**" if toy else ""), "",
             "| run | wall s | anchor images s | training s | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(names),
             "| base model | - | - | - | " + " | ".join(f"{rec['presence']['base'][k]:.2f}" for k in keys) + " |"]
    for who, label in (("official", "official (diffusers/train.py)"), ("ours", "ours (erasure erase)")):
        r = rec.get(who)
        if r:
            lines.append(f"| {label} | {r['wall_s']:.1f} | {f(r['seconds_anchor_images'])} | "
                         f"{f(r['seconds_training'])} | "
                         + " | ".join(f"{rec['presence'][who][k]:.2f}" for k in keys) + " |")
    if rec.get("ratio") is not None:
        lines += ["", f"Wall time ours / official: **{rec['ratio']:.3f}** (issue 19 asks <= 0.5 at equal efficacy)."]
    if rec.get("official"):
        o = rec["official"]
        lines += ["", f"Official code: {rec['official_source']}, run through the launcher in "
                  "benchmarks/ca_official.py (its docstring: torchvision transforms without the C++ ops, "
                  "`CLIPFeatureExtractor` alias, the loss mask on the 2x latent grid), with "
                  f"`{rec['official_python_versions']}`. Flags: `train.py {' '.join(shlex.quote(x) for x in o['flags'])}`. "
                  f"Phases: {o['phase_note']}. Weights: {o['weights_format']} ({o['tensors_loaded']} tensors)."]
    if rec.get("ours"):
        lines += ["", f"Ours: `erasure {' '.join(shlex.quote(x) for x in rec['ours']['flags'])}`. "
                  f"Phases: {rec['ours']['phase_note']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from erasure.miniworld.recipes import recipe as lookup

    base = lookup("ca", "instance")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", type=Path, default=Path("/work/exp/concept-ablation"),
                    help="checkout of github nupurkmr9/concept-ablation")
    ap.add_argument("--official-python", type=Path, default=Path(sys.executable),
                    help="interpreter for the official script (needs torchvision and openai importable)")
    ap.add_argument("--official-extra", default="", help="more flags for their train.py (last wins)")
    ap.add_argument("--steps", type=int, default=base["steps"])
    ap.add_argument("--anchor-images", type=int, default=base["options"]["anchor_images"])
    ap.add_argument("--n", type=int, default=64, help="images per probe")
    ap.add_argument("--all-probes", action="store_true",
                    help="also read the other instances (Bobo, Zuzu), as the methods benchmark's row does")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    ap.add_argument("--skip-official", action="store_true")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for ca_official.md / .json")
    ap.add_argument("--workdir", type=Path, default=None, help="kept when given (default: a temporary one)")
    args = ap.parse_args()
    args.official = args.official.resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a terminated run still removes its work folder
    torch.set_num_threads(args.threads)
    recipe = {"lr": base["lr"], "batch_size": base["batch_size"]}
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ca-official-"))
    if args.workdir:
        shutil.rmtree(work, ignore_errors=True)  # a fresh run: their script reuses anchor images it finds
        work.mkdir(parents=True)
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                        "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "true",
                        "MLFLOW_DISABLE_TELEMETRY": "true"}
    rec = {"date": time.strftime("%Y-%m-%d %H:%M"), "threads": args.threads, "loadavg_start": os.getloadavg()[0],
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "settings": {"steps": args.steps, "anchor_images": args.anchor_images, "n": args.n, **recipe}}
    try:
        official = ours = None
        if not args.skip_official:
            export = work / "miniworld-diffusers"
            geo = export_miniworld(export)
            prompts, caption_target = anchor_prompts(args.anchor_images)
            commit = args.official / "COMMIT"
            rec["official_source"] = ("github nupurkmr9/concept-ablation @ " + commit.read_text().strip()[:12]
                                      if commit.is_file() else str(args.official))
            rec["official_python_versions"] = subprocess.run(
                [str(args.official_python), "-c", "import importlib.metadata as m; print(', '.join("
                 "f'{p} {m.version(p)}' for p in ('torch', 'torchvision', 'diffusers', 'transformers', "
                 "'accelerate')))"], capture_output=True, text=True, env=env).stdout.strip()
            official = run_official(args, work, export, geo, prompts, caption_target, recipe, env)
            print(f"official: {official['wall_s']:.1f} s", flush=True)
        if not args.skip_ours:
            ours = run_ours(args, work, recipe, env)
            print(f"ours: {ours['wall_s']:.1f} s", flush=True)
        rec["presence"] = measure(args, official, ours)
        rec["official"], rec["ours"] = official, ours
        rec["ratio"] = ours["wall_s"] / official["wall_s"] if official and ours else None
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    for r in (rec["official"], rec["ours"]):
        if r:
            r.pop("weights")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ca_official.json").write_text(json.dumps(rec, indent=1))
    text = report(rec)
    (args.results / "ca_official.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
