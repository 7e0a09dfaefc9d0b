"""Measure the shipped miniworld model and detector; print the card and write it as markdown.

    .venv/bin/python benchmarks/miniworld_card.py [--n 64] [--steps 25] [--out benchmarks/results/miniworld_card.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from erasure.miniworld.detector import COPY_THRESHOLD, MiniworldDetector  # noqa: E402
from erasure.miniworld.detector_train import calibrate_copy_threshold, measure as detector_accuracy  # noqa: E402
from erasure.miniworld import card  # noqa: E402
from erasure.models import MINIWORLD_PATH, load_pipeline, weights_hash  # noqa: E402
from erasure.sampling import grid  # noqa: E402


def training_time(path: Path) -> str:
    log = path / "train_log.json"
    if not log.exists():
        return "no training log shipped"
    entries = json.loads(log.read_text())
    by_phase: dict[str, float] = {}
    steps: dict[str, int] = {}
    for e in entries:
        by_phase[e["phase"]] = by_phase.get(e["phase"], 0.0) + e.get("seconds", 0.0)
        steps[e["phase"]] = max(steps.get(e["phase"], 0), e.get("step", 0))
    total = sum(by_phase.values())
    parts = ", ".join(f"{p} {steps[p]} steps {s / 60:.0f} min" for p, s in by_phase.items())
    return f"{total / 3600:.2f} h of training wall time ({parts})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="images per concept")
    ap.add_argument("--steps", type=int, default=card.DEFAULT_STEPS, help="DDIM steps per image")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/miniworld_card.md"))
    ap.add_argument("--grid", type=Path, default=Path("benchmarks/results/miniworld_card.png"))
    ap.add_argument("--detector-images", type=int, default=2000,
                    help="fresh procedural images for the detector's accuracy and the copy calibration")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 2)

    det = MiniworldDetector.load()
    t0 = time.time()
    acc = detector_accuracy(det.net, count=args.detector_images)
    copy_cal = calibrate_copy_threshold(count=args.detector_images)
    pipe = load_pipeline("miniworld")
    result = card.measure(pipe, det, n=args.n, steps=args.steps)
    verdicts = card.verdicts(result["rows"])

    lines = ["# Miniworld model card (measured)", "",
             f"- model: `{MINIWORLD_PATH.name}` weights sha256 `{weights_hash(MINIWORLD_PATH)[:16]}`",
             f"- machine: {platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}",
             f"- sampling: DDIM {result['steps']} steps, guidance {result['guidance']}, "
             f"{result['images']} images, **{result['seconds_per_image'] * 1000:.0f} ms per image** "
             "(batches of 64, CPU)",
             f"- training: {training_time(MINIWORLD_PATH)}",
             f"- copy threshold: similarity > {COPY_THRESHOLD}", "",
             f"## Detector accuracy ({args.detector_images:,} fresh augmented procedural images)", "",
             "| head | accuracy |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in acc.items() if k != "seconds"]
    lines += ["", f"Copy similarity calibration (200 augmented copies vs {args.detector_images:,} world images):", "",
              "| memorized | copies min | copies p05 | world p99 | world max |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {r['copies_min']:.3f} | {r['copies_p05']:.3f} | {r['world_p99']:.3f} | {r['world_max']:.3f} |"
              for k, r in copy_cal.items()]
    lines += ["", "## Presence of each concept in generated images (held-out templates)", "",
              "| kind | concept | n | present | example prompt |", "|---|---|---|---|---|"]
    lines += [f"| {r['kind']} | {r['concept']} | {r['n']} | {r['present']:.3f} | {r['example_prompt']} |"
              for r in result["rows"]]
    lines += ["", "## Acceptance", "", "| check | measured | bound | pass |", "|---|---|---|---|"]
    lines += [f"| {name} | {v:.3f} | {b} | {'yes' if ok else 'NO'} |" for name, v, b, ok in verdicts]
    lines += ["", f"All checks pass: **{'yes' if all(v[3] for v in verdicts) else 'no'}**. "
              f"Benchmark wall time {time.time() - t0:.0f} s.", ""]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    # One row of 8 samples per probe, for looking at.
    imgs, at, rows = result["images_array"], 0, []
    for r in result["rows"]:
        rows.append(imgs[at:at + 8])
        at += r["n"]
    import numpy as np

    grid(np.concatenate(rows), cols=8, zoom=2).save(args.grid)


if __name__ == "__main__":
    main()
