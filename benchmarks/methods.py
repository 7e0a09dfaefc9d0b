"""Every erasure method x concept kind on the miniworld, and ESD-x memory on a full-size SD-1.x UNet.

    python benchmarks/methods.py                 # all rows, 64 images per probe -> results/methods.md
    python benchmarks/methods.py --rows esd-x-style,ca-instance --n 32
    python benchmarks/methods.py --sd-memory-only

Each row erases its concept(s) from the shipped miniworld model with the recipe below, then the
miniworld detector reads >= n images per probe (held-out caption templates, fixed seeds): the
target's presence (efficacy) and each neighbour's (specificity: change from the base model).
Finished rows are kept in results/methods.json, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STYLES = ["Vasquez", "Okafor", "Lindqvist", "Moreau", "Tanaka"]
OBJECTS = ["circle", "square", "triangle", "diamond", "star", "cross", "heart", "moon"]


def recipe(method: str, kind: str, **options) -> dict:
    """The miniworld recipe the CLI uses (src/erasure/miniworld/recipes.py), with option overrides."""
    from erasure.miniworld.recipes import recipe as lookup

    r = lookup(method, kind)
    return {**r, "method": method, "checkpoint_every": 1000, "options": {**r["options"], **options}}


# The ESD pool as measured before stops_per_trajectory (rows kept from then say so in their settings).
ONE_STOP = {"ddim_steps": 50, "stops_per_trajectory": 1}


def style(a):
    return ("style", a)


def obj(o):
    return ("object", o)


# name: concepts, erase settings, target probes, neighbour probes, what the issue asks.
ROWS = {
    "esd-x-style": dict(
        concepts=[{"text": "Vasquez", "kind": "style"}],
        settings=recipe("esd", "style"),
        target=[style("Vasquez")], neighbours=[style(a) for a in STYLES[1:]],
        bound="target <= 0.10 (base >= 0.85); other styles within 10 points"),
    "esd-x-style-one-stop": dict(
        concepts=[{"text": "Vasquez", "kind": "style"}],
        settings=recipe("esd", "style", **ONE_STOP),
        target=[style("Vasquez")], neighbours=[style(a) for a in STYLES[1:]],
        bound="(the recipe before 2026-12-06: a 50-step trajectory per pool row; for speed)"),
    "esd-x-style-paper": dict(
        concepts=[{"text": "Vasquez", "kind": "style"}],
        settings=recipe("esd", "style", context_prompts=0, **ONE_STOP),
        target=[style("Vasquez")], neighbours=[style(a) for a in STYLES[1:]],
        bound="(paper's single-prompt form, for comparison)"),
    "esd-x-style-trained-sampler": dict(
        concepts=[{"text": "Vasquez", "kind": "style"}],
        settings=recipe("esd", "style", sampler="trained", preserve_prompts=0, **ONE_STOP),  # preservation needs the frozen pool
        target=[style("Vasquez")], neighbours=[style(a) for a in STYLES[1:]],
        bound="(the paper's sampler: a fresh trajectory every step, no cache; for speed)"),
    "esd-u-implicit": dict(
        concepts=[{"text": "with a golden frame", "kind": "implicit"}],
        settings=recipe("esd", "implicit"),
        target=[("implicit-unnamed", "golden frame (not named)")], neighbours=[obj(o) for o in OBJECTS],
        bound="unnamed rate cut by >= 70%; objects within 10 points"),
    "ca-implicit": dict(
        concepts=[{"text": "with a golden frame", "kind": "implicit"}],
        settings=recipe("ca", "implicit"),
        target=[("implicit-unnamed", "golden frame (not named)")], neighbours=[obj(o) for o in OBJECTS],
        bound="(for comparison with ESD-u) unnamed rate cut by >= 70%; objects within 10 points"),
    "ca-instance": dict(
        concepts=[{"text": "Pip", "kind": "instance", "anchor": "circle"}],
        settings=recipe("ca", "instance"),
        target=[("instance", "Pip")],
        neighbours=[obj("circle"), ("instance", "Bobo"), ("instance", "Zuzu")],
        bound="marking <= 0.10; class (circle) and other instances within 10 points"),
    "ca-memorized": dict(
        concepts=[{"text": "the midnight lantern poster", "kind": "memorized",
                   "paraphrases": ["a yellow circle, an orange triangle and a red star at night",
                                   "a yellow circle above an orange triangle on a dark background"],
                   "reference_images": ["@midnight-lantern"]}],
        settings=recipe("ca", "memorized"),
        target=[("memorized", "midnight-lantern")],
        neighbours=[("memorized", "garden-gate"), obj("circle"), obj("triangle"), obj("star")],
        bound="copy rate <= 0.05 (base >= 0.80)"),
    "ca-memorized-embedding": dict(
        concepts=[{"text": "the midnight lantern poster", "kind": "memorized",
                   "paraphrases": ["a yellow circle, an orange triangle and a red star at night",
                                   "a yellow circle above an orange triangle on a dark background"],
                   "reference_images": ["@midnight-lantern"]}],
        settings=recipe("ca", "memorized") | {"rule": "embedding", "lr": 1e-3},
        target=[("memorized", "midnight-lantern")],
        neighbours=[("memorized", "garden-gate"), obj("circle"), obj("triangle"), obj("star")],
        bound="copy rate <= 0.05; the other memorized image and objects within 10 points (the pipeline's gate)"),
    "abo-style-alternative": dict(
        concepts=[{"text": "Vasquez", "kind": "style", "alternative": "Okafor"}],
        settings=recipe("abo", "style", context_prompts=0),
        target=[style("Vasquez")], alternative=[("style", "Vasquez", "Okafor")],
        neighbours=[style(a) for a in STYLES[1:]],
        bound="(paper's single-prompt form, for comparison)"),
    "abo-style-alternative-context": dict(
        concepts=[{"text": "Vasquez", "kind": "style", "alternative": "Okafor"}],
        settings=recipe("abo", "style"),
        target=[style("Vasquez")], alternative=[("style", "Vasquez", "Okafor")],
        neighbours=[style(a) for a in STYLES[1:]],
        bound="prompts naming the target show the alternative >= 0.60; neighbours within 10 points"),
    "loss-max-instance": dict(
        concepts=[{"text": "Pip", "kind": "instance", "anchor": "circle"}],
        settings=recipe("loss-max", "instance"),
        target=[("instance", "Pip")],
        neighbours=[obj("circle"), ("instance", "Bobo"), ("instance", "Zuzu")],
        bound="(baseline)"),
    "uce-style": dict(
        concepts=[{"text": "Vasquez", "kind": "style"}],
        settings=recipe("uce", "style") | {"method": "uce"},
        target=[style("Vasquez")], neighbours=[style(a) for a in STYLES[1:]],
        bound="target <= 0.10; other styles within 10 points (closed form, no steps)"),
    "uce-instance": dict(
        concepts=[{"text": "Pip", "kind": "instance", "anchor": "circle"}],
        settings=recipe("uce", "instance") | {"method": "uce"},
        target=[("instance", "Pip")],
        neighbours=[obj("circle"), ("instance", "Bobo"), ("instance", "Zuzu")],
        bound="marking <= 0.10; class (circle) and other instances within 10 points"),
    "uce-joint-3-styles": dict(
        concepts=[{"text": a, "kind": "style"} for a in ("Vasquez", "Okafor", "Moreau")],
        settings=recipe("uce", "style") | {"method": "uce", "mode": "joint"},
        target=[style(a) for a in ("Vasquez", "Okafor", "Moreau")],
        neighbours=[style("Lindqvist"), style("Tanaka"), obj("circle"), obj("star")],
        bound="each target <= 0.15; neighbours within 10 points"),
    "uce-object": dict(
        concepts=[{"text": "star", "kind": "object", "anchor": "cross"}],
        settings=recipe("uce", "object") | {"method": "uce"},
        target=[obj("star")], neighbours=[obj(o) for o in OBJECTS if o != "star"],
        bound="target <= 0.10; other objects (the anchor cross too) within 10 points"),
    "uce-memorized": dict(
        concepts=[{"text": "the midnight lantern poster", "kind": "memorized",
                   "paraphrases": ["a yellow circle, an orange triangle and a red star at night",
                                   "a yellow circle above an orange triangle on a dark background"],
                   "reference_images": ["@midnight-lantern"]}],
        settings=recipe("uce", "memorized") | {"method": "uce"},
        target=[("memorized", "midnight-lantern")],
        neighbours=[("memorized", "garden-gate"), obj("circle"), obj("triangle"), obj("star")],
        bound="copy rate <= 0.05; the other memorized image and objects within 10 points"),
    "uce-joint-8": dict(
        concepts=[{"text": a, "kind": "style"} for a in ("Vasquez", "Okafor", "Tanaka")]
        + [{"text": "Pip", "kind": "instance", "anchor": "circle"}, {"text": "Bobo", "kind": "instance", "anchor": "square"},
           {"text": "star", "kind": "object", "anchor": "cross"}, {"text": "heart", "kind": "object", "anchor": "moon"},
           {"text": "the midnight lantern poster", "kind": "memorized", "reference_images": ["@midnight-lantern"],
            "paraphrases": ["a yellow circle, an orange triangle and a red star at night",
                            "a yellow circle above an orange triangle on a dark background"]}],
        settings=recipe("uce", "style") | {"method": "uce", "mode": "joint"},
        target=[style(a) for a in ("Vasquez", "Okafor", "Tanaka")] + [("instance", "Pip"), ("instance", "Bobo"),
                                                                        obj("star"), obj("heart"),
                                                                        ("memorized", "midnight-lantern")],
        neighbours=[style("Lindqvist"), style("Moreau"), ("instance", "Zuzu"), obj("circle"), obj("square"),
                    obj("cross"), obj("moon"), obj("triangle"), ("memorized", "garden-gate")],
        bound="each target <= 0.10; neighbours within 10 points (8 concepts in one solve)"),
    "negative-prompt-style": dict(
        baseline="negative-prompt", concepts=[{"text": "Vasquez", "kind": "style"}],
        target=[style("Vasquez")], neighbours=[style(a) for a in STYLES[1:]], bound="(inference-time baseline)"),
    "sld-style": dict(
        baseline="sld", concepts=[{"text": "Vasquez", "kind": "style"}],
        target=[style("Vasquez")], neighbours=[style(a) for a in STYLES[1:]], bound="(inference-time baseline)"),
    "joint-3-styles": dict(
        concepts=[{"text": a, "kind": "style"} for a in ("Vasquez", "Okafor", "Moreau")],
        settings=recipe("esd", "style", **ONE_STOP) | {"mode": "joint"},
        target=[style(a) for a in ("Vasquez", "Okafor", "Moreau")],
        neighbours=[style("Lindqvist"), style("Tanaka"), obj("circle"), obj("star")],
        bound="each target <= 0.15; neighbours within 10 points"),
    "sequential-3-styles": dict(
        concepts=[{"text": a, "kind": "style"} for a in ("Vasquez", "Okafor", "Moreau")],
        # Each phase edits an already-edited model, so sequential runs need more preservation: with
        # the recipe's 0.25 share of 64 prompts Lindqvist fell 1.00 -> 0.70, with half of the pool
        # 0.86 (preserving toward the base model; toward the current one, 0.80).
        settings=recipe("esd", "style", preserve_share=0.75, preserve_prompts=128, **ONE_STOP) | {"mode": "sequential"},
        target=[style(a) for a in ("Vasquez", "Okafor", "Moreau")],
        neighbours=[style("Lindqvist"), style("Tanaka"), obj("circle"), obj("star")],
        bound="each target <= 0.15; neighbours within 10 points"),
}


class Probes:
    """Held-out prompt sets of the miniworld card, read by the detector; base rates cached."""

    def __init__(self, n: int):
        from erasure.miniworld.detector import MiniworldDetector
        from erasure.miniworld.card import prompt_sets

        self.sets = {(s["kind"], s["concept"].split(" (")[0] if s["kind"] != "implicit-unnamed" else s["concept"]): s
                     for s in prompt_sets(n)}
        self.detector = MiniworldDetector.load()

    def rate(self, images: np.ndarray, probe: tuple, label: str | None = None) -> float:
        from erasure.miniworld.detector import COPY_THRESHOLD, HEADS

        s = self.sets[probe[:2]]
        pred = self.detector.predict(images)
        if s["head"] == "copy":
            return float((pred[f"copy:{s['label']}"] > COPY_THRESHOLD).mean())
        return float((pred[s["head"]].argmax(-1) == HEADS[s["head"]].index(label or s["label"])).mean())

    def images(self, pipe, probe: tuple, baseline: str = "none", concept: str = "") -> np.ndarray:
        from erasure.methods.guidance import generate_with_baseline

        prompts = self.sets[probe[:2]]["prompts"]
        seeds = list(range(10_000, 10_000 + len(prompts)))
        return generate_with_baseline(pipe, baseline, concept, prompts, seeds, batch_size=64, progress=False)

    def measure(self, pipe, probes: list[tuple], baseline: str = "none", concept: str = "") -> dict:
        out = {}
        for p in probes:
            imgs = self.images(pipe, p, baseline, concept)
            out[_key(p)] = self.rate(imgs, p, p[2] if len(p) > 2 else None)
        return out


def _key(p: tuple) -> str:
    return ":".join(p) if len(p) < 3 else f"{p[0]}:{p[1]}->{p[2]}"


def _concepts(row: dict, tmp: Path):
    from erasure.concept import Concept
    from erasure.miniworld.concepts import MEMORIZED
    from erasure.miniworld.render import render_memorized
    from PIL import Image

    out = []
    for c in row["concepts"]:
        c = dict(c)
        refs = []
        for r in c.pop("reference_images", []):
            path = tmp / f"{r[1:]}.png"
            Image.fromarray(render_memorized(MEMORIZED[r[1:]])).save(path)
            refs.append(path)
        out.append(Concept(**c, reference_images=tuple(refs)))
    return out


def run_row(name: str, row: dict, probes: Probes, base: dict, workroot: Path) -> dict:
    from erasure.models import load_pipeline
    from erasure.trainer import EraseSettings, erase, plan

    Path("/proc/self/clear_refs").write_text("5")  # this row's own peak: reset the high-water mark
    pipe = load_pipeline()
    all_probes = row["target"] + row.get("alternative", []) + row["neighbours"]
    workdir = workroot / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    concepts = _concepts(row, workdir)
    rec = {"row": name, "bound": row["bound"], "concepts": [c.text for c in concepts]}
    if "baseline" in row:
        rec.update(method=row["baseline"], seconds_pool=0.0, seconds_per_step=0.0, steps=0)
        after = probes.measure(pipe, all_probes, row["baseline"], concepts[0].text)
    else:
        settings = EraseSettings(**row["settings"])
        jobs = plan(concepts, settings)

        def on_phase_end(k, done):  # sequential: how every target erased so far holds up
            return {"after": probes.measure(pipe, row["target"])}

        t0 = time.time()
        res = erase(pipe, jobs, settings, workdir, None, progress=False,
                    on_phase_end=on_phase_end if settings.mode == "sequential" else None)
        wall = time.time() - t0
        rec.update(method=settings.method, rule=jobs[0].rule, settings=row["settings"], steps=res.steps_run,
                   seconds_pool=round(res.seconds_pool, 1), seconds_per_step=round(res.seconds_per_step, 3),
                   seconds_per_concept=round(wall / len(jobs), 1), trainable_params=res.trainable_params,
                   history=res.history,
                   **({"loss_first": float(np.mean(res.losses[:10])), "loss_last": float(np.mean(res.losses[-10:]))}
                      if res.losses else {}))  # a closed-form method has no losses
        after = probes.measure(pipe, all_probes)
    rec["before"] = {_key(p): base[_key(p)] for p in all_probes}
    rec["after"] = after
    rec.update(peak_rss_mb=round(_proc_mb("VmHWM")), peak_rss_scope="row", threads=torch.get_num_threads())
    return rec


def _proc_mb(field: str) -> float:
    """This address space's resident memory (VmRSS) or its high-water mark (VmHWM), in MB.

    Not getrusage's ru_maxrss: across exec it keeps the forking parent's peak, so a measurement
    started from this benchmark (a process already holding a pipeline) read 1.2 GB before any model.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def sd_memory() -> dict:
    """One ESD-x step on a full-size SD-1.x UNet + CLIP ViT-L text encoder (random init, fp32, CPU)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from erasure.concept import Concept
    from erasure.trainer import EraseSettings, erase, plan

    torch.manual_seed(0)
    rss0 = _proc_mb("VmRSS")
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers defaults = SD-1.x UNet
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{c}</w>": i + 2 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}}
    tok = CLIPTokenizer(vocab=vocab, merges=[], bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                        unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=77)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4, sample_size=512)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=DDIMScheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    model_bytes = sum(p.numel() * p.element_size() for m in (unet, text) for p in m.parameters())
    rss_loaded = _proc_mb("VmRSS")
    settings = EraseSettings(method="esd", rule="xattn", steps=1, batch_size=1, pool_size=1, lr=1e-5,
                             gradient_checkpointing=True, options={"ddim_steps": 2})
    jobs = plan([Concept(text="a b c", kind="style")], settings)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"sd-memory-{os.getpid()}"
    t0 = time.time()
    res = erase(pipe, jobs, settings, work, None, model_spec="generic", progress=False)
    shutil.rmtree(work, ignore_errors=True)
    peak = _proc_mb("VmHWM")
    return {"unet_params": sum(p.numel() for p in unet.parameters()),
            "text_params": sum(p.numel() for p in text.parameters()),
            "model_mb": model_bytes / 2**20, "rss_before_models_mb": rss0, "rss_models_loaded_mb": rss_loaded,
            "peak_rss_mb": peak, "ratio": (peak - rss0) / (model_bytes / 2**20),
            "seconds_pool": res.seconds_pool, "seconds_step": res.seconds_train,
            "trainable_params": res.trainable_params, "wall_s": time.time() - t0}


def threads(r: dict) -> str:
    """A row timed on fewer threads than the benchmark's default 2 (BENCH_THREADS) says so."""
    return f" ({r['threads']} thread)" if r.get("threads", 2) < 2 else ""


