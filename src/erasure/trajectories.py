"""Partial trajectories, the x_t of ESD and All-but-One: sample from noise, stop after k steps.

The sampler is the model's own scheduler class where it steps in lockstep (DDIM, Euler), else DDIM
on the same training schedule (families.py). What is recorded is the UNet's input at the stop
step (`scale_model_input`: Euler's x / sqrt(sigma^2 + 1), DDIM's x itself) and that step's
timestep, so training sees the inputs the model sees when sampling.

Run for a whole batch in lockstep: sample i stops after `stops[i]` of `num_steps` steps, and only
samples still running are evaluated at each step. A trajectory may also be read at several stops
(`stops` of shape (n, s)): n trajectories give n * s samples for the cost of running each to its
last stop, which is where a pool's time goes (ESD's `stops_per_trajectory`). With the frozen model as the sampler (the newer
ESD code's choice) the results do not depend on training, so they are computed once and reused.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .families import of as family_of
from .progress import Progress

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def partial_trajectories(eps: EpsFn, scheduler_config: dict, cond: torch.Tensor, uncond: torch.Tensor,
                         stops: torch.Tensor, latent_shape: tuple[int, ...], guidance: float = 3.0,
                         num_steps: int = 50, generator: torch.Generator | None = None,
                         noise: torch.Tensor | None = None,
                         desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t and t for each sample; cond is (n, seq, dim) or (1, seq, dim), uncond (1, seq, dim).

    `eps(x, t, emb)` is the model's output for a batch at one timestep. Sample i runs classifier-free
    guided sampling for `stops[i]` steps (0 <= stops[i] < num_steps); x is the model input there and
    t the timestep it reached (long for DDIM; the scheduler's float timesteps for Euler).
    `stops` of shape (n, s): trajectory i is read after each of its s stops, and the outputs are the
    n * s samples in row order (trajectory 0's s stops first).
    The starting noise is drawn from `generator` unless given as `noise`. `desc`: show progress
    (a pool's trajectories; in sample-steps, since a step costs as many samples as are still running).
    """
    per = stops.view(len(stops), -1)  # (n, s): s stops of each trajectory
    n, s = per.shape
    if n == 0 or s == 0:
        raise ValueError("stops is empty: expected at least one stop")
    if int(per.min()) < 0 or int(per.max()) >= num_steps:
        raise ValueError(f"stops must lie in [0, {num_steps}), got [{int(per.min())}, {int(per.max())}]")
    sched = family_of(scheduler_config).trajectory_scheduler()
    sched.set_timesteps(num_steps)
    cond = cond.expand(n, *cond.shape[1:]) if cond.shape[0] == 1 else cond
    if noise is None:
        # cond may be token ids (long) when text-encoder rows are trained: latents are float then
        dtype = cond.dtype if cond.is_floating_point() else torch.float32
        # drawn on the CPU (the same draws on any device), run where the conditioning is
        noise = torch.randn((n, *latent_shape), generator=generator, dtype=dtype).to(cond.device)
    x = noise.clone() * sched.init_noise_sigma
    per = per.to(x.device)
    last = per.amax(1)
    out_x = torch.empty((n, s, *x.shape[1:]), dtype=x.dtype, device=x.device)
    out_t = torch.empty((n, s), dtype=sched.timesteps.dtype, device=x.device)
    bar = Progress(int(last.sum()), desc or "", "sample-step", enabled=desc is not None)
    for k, t in enumerate(sched.timesteps):
        x_in = sched.scale_model_input(x, t)  # DDIM: x itself
        rows, cols = (per == k).nonzero(as_tuple=True)
        out_x[rows, cols] = x_in[rows]
        out_t[rows, cols] = t
        active = last > k
        if not active.any():
            break
        xa = x_in[active]
        emb = torch.cat([uncond.expand(len(xa), *uncond.shape[1:]), cond[active]])
        e_u, e_c = eps(torch.cat([xa, xa]), t, emb).chunk(2)
        # one step() per timestep (Euler counts them), on the active samples' unscaled x
        x[active] = sched.step(e_u + guidance * (e_c - e_u), t, x[active]).prev_sample
        bar.update(len(xa))
    bar.close()
    if stops.ndim == 1:
        return out_x[:, 0], out_t[:, 0]
    return out_x.flatten(0, 1), out_t.flatten()
