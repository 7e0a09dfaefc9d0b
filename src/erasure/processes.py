"""One stage over several processes (`accelerate launch --num_processes N stages/generate.py`): each
process draws its share of the images that are not cached yet, into the shared content-addressed
cache, and reads the others' from it; only the main process writes the stage's outputs.

An image's noise depends on its prompt and seed only (per-image generators), so who draws it changes
no image's content; its pixels can differ by rounding (a level of 255 in a few pixels on the CPU),
since each process draws its share in other batches, as a rerun that finds some images cached does.
Launched without several processes, none of this applies (no process group, no waiting).
"""

from __future__ import annotations

import os


def launched():
    """Accelerate's PartialState when the stage runs in several processes, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch
    from accelerate import PartialState

    # Without CUDA, Accelerate joins the processes over gloo only when told the run is on the CPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != world:
        raise RuntimeError(f"launched as {world} processes (WORLD_SIZE), but Accelerate joined "
                           f"{state.num_processes}; launch with `accelerate launch --num_processes {world}`")
    return state


def is_main() -> bool:
    """Whether this process writes the stage's outputs (the only one, or the main one)."""
    state = launched()
    return state is None or state.is_main_process


def wait() -> None:
    """Every process reaches this point before any goes on (nothing without several processes)."""
    state = launched()
    if state is not None:
        state.wait_for_everyone()