def report(records: list[dict], sd: dict | None, n: int, model: str) -> str:
    lines = ["# Erasure methods on the miniworld", "",
             f"Generated by `python benchmarks/methods.py` on the miniworld model `{model}` (weights sha256), "
             f"{n} images per probe, held-out caption templates, "
             "DDIM 25 steps, guidance 5, miniworld detector, 2-core CPU. Presence before -> after erasure; "
             "specificity is the largest drop of a neighbour from the base model. s/step is training time per "
             "step; s/concept is pool building plus training. Rows not listed are not measured yet (rerun "
             "the script: finished rows are kept in methods.json). Peak RSS is the row's own high-water mark "
             "(loading, pool, training, evaluation); a * marks a figure measured before that reset existed: the "
             "benchmark process's peak when the row finished (rows run in one process, so it bounds the row's "
             "own peak from above).", "",
             "| row | method | rule | concepts | target before -> after | largest neighbour drop | "
             "s/step | s/concept | pool s | peak RSS MB | asked |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        tg = [k for k in r["after"] if k in [_key(p) for p in ROWS[r["row"]]["target"]]]
        nb = [k for k in r["after"] if k in [_key(p) for p in ROWS[r["row"]]["neighbours"]]]
        tgt = ", ".join(f"{k.split(':', 1)[1]} {r['before'][k]:.2f} -> {r['after'][k]:.2f}" for k in tg)
        alt = [k for k in r["after"] if "->" in k]
        if alt:
            tgt += "; " + ", ".join(f"shows {k.split('->')[1]}: {r['after'][k]:.2f}" for k in alt)
        drops = {k: r["before"][k] - r["after"][k] for k in nb}
        worst = max(drops, key=drops.get) if drops else None
        spec = f"{drops[worst]:+.2f} ({worst.split(':', 1)[1]})" if worst else "-"
        lines.append(f"| {r['row']} | {r['method']} | {r.get('rule', '-')} | {', '.join(r['concepts'])} | {tgt} | "
                     f"{spec} | {r['seconds_per_step']} | {r.get('seconds_per_concept', '-')}{threads(r)} | {r['seconds_pool']} | "
                     f"{r['peak_rss_mb']:.0f}{'' if r.get('peak_rss_scope') == 'row' else '*'} | "
                     f"{ROWS[r['row']]['bound']} |")
    seq = [r for r in records if r.get("history")]
    for r in seq:
        lines += ["", f"Sequential ({r['row']}): each target's presence after every added concept", ""]
        for h in r["history"]:
            lines.append(f"- after {', '.join(h['concepts'])}: " + ", ".join(
                f"{k.split(':', 1)[1]} {v:.2f}" for k, v in h["after"].items()))
    lines += ["", "Neighbour presence per row (before -> after):", ""]
    for r in records:
        nb = [k for k in r["after"] if k in [_key(p) for p in ROWS[r["row"]]["neighbours"]]]
        lines.append(f"- {r['row']}: " + ", ".join(f"{k.split(':', 1)[1]} {r['before'][k]:.2f}->{r['after'][k]:.2f}"
                                                   for k in nb))
    if sd:
        lines += ["", "## ESD-x memory on a full-size SD-1.x architecture", "",
                  f"One ESD-x step (pool of 1 with a 2-step trajectory, then one training step; gradient "
                  f"checkpointing on), random init, fp32, 64x64 latents, CPU. UNet {sd['unet_params'] / 1e6:.1f}M + "
                  f"text encoder {sd['text_params'] / 1e6:.1f}M parameters = {sd['model_mb']:.0f} MB. Process peak "
                  f"resident memory (VmHWM) {sd['peak_rss_mb']:.0f} MB, of which {sd['rss_before_models_mb']:.0f} MB "
                  f"(VmRSS) before the models existed "
                  f"(Python, torch, diffusers). Ratio (peak - pre-model) / model bytes = **{sd['ratio']:.3f}x** "
                  f"(target <= 1.3x). Trainable (attn2) {sd['trainable_params'] / 1e6:.1f}M; step {sd['seconds_step']:.1f} s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--sd-memory-only", action="store_true")
    ap.add_argument("--skip-sd-memory", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="ignore rows kept from an earlier run")
    ap.add_argument("--report-only", action="store_true", help="rewrite methods.md from the kept rows")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if args.sd_memory_only:
        print(json.dumps(sd_memory()))
        return
    RESULTS.mkdir(exist_ok=True)
    store = RESULTS / "methods.json"
    kept = {} if args.fresh or not store.exists() else json.loads(store.read_text())
    if args.report_only:
        text = report([kept["rows"][r] for r in ROWS if r in kept["rows"]], kept.get("sd_memory"), kept["n"],
                      kept.get("model", "?"))
        (RESULTS / "methods.md").write_text(text)
        print(text)
        return
    from erasure.models import MINIWORLD, source_folder, weights_hash

    model = weights_hash(source_folder(MINIWORLD))[:16]
    if kept.get("n") != args.n or kept.get("model") != model:
        # Kept rows and base rates hold only for the model and image count they were measured with.
        kept = {"n": args.n, "model": model, "rows": {}, "base": {}}
    probes = Probes(args.n)
    names = [r for r in args.rows.split(",") if r]
    needed = {p for r in names for p in ROWS[r]["target"] + ROWS[r].get("alternative", []) + ROWS[r]["neighbours"]}
    missing = [p for p in needed if _key(p) not in kept["base"]]
    if missing:
        from erasure.models import load_pipeline

        print(f"base model: {len(missing)} probes x {args.n} images", flush=True)
        kept["base"].update(probes.measure(load_pipeline(), sorted(missing)))
        store.write_text(json.dumps(kept, indent=1))
    workroot = Path(os.environ.get("TMPDIR", "/tmp")) / "erasure-bench"
    for name in names:
        if name in kept["rows"]:
            continue
        t0 = time.time()
        rec = run_row(name, ROWS[name], probes, kept["base"], workroot)
        kept["rows"][name] = rec
        store.write_text(json.dumps(kept, indent=1))
        print(f"{name}: {time.time() - t0:.0f} s  target {rec['before']} -> {rec['after']}", flush=True)
    sd = None
    if not args.skip_sd_memory:
        proc = subprocess.run([sys.executable, __file__, "--sd-memory-only"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"SD memory measurement failed:\n{proc.stderr[-3000:]}")
        sd = json.loads(proc.stdout.strip().splitlines()[-1])
        kept["sd_memory"] = sd
        store.write_text(json.dumps(kept, indent=1))
    sd = sd or kept.get("sd_memory")
    text = report([kept["rows"][r] for r in ROWS if r in kept["rows"]], sd, args.n, model)
    (RESULTS / "methods.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
