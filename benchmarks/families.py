"""One ESD-x step and one CA step on full-size random-init SD 1.5, SD 2.1 and SDXL architectures.

    python benchmarks/families.py                       # every family x dtype x method, on the CPU
    python benchmarks/families.py --family sd15 --dtype bf16 --method ca
    python benchmarks/families.py --device cuda         # on a GPU machine (bf16 and fp32)
    python benchmarks/families.py --latent 32           # smaller latents: faster, less activation memory

Each configuration runs in a fresh process (its peak memory is its own): build the pipeline (random
weights with the real architecture: UNet, text encoder(s), scheduler with the family's prediction
type; a one-block VAE, which neither step uses), then run the project's trainer (`erasure.trainer`)
for one concept: pool building (ESD-x: a 2-step partial trajectory; CA: one anchor image drawn in 2
sampler steps) and one training step of the method's default rule, gradient checkpointing on.

Printed per configuration: parameters and weight bytes, the process's peak memory during the erasure
(CPU: VmHWM, reset once the pipeline is built, minus the resident memory before any model existed; GPU:
torch.cuda.max_memory_allocated) as a ratio to the weights, seconds of the training step and of the pool. "GPU need" is that ratio applied to the
weights in the run's dtype, plus the CUDA context (about 0.5 GB): what one GPU must hold for the same
step at the same latent size. Writes benchmarks/results/families.md (and .json) unless --no-write.
No real weights exist here: the figures are about architecture cost, not erasure quality.
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

import torch

from methods import _proc_mb  # noqa: E402 (benchmarks/methods.py: VmRSS / VmHWM of this process)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FAMILIES = {"sd15": "SD 1.5", "sd21": "SD 2.1 (v-prediction)", "sdxl": "SDXL"}
NATIVE_LATENT = {"sd15": 64, "sd21": 96, "sdxl": 128}
CUDA_CONTEXT_GB = 0.5


def _tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1,
             **{f"{c}</w>": i + 2 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}}
    return CLIPTokenizer(vocab=vocab, merges=[], bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                         unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=max_length)


def _text(hidden: int, layers: int, heads: int, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                         hidden_act="gelu" if projection or hidden > 768 else "quick_gelu",
                         **({"projection_dim": projection} if projection else {}))
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def build(family: str, latent: int, dtype: torch.dtype):
    """The full-size architecture of `family` (random weights), as a diffusers pipeline."""
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4, sample_size=latent)
    sched = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    if family == "sd15":
        unet = UNet2DConditionModel(sample_size=latent, cross_attention_dim=768)  # diffusers' defaults = SD 1.x
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=_text(768, 12, 12), tokenizer=_tokenizer(), unet=unet,
                                       scheduler=DDIMScheduler(**sched, clip_sample=False, set_alpha_to_one=False),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif family == "sd21":
        unet = UNet2DConditionModel(sample_size=latent, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                    use_linear_projection=True)
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=_text(1024, 23, 16), tokenizer=_tokenizer(), unet=unet,
            scheduler=DDIMScheduler(**sched, clip_sample=False, set_alpha_to_one=False, prediction_type="v_prediction"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif family == "sdxl":
        unet = UNet2DConditionModel(
            sample_size=latent, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=_text(768, 12, 12), tokenizer=_tokenizer(),
                                         text_encoder_2=_text(1280, 32, 20, projection=1280), tokenizer_2=_tokenizer(),
                                         unet=unet, scheduler=EulerDiscreteScheduler(**sched))
    else:
        raise SystemExit(f"--family {family!r}: expected one of {', '.join(FAMILIES)}")
    return pipe.to(dtype=dtype)


def measure(family: str, dtype_name: str, method: str, device: str, latent: int) -> dict:
    """One configuration, in this process."""
    from erasure.concept import Concept
    from erasure.trainer import EraseSettings, erase, plan

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    rss0 = _proc_mb("VmRSS")
    pipe = build(family, latent, dtype).to(device)
    nets = [pipe.unet, pipe.text_encoder] + ([pipe.text_encoder_2] if getattr(pipe, "text_encoder_2", None) else [])
    params = sum(p.numel() for m in nets for p in m.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for m in nets for p in m.parameters())
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:  # the peak from here on: building (fp32 random init, then the cast) is not the step's cost
        import gc

        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS (Linux)
    options = {"ddim_steps": 2} if method == "esd" else {"anchor_images": 1, "anchor_steps": 2}
    concept = (Concept(text="a b c", kind="style") if method == "esd"
               else Concept(text="a b c", kind="instance", anchor="d e"))
    settings = EraseSettings(method=method, steps=1, batch_size=1, pool_size=1, lr=1e-5, gradient_checkpointing=True,
                             mixed_precision="bf16" if dtype_name == "bf16" else "no", options=options)
    jobs = plan([concept], settings)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"families-{os.getpid()}"
    t0 = time.time()
    res = erase(pipe, jobs, settings, work, None, model_spec="generic", progress=False)
    shutil.rmtree(work, ignore_errors=True)
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        base_mb = 0.0
    else:
        peak_mb, base_mb = _proc_mb("VmHWM"), rss0
    return {"family": family, "dtype": dtype_name, "method": method, "rule": jobs[0].rule, "device": device,
            "latent": latent, "params": params, "weights_mb": weight_bytes / 2**20,
            "trainable_params": res.trainable_params, "peak_mb": peak_mb, "base_mb": base_mb,
            "ratio": (peak_mb - base_mb) / (weight_bytes / 2**20), "peak_from": "erasure",
            "seconds_step": res.seconds_train,
            "seconds_pool": res.seconds_pool, "wall_s": time.time() - t0}


def report(rows: list[dict]) -> str:
    lines = ["# Full-size SD-family architectures: one training step", "",
             "Generated by `python benchmarks/families.py` (see its docstring). Random-init weights with the real "
             "architectures; the project's trainer; one concept, pool of 1 (ESD-x: 2-step trajectory; CA: one "
             "anchor image in 2 sampler steps), one training step, gradient checkpointing on. Peak is the "
             "process's during the erasure (CPU: VmHWM, reset once the pipeline is built, minus the memory before "
             "any model; GPU: max allocated) as a ratio to the weights of the UNet and text encoder(s). GPU need = ratio x weights + 0.5 GB CUDA context.", "",
             "| family | dtype | method (rule) | device | latent | params | weights GB | peak / weights | "
             "s/step | pool s | GPU need GB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {FAMILIES[r['family']]} | {r['dtype']} | {r['method']} | {r['device']} | {r['latent']} | "
                         f"- | - | - | - | - | failed: {r['error'][:80]} |")
            continue
        need = r["ratio"] * r["weights_mb"] / 1024 + CUDA_CONTEXT_GB
        mark = "" if r.get("peak_from") == "erasure" else "*"  # rows measured before the peak was reset
        lines.append(f"| {FAMILIES[r['family']]} | {r['dtype']} | {r['method']} ({r['rule']}) | {r['device']} | "
                     f"{r['latent']}x{r['latent']} | {r['params'] / 1e6:,.0f}M | {r['weights_mb'] / 1024:.2f} | "
                     f"{r['ratio']:.2f}x{mark} | {r['seconds_step']:.1f} | {r['seconds_pool']:.1f} | {need:.1f}{mark} |")
    if any(r.get("peak_from") != "erasure" for r in rows if "error" not in r):
        lines += ["", "\\* Peak over the whole process, building the pipeline included (random init in fp32, "
                  "then the cast): for bf16 the fp32 build's, an overestimate of the erasure's; for fp32 close to "
                  "it (SDXL fp32 CA: 1.66x so, 1.69x measured alone). Rerun the row to measure the erasure alone "
                  "(`--family F --dtype D --method M --merge`)."]
    if any("out of memory" in r.get("error", "") for r in rows):
        lines += ["", "A row killed for memory needed more than this machine's RAM (`free -g`): the weights, plus per "
                  "trainable parameter its gradient, two Adam moments and, for ESD, the frozen copy eps* reads, "
                  "plus activations (see the same family's other rows for the trainable count)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=list(FAMILIES), action="append")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], action="append")
    ap.add_argument("--method", choices=["esd", "ca"], action="append")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--latent", type=int, default=None, help="latent size (default: each family's native)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one configuration, JSON out
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="replace only these configurations' rows in the committed results (a rerun of one row)")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch here")
    if a.one:
        f, d, m = a.family[0], a.dtype[0], a.method[0]
        print(json.dumps(measure(f, d, m, a.device, a.latent or NATIVE_LATENT[f])))
        return
    rows = []
    for f in a.family or list(FAMILIES):
        for d in a.dtype or ["fp32", "bf16"]:
            for m in a.method or ["esd", "ca"]:
                latent = a.latent or NATIVE_LATENT[f]
                cmd = [sys.executable, __file__, "--one", "--family", f, "--dtype", d, "--method", m,
                       "--device", a.device, "--latent", str(latent)]
                print(f"{FAMILIES[f]} {d} {m} on {a.device}, latent {latent}...", flush=True)
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                    if proc.returncode < 0:  # no traceback: the kernel stopped it (SIGKILL: out of memory)
                        tail = f"killed by signal {-proc.returncode}" + (
                            " (out of memory?)" if proc.returncode == -9 else "")
                    rows.append({"family": f, "dtype": d, "method": m, "device": a.device, "latent": latent,
                                 "error": tail})
                    print(f"  failed: {tail}", flush=True)
                    continue
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"  peak {r['ratio']:.2f}x weights ({r['weights_mb'] / 1024:.2f} GB), "
                      f"{r['seconds_step']:.1f} s/step, pool {r['seconds_pool']:.1f} s", flush=True)
    if a.merge and (RESULTS / "families.json").is_file():
        key = lambda r: (r["family"], r["dtype"], r["method"], r["device"], r["latent"])  # noqa: E731
        new = {key(r): r for r in rows}
        old = json.loads((RESULTS / "families.json").read_text())
        rows = [new.pop(key(r), r) for r in old] + list(new.values())
    text = report(rows)
    print(text)
    if not a.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "families.md").write_text(text)
        (RESULTS / "families.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
