"""A run folder (--workdir): claimed by one run (its jobs, settings, base and code), and the checkpoint
a killed run resumes from (the trainable tensors, the optimizer state where it is not partitioned,
where the loop stood)."""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import save_checkpoint
from ..io import atomic_file
from .accelerate_setup import save_main
from .plan import EraseSettings, Job


def claim_workdir(workdir: Path, jobs: list[Job], settings: EraseSettings, base_hash: str | None,
                   accelerator, code: str) -> None:
    """A workdir belongs to one run: resuming with different settings or code would mix two runs."""
    spec = json.dumps({"jobs": [j.describe() for j in jobs], "settings": settings.model_dump(mode="json"),
                       "base_hash": base_hash, "code": code}, sort_keys=True)
    marker = workdir / "run.json"
    claimed = marker.exists()
    accelerator.wait_for_everyone()  # all ranks look before the main one writes it, or they disagree and deadlock
    if claimed:
        if json.loads(marker.read_text()) != json.loads(spec):
            raise ValueError(f"--workdir {workdir} holds a run with other settings (or made by other code); use "
                             "another workdir or delete it to start over")
        return
    if accelerator.is_main_process:
        workdir.mkdir(parents=True, exist_ok=True)
        with atomic_file(marker) as fh:
            fh.write(spec)
    accelerator.wait_for_everyone()



def checkpoint(accelerator, path: Path, trainable, optimizer, state: dict, settings: EraseSettings) -> None:
    # Under ZeRO the optimizer state is partitioned across ranks: checkpoints keep weights only.
    opt = optimizer if settings.zero_stage == 0 else None
    save_main(accelerator, lambda p: save_checkpoint(p, {"model": trainable}, opt, state["step"], extra=state), path,
               gather=trainable.values())
