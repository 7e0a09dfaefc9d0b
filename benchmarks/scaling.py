"""How erasure holds up as the blocklist grows: k concepts in two orders and jointly, and night by night.

    python benchmarks/scaling.py                                # UCE, k = 1, 3, 5, 10, 17, 20 -> results/scaling.*
    python benchmarks/scaling.py --ks 1,3,10 --modes sequential-a,joint --n 64
    python benchmarks/scaling.py --method esd --ks 1,3        # a trained method (the miniworld recipes)
    python benchmarks/scaling.py --report-only                  # tables and plots from the kept rows
    python benchmarks/scaling.py --cost --ks 1,10 --modes sequential-a,joint   # the erase calls alone, timed

k concepts are the first k of one seeded draw of the miniworld's erasable concepts (nested: the 3 are
among the 5), erased from the shipped model sequentially in the draw's order (sequential-a), in a second
seeded order (sequential-b), and in one run (joint). Then the miniworld detector reads n images per
probe (held-out caption templates, fixed seeds): each target's presence, each concept left on the list
as a neighbour (its drop from the base model), and FID and drift on prompts that name no drawn concept.
When the two orders end in the same weights, sequential-b reuses sequential-a's readings (the same
images) and its row says so (`same_weights_as`).
The continual scenario is sequential-a at k = --nights (10): one request a night, night i's release
erasing the first i concepts (erased with a phase cache, as the pipeline does: a night trains only
what it adds), and after every night each concept so far read again. Finished rows are kept in
results/scaling.json (an interrupted run resumes); `--mlflow` logs each row to the project's tracking
store as a run of experiment "scaling".

The miniworld has 25 concepts (8 objects, 6 colours, 5 styles, 3 instances, 2 memorized images, the
implicit frame); UCE cannot erase the unnamed frame, so UCE draws from 24, trained methods from all 25.
An object is mapped onto an object not drawn and a colour (kind `attribute`) onto a colour not drawn, so
the largest k is the last that leaves one of each. The draw: one seeded order of every concept but the
colours, with the colours in a seeded order of their own placed before that order's last object (the
colours joined the pool after the rows k <= 17 were measured: those rows draw what they drew before, and
their neighbours include no colour). For UCE the last object is the diamond, the order's last concept:
k = 20 is the first 17 and three colours, and the largest k is 22 (one colour left); for CA, the square:
k = 20 is the first 18 and two colours. CA erases
every kind in the draw; ESD's recipes erase inside scenes (context_prompts), which for an object, an
instance or a colour must come as the blocklist's anchor_prompts, and this draw gives none: for those
kinds ESD runs its paper form (the bare name, no context prompts). ESD takes no anchor, so an instance's
class is dropped; a memorized image (ESD has no recipe for it) takes the objects' recipe in the same paper
form (its caption). All-but-One (`--method abo`) is run as ESD is: no anchor and no alternative (the
guidance toward the concept removed), its miniworld recipe (200 steps, in scenes) for styles, the paper
form for objects, instances, colours and the memorized images, and for the unnamed frame, which has no
recipe, the same schedule in scenes on every UNet weight but the cross-attention (`noxattn`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods import Probes, _concepts, _key, _proc_mb  # noqa: E402  (the methods benchmark's probes)

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("sequential-a", "sequential-b", "joint")
NO_ANCHOR = ("esd", "loss-max", "abo")  # methods that map a concept onto no anchor (All-but-One: no alternative here)


def pool(method: str) -> list[dict]:
    """The miniworld's concepts a blocklist can name (objects and colours get their anchor per draw)."""
    return _first_pool(method) + colours()


def colours() -> list[dict]:
    from erasure.miniworld.concepts import COLORS

    return [{"text": c, "kind": "attribute"} for c in COLORS]


