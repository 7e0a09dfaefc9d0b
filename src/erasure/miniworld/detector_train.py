"""Train and measure the miniworld detector on freshly rendered, augmented procedural images.

Augmentations imitate what a generated image shows: blur, noise, colour shift, contrast change.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..io import save_safetensors
from .concepts import INSTANCES, MEMORIZED, STYLES
from .render import Scene, render, render_memorized
from .world import sample_scene, scene_rng
from .detector import HEADS, DetectorNet, copy_similarity, to_input

TRAIN_SEED, TEST_SEED = 777, 4242
BLUR_SIGMAS = (0.0, 0.5, 0.8, 1.1)


def detector_scene(seed: int, index: int) -> Scene:
    """World scenes, rebalanced so that rare concepts (instances, styles) are well represented."""
    rng = scene_rng(seed, index)
    scene = sample_scene(rng)
    while scene.memorized:
        scene = sample_scene(rng)
    if rng.random() < 0.3:
        scene = dataclasses.replace(scene, instance=list(INSTANCES)[rng.integers(len(INSTANCES))])
    if rng.random() < 0.2:
        scene = dataclasses.replace(scene, style=list(STYLES)[rng.integers(len(STYLES))])
    return scene


def scene_targets(scene: Scene) -> dict[str, int]:
    obj, color = scene.object, scene.color
    if scene.instance:
        obj, color = INSTANCES[scene.instance].object, INSTANCES[scene.instance].color
    values = {"object": obj, "color": color, "style": scene.style or "plain",
              "instance": scene.instance or "none", "frame": "yes" if scene.frame else "no"}
    return {k: HEADS[k].index(v) for k, v in values.items()}


def render_set(seed: int, count: int, progress: bool = True):
    images = np.empty((count, 32, 32, 3), dtype=np.uint8)
    targets = {k: np.empty(count, dtype=np.int64) for k in HEADS}
    for i in tqdm(range(count), desc="rendering detector set", disable=not progress):
        scene = detector_scene(seed, i)
        images[i] = render(scene)
        for k, v in scene_targets(scene).items():
            targets[k][i] = v
    return images, targets


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur, colour shift, contrast and noise of the strength a sampled image shows."""
    n = len(x)
    # Blur strength drawn from a few levels, so each level is one batched convolution.
    level = torch.randint(len(BLUR_SIGMAS), (n,), generator=g)
    out = x.clone()
    r = torch.arange(-2, 3, dtype=torch.float32)
    for li, s in enumerate(BLUR_SIGMAS):
        sel = level == li
        if s == 0 or not sel.any():
            continue
        k = torch.exp(-(r**2) / (2 * s * s))
        k = k / k.sum()
        k2 = (k[:, None] * k[None, :]).expand(3, 1, 5, 5)
        out[sel] = F.conv2d(F.pad(x[sel], (2, 2, 2, 2), mode="replicate"), k2, groups=3)
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.3
    shift = (torch.rand(n, 3, 1, 1, generator=g) - 0.5) * 0.16
    noise = torch.randn(x.shape, generator=g) * torch.rand(n, 1, 1, 1, generator=g) * 0.08
    return (out * contrast + shift + noise).clamp(-1, 1)


def train(out: Path, steps: int = 2000, count: int = 30000, batch: int = 64, lr: float = 2e-3,
          seed: int = 0) -> DetectorNet:
    torch.manual_seed(seed)
    images, targets = render_set(TRAIN_SEED, count)
    x_all = to_input(images)
    y_all = {k: torch.from_numpy(v) for k, v in targets.items()}
    net = DetectorNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="training detector")
    for step in bar:
        idx = torch.randint(len(x_all), (batch,), generator=g)
        logits = net(augment(x_all[idx], g))
        loss = sum(F.cross_entropy(logits[k], y_all[k][idx]) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    net.eval()
    save_safetensors(net.state_dict(), out)
    return net


@torch.no_grad()
def measure(net: DetectorNet, count: int = 2000, seed: int = TEST_SEED, natural: bool = True) -> dict:
    """Accuracy per head on fresh augmented images (from the world's own distribution if natural)."""
    from .world import sample_scene as natural_scene

    t0 = time.time()
    if natural:
        scenes = []
        i = 0
        while len(scenes) < count:
            s = natural_scene(scene_rng(seed, i))
            i += 1
            if not s.memorized:
                scenes.append(s)
    else:
        scenes = [detector_scene(seed, i) for i in range(count)]
    images = np.stack([render(s) for s in scenes])
    x = augment(to_input(images), torch.Generator().manual_seed(seed))
    net.eval()
    logits = {k: [] for k in HEADS}
    for s in range(0, len(x), 500):
        for k, v in net(x[s:s + 500]).items():
            logits[k].append(v.argmax(-1))
    result = {}
    for k in HEADS:
        pred = torch.cat(logits[k]).numpy()
        true = np.array([scene_targets(s)[k] for s in scenes])
        result[k] = float((pred == true).mean())
    result["seconds"] = time.time() - t0
    return result


def calibrate_copy_threshold(count: int = 2000, seed: int = TEST_SEED) -> dict:
    """Copy similarity of augmented copies versus ordinary world images, per memorized image."""
    g = torch.Generator().manual_seed(seed)
    world = to_input(np.stack([render(detector_scene(seed + 1, i)) for i in range(count)]))
    report = {}
    for key, m in MEMORIZED.items():
        ref = to_input(render_memorized(m))
        copies = augment(ref.repeat(200, 1, 1, 1), g)
        report[key] = {
            "copies_min": float(copy_similarity(copies, ref).min()),
            "copies_p05": float(copy_similarity(copies, ref).quantile(0.05)),
            "world_max": float(copy_similarity(world, ref).max()),
            "world_p99": float(copy_similarity(world, ref).quantile(0.99)),
        }
    return report