def _first_pool(method: str) -> list[dict]:
    """The concepts of the pool before colours joined it (the order `draw` keeps)."""
    from erasure.miniworld.concepts import INSTANCES, MEMORIZED, OBJECTS, STYLES

    out = [{"text": s, "kind": "style"} for s in STYLES]
    out += [{"text": name, "kind": "instance", "anchor": inst.object} for name, inst in INSTANCES.items()]
    out += [{"text": o, "kind": "object"} for o in OBJECTS]
    out += [{"text": m.caption, "kind": "memorized", "paraphrases": list(m.paraphrases),
             "reference_images": [f"@{key}"], "key": key} for key, m in MEMORIZED.items()]
    if method != "uce":
        out.append({"text": "with a golden frame", "kind": "implicit"})
    return out


def probe_of(c: dict) -> tuple:
    """The card's probe for a concept (methods.Probes keys)."""
    if c["kind"] == "memorized":
        return ("memorized", c["key"])
    if c["kind"] == "implicit":
        return ("implicit-unnamed", "golden frame (not named)")
    if c["kind"] == "attribute":
        return ("color", c["text"])
    return (c["kind"], c["text"])


def draw(method: str, k: int, seed: int, order: str) -> list[dict]:
    before = _first_pool(method)
    seq = random.Random(seed).sample(before, len(before))
    last = max(i for i, c in enumerate(seq) if c["kind"] == "object")  # the object left to map onto longest
    seq = seq[:last] + random.Random(seed + 2).sample(colours(), len(colours())) + seq[last:]
    first = seq[:k]
    return first if order == "a" else random.Random(seed + 1).sample(first, k)


def with_anchors(concepts: list[dict], pipe, method: str) -> list[dict]:
    """Objects onto the closest object not drawn, colours onto the closest colour not drawn (guidance
    directions, as the pipeline's anchors stage)."""
    from erasure.anchors import choose, guidance_embedder
    from erasure.miniworld.concepts import COLORS, OBJECTS

    drawn = {c["text"] for c in concepts}
    left = {"object": [o for o in OBJECTS if o not in drawn], "attribute": [c for c in COLORS if c not in drawn]}
    for kind, what in (("object", "object"), ("attribute", "colour")):
        if not left[kind] and any(c["kind"] == kind for c in concepts) and method not in NO_ANCHOR:
            raise SystemExit(f"k = {len(concepts)}: every {what} is on the list, none is left for a {what} to be "
                             "mapped onto; the largest k for this draw is the last that leaves one")
    embed = guidance_embedder(pipe)
    out = []
    for c in concepts:
        c = {k: v for k, v in c.items() if k != "key"}
        if method in NO_ANCHOR:  # they erase toward no anchor: an instance's class is dropped too
            c.pop("anchor", None)
        elif c["kind"] in left:
            c["anchor"] = choose(c["text"], c["kind"], method, anchor=None, paraphrases=[],
                                 candidates=left[c["kind"]], no_anchor_methods=list(NO_ANCHOR),
                                 embed=embed).anchor
        out.append(c)
    return out


def settings_for(method: str, mode: str, concepts: list[dict]):
    """The shipped params.yaml's recipe per kind (erasure.config.RECIPES, what the main job runs), else
    the miniworld's (src/erasure/miniworld/recipes.py); one EraseSettings for the run."""
    from erasure.concept import ANCHORED_KINDS
    from erasure.config import RECIPES
    from erasure.miniworld.recipes import recipe
    from erasure.trainer import EraseSettings

    overrides = []
    for c in concepts:
        r = RECIPES.get(f"{method}/{c['kind']}") or recipe(method, c["kind"])
        if method == "esd" and c["kind"] == "memorized" and not r:  # no recipe: the objects' (paper form below)
            r = RECIPES["esd/object"]
        if method == "abo" and not r:  # no recipe for a memorized image or the implicit frame: the named kinds'
            r = {**recipe("abo", "style"), "rule": "noxattn" if c["kind"] == "implicit" else "xattn"}
        if method in ("esd", "abo") and c["kind"] in (*ANCHORED_KINDS, "memorized") and r.get("options", {}).get("context_prompts"):
            # Its recipe erases inside scenes, which these kinds take as the blocklist's anchor_prompts and
            # the draw gives none: ESD's paper form (the bare name or caption) instead.
            r = {**r, "options": {**r["options"], "context_prompts": 0}}
        overrides.append({k: v for k, v in r.items() if k in ("rule", "steps", "lr", "batch_size", "pool_size",
                                                               "options")})
    settings = EraseSettings(method=method, mode="joint" if mode == "joint" else "sequential", seed=0,
                             checkpoint_every=1000)
    return settings, overrides


class Quality:
    """FID (the miniworld detector's features, to the world's true renders) and drift on generic prompts."""

    def __init__(self, n: int, base_pipe):
        self.n = n
        self.base = {}
        self.base_pipe = base_pipe

    def images(self, pipe, blocked: set[str]):
        from erasure.miniworld import probes
        from erasure.sampling import generate

        prompts, seeds, _ = probes.generic(self.n, 0, blocked)
        return generate(pipe, prompts, seeds, steps=25, guidance=5.0, progress=False)

    def measure(self, pipe, blocked: set[str], erased: set[str]) -> dict:
        from erasure.evaluate import drift
        from erasure.judges.miniworld import MiniworldJudge
        from erasure.miniworld import probes

        judge = MiniworldJudge()
        key = ",".join(sorted(blocked))
        if key not in self.base:
            self.base[key] = self.images(self.base_pipe, blocked)
        before, after = self.base[key], self.images(pipe, blocked)
        real = probes.generic(self.n, 0, blocked)[2]
        return {"fid_base": judge.fid(real, before), "drift": drift(before, after),
                "fid": judge.fid(probes.promised_renders(self.n, 0, blocked, erased), after)}


def weights_digest(pipe) -> str:
    """sha256 of the UNet's and text encoder's weights: two runs ending in the same weights draw the same images."""
    import hashlib

    h = hashlib.sha256()
    for part in (pipe.unet, pipe.text_encoder):
        for name, tensor in sorted(part.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_row(method: str, mode: str, k: int, args, probes: Probes, base: dict, quality: Quality,
            kept: dict) -> dict:
    from erasure.models import load_pipeline, source_folder, weights_hash, MINIWORLD
    from erasure.trainer import erase, plan

    Path("/proc/self/clear_refs").write_text("5")  # this row's own memory peak
    pipe = load_pipeline()
    drawn = draw(method, k, args.seed, "b" if mode == "sequential-b" else "a")
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "erasure-scaling" / f"{method}-{mode}-{k}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    spec = with_anchors(drawn, pipe, method)
    concepts = _concepts({"concepts": spec}, workdir)
    settings, overrides = settings_for(method, mode, spec)
    jobs = plan(concepts, settings, overrides=overrides)
    targets = [probe_of(c) for c in drawn]
    left = [probe_of(c) for c in pool(method) if c["text"] not in {d["text"] for d in drawn}]

    t0 = time.time()
    res = erase(pipe, jobs, settings, workdir / "run", None, progress=False)
    wall = time.time() - t0
    digest = weights_digest(pipe)
    twin = kept["rows"].get(f"{method}-sequential-a-{k}") if mode == "sequential-b" else None
    if twin and twin.get("weights") == digest:  # the same weights draw the same images: same readings
        after = {**twin["targets"], **twin["neighbours"]}
        q = {key: twin[key] for key in ("fid_base", "drift", "fid")}
    else:
        twin = None
        after = probes.measure(pipe, targets + left)
        blocked = {c.text for c in concepts}
        q = quality.measure(pipe, blocked, blocked)
    nights = []
    if mode == "sequential-a" and k == args.nights:  # the continual scenario: night i erases the first i
        base_hash = weights_hash(source_folder(MINIWORLD))
        for i in range(1, k + 1):
            night = load_pipeline()
            t1 = time.time()
            erase(night, plan(concepts[:i], settings, overrides=overrides[:i]), settings, workdir / f"night-{i}",
                  None, progress=False, base_hash=base_hash, phase_cache=workdir / "phases")
            nights.append({"night": i, "seconds": round(time.time() - t1, 1),
                           "after": probes.measure(night, targets[:i])})
            print(f"  night {i}: {nights[-1]}", flush=True)
    drops = {_key(p): base[_key(p)] - after[_key(p)] for p in left}
    worst = max(drops, key=drops.get) if drops else None
    return {"method": method, "mode": mode, "k": k, "concepts": [c.text for c in concepts],
            "anchors": {c["text"]: c.get("anchor") for c in spec},
            "targets": {_key(p): after[_key(p)] for p in targets},
            "targets_before": {_key(p): base[_key(p)] for p in targets},
            "neighbours": {_key(p): after[_key(p)] for p in left}, "worst_neighbour": worst,
            "worst_neighbour_drop": drops[worst] if worst else None, **q,
            "seconds": round(wall, 1), "seconds_per_concept": round(wall / k, 2), "steps": res.steps_run,
            "peak_rss_mb": round(_proc_mb("VmHWM")), "nights": nights, "weights": digest,
            "same_weights_as": f"{method}-sequential-a-{k}" if twin else None}


def cost(method: str, ks: list[int], modes: list[str], repeats: int) -> dict:
    """The erase call alone, per (k, mode): the best of `repeats` fresh runs in this process (each from the
    base model, in an empty work folder), after one warm-up run of k = 1. No images are drawn."""
    from erasure.models import load_pipeline
    from erasure.trainer import erase, plan

    out = {}
    warm = True
    for k in ks:
        for mode in modes:
            if k == 1 and mode != "sequential-a":
                continue
            times = []
            for rep in range(repeats + (1 if warm else 0)):
                pipe = load_pipeline()
                spec = with_anchors(draw(method, k, 0, "b" if mode == "sequential-b" else "a"), pipe, method)
                workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "erasure-scaling-cost" / f"{mode}-{k}"
                shutil.rmtree(workdir, ignore_errors=True)
                workdir.mkdir(parents=True)
                settings, overrides = settings_for(method, mode, spec)
                jobs = plan(_concepts({"concepts": spec}, workdir), settings, overrides=overrides)
                t0 = time.time()
                erase(pipe, jobs, settings, workdir / "run", None, progress=False)
                times.append(time.time() - t0)
            if warm:  # imports and first-call work are no concept's cost
                times, warm = times[1:], False
            out[f"{method}-{mode}-{k}"] = {"k": k, "mode": mode, "seconds": [round(t, 3) for t in times],
                                           "best": round(min(times), 3)}
            print(f"cost {method}-{mode}-{k}: {out[f'{method}-{mode}-{k}']['seconds']}", flush=True)
    return out


def report(rows: list[dict], n: int, costs: dict | None = None) -> str:
    lines = ["# Erasure as the blocklist grows (miniworld)", "",
             f"Generated by `python benchmarks/scaling.py`: {n} images per probe (held-out templates, DDIM 25, "
             "guidance 5), miniworld detector, 2-core CPU. Targets: the largest presence of any drawn concept "
             "(mean in brackets); neighbour: the largest drop of a concept left off the list; FID on generic "
             "prompts to the world's renders (base model in brackets); time: the erase call (per concept).", "",
             "| method | mode | k | worst target (mean) | worst neighbour drop | FID (base) | drift | s | s/concept | "
             "peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["method"], r["k"], MODES.index(r["mode"]))):
        t = list(r["targets"].values())
        nb = f"{r['worst_neighbour_drop']:+.2f} ({r['worst_neighbour'].split(':', 1)[1]})" if r["worst_neighbour"] else "-"
        lines.append(f"| {r['method']} | {r['mode']} | {r['k']} | {max(t):.2f} ({np.mean(t):.2f}) | {nb} | "
                     f"{r['fid']:.3f} ({r['fid_base']:.3f}) | {r['drift']:.3f} | {r['seconds']} | "
                     f"{r['seconds_per_concept']} | {r['peak_rss_mb']} |")
    by = {(r["method"], r["k"]): {} for r in rows}
    for r in rows:
        by[(r["method"], r["k"])][r["mode"]] = r
    lines += ["", "Order: the largest difference of a target's presence between the two sequential orders", ""]
    for (m, k), modes in sorted(by.items()):
        if {"sequential-a", "sequential-b"} <= set(modes) and k > 1:
            a, b = modes["sequential-a"]["targets"], modes["sequential-b"]["targets"]
            same = " (the same weights)" \
                if modes["sequential-b"].get("same_weights_as") else ""
            lines.append(f"- {m}, k = {k}: {max(abs(a[c] - b[c]) for c in a):.2f}{same}")
    lines += ["", "Cost: the erase call for k concepts over the one for a single concept (each method's k = 1 row)", ""]
    for (m, k), modes in sorted(by.items()):
        one = by.get((m, 1), {}).get("sequential-a")
        if one and k > 1:
            lines.append(f"- {m}, k = {k}: " + ", ".join(
                f"{mode} {r['seconds']} s = {r['seconds'] / max(one['seconds'], 0.05):.1f}x" for mode, r in
                sorted(modes.items(), key=lambda kv: MODES.index(kv[0]))) + f" (one concept: {one['seconds']} s)")
    one = (costs or {}).get(next((k for k in (costs or {}) if k.endswith("-sequential-a-1")), ""), {})
    if one:
        lines += ["", "Cost of the erase call alone (`--cost`: best of several fresh runs in one process, after a "
                  "warm-up, no images drawn; the rows above time one run each, beside other work)", ""]
        for key, c in sorted(costs.items(), key=lambda kv: (kv[1]["k"], MODES.index(kv[1]["mode"]))):
            if c["k"] > 1:
                lines.append(f"- {key}: {c['best']} s = {c['best'] / one['best']:.1f}x one concept's {one['best']} s "
                             f"(runs: {', '.join(map(str, c['seconds']))})")
    for r in rows:
        if r["nights"]:
            lines += ["", f"Continual ({r['method']}, one request a night): each earlier concept's presence "
                      "after every night", ""]
            for nt in r["nights"]:
                lines.append(f"- night {nt['night']} ({nt.get('seconds', '?')} s): " + ", ".join(
                    f"{c.split(':', 1)[1]} {v:.2f}" for c, v in nt["after"].items()))
    for r in rows:
        lines += ["", f"{r['method']} {r['mode']} k = {r['k']}: " + ", ".join(
            f"{c} ({r['anchors'][c]})" if r["anchors"].get(c) else c for c in r["concepts"])]
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    for (m, mode) in sorted({(r["method"], r["mode"]) for r in rows}):
        rs = sorted((r for r in rows if (r["method"], r["mode"]) == (m, mode)), key=lambda r: r["k"])
        ks = [r["k"] for r in rs]
        a.plot(ks, [max(r["targets"].values()) for r in rs], "o-", label=f"{m} {mode}")
        b.plot(ks, [r["worst_neighbour_drop"] or 0 for r in rs], "o-", label=f"{m} {mode}")
    a.set(xlabel="concepts erased (k)", ylabel="worst target presence", title="efficacy", ylim=(-0.02, 1.02))
    b.set(xlabel="concepts erased (k)", ylabel="worst neighbour drop", title="retention of the rest")
    for ax in (a, b):
        ax.axhline(0.10, color="grey", ls=":")
        ax.legend(fontsize=7)
    for r in rows:
        if r["nights"]:
            names = list(r["nights"][-1]["after"])
            for cpt in names:
                xs = [nt["night"] for nt in r["nights"] if cpt in nt["after"]]
                c.plot(xs, [nt["after"][cpt] for nt in r["nights"] if cpt in nt["after"]], "o-",
                       label=cpt.split(":", 1)[1][:18])
            c.set(xlabel="night", ylabel="presence", title=f"continual ({r['method']}): earlier concepts",
                  ylim=(-0.02, 1.02))
            c.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def log_mlflow(rec: dict) -> None:
    import mlflow

    root = Path(__file__).resolve().parent.parent
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    mlflow.set_experiment("scaling")
    with mlflow.start_run(run_name=f"{rec['method']}-{rec['mode']}-k{rec['k']}"):
        mlflow.log_params({"method": rec["method"], "mode": rec["mode"], "k": rec["k"]})
        mlflow.log_metrics({"worst_target": max(rec["targets"].values()), "mean_target": float(np.mean(
            list(rec["targets"].values()))), "worst_neighbour_drop": rec["worst_neighbour_drop"] or 0.0,
            "fid": rec["fid"], "fid_base": rec["fid_base"], "drift": rec["drift"], "seconds": rec["seconds"],
            "seconds_per_concept": rec["seconds_per_concept"], "peak_rss_mb": rec["peak_rss_mb"]})
        for nt in rec["nights"]:
            mlflow.log_metric("worst_earlier_target", max(nt["after"].values()), step=nt["night"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="uce")
    ap.add_argument("--ks", default="1,3,5,10,17,20")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nights", type=int, default=10, help="the continual scenario: sequential-a at this k")
    ap.add_argument("--mlflow", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--cost", action="store_true", help="only time the erase calls of --ks x --modes (no images)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    args.ks = [int(k) for k in args.ks.split(",")]
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    RESULTS.mkdir(exist_ok=True)
    store = RESULTS / "scaling.json"
    kept = json.loads(store.read_text()) if store.exists() else {}
    if kept.get("n") != args.n:
        kept = {"n": args.n, "rows": {}, "base": {}}
    if args.cost:
        kept.setdefault("cost", {}).update(cost(args.method, args.ks, args.modes.split(","), args.repeats))
        store.write_text(json.dumps(kept, indent=1))
    elif not args.report_only:
        from erasure.models import load_pipeline

        largest = len(pool(args.method))
        if max(args.ks) > largest:
            raise SystemExit(f"--ks: at most {largest} concepts for {args.method!r} on the miniworld (see the docstring)")
        probes = Probes(args.n)
        needed = [probe_of(c) for c in pool(args.method)]
        missing = [p for p in needed if _key(p) not in kept["base"]]
        base_pipe = load_pipeline()
        if missing:
            print(f"base model: {len(missing)} probes x {args.n} images", flush=True)
            kept["base"].update(probes.measure(base_pipe, missing))
            store.write_text(json.dumps(kept, indent=1))
        quality = Quality(args.n, base_pipe)
        for k in args.ks:
            for mode in args.modes.split(","):
                name = f"{args.method}-{mode}-{k}"
                if name in kept["rows"] or (k == 1 and mode != "sequential-a"):  # one concept: one run
                    continue
                t0 = time.time()
                rec = run_row(args.method, mode, k, args, probes, kept["base"], quality, kept)
                kept["rows"][name] = rec
                store.write_text(json.dumps(kept, indent=1))
                if args.mlflow:
                    log_mlflow(rec)
                print(f"{name}: {time.time() - t0:.0f} s; worst target {max(rec['targets'].values()):.2f}, "
                      f"worst neighbour drop {rec['worst_neighbour_drop']}, FID {rec['fid']:.3f} "
                      f"(base {rec['fid_base']:.3f}), erase {rec['seconds']} s", flush=True)
    rows = list(kept["rows"].values())
    text = report(rows, kept["n"], kept.get("cost"))
    (RESULTS / "scaling.md").write_text(text)
    plots(rows, RESULTS / "scaling.png")
    print(text)


if __name__ == "__main__":
    main()
