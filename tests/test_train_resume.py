"""The miniworld trainer resumes to the same weights as an uninterrupted run (tiny sizes)."""

import torch

from erasure.miniworld.architecture import build_vae
from erasure.miniworld.train import TrainConfig, train_vae
from erasure.checkpoint import load_checkpoint


def _weights(workdir):
    vae = build_vae()
    load_checkpoint(workdir / "vae", {"vae": vae}, None)
    return vae.state_dict()


def test_vae_phase_resume_is_exact(tmp_path):
    base = dict(dataset_size=48, vae_batch=2, checkpoint_every=2, threads=2)
    straight = TrainConfig(workdir=tmp_path / "a", vae_steps=4, **base)
    train_vae(straight)

    split = TrainConfig(workdir=tmp_path / "b", vae_steps=4, run_steps=3, **base)
    train_vae(split)  # stops after step 3; the last checkpoint is at step 2
    assert load_checkpoint(split.workdir / "vae", {"vae": build_vae()}, None)["step"] == 3
    split.run_steps = None
    train_vae(split)  # resumes from step 3
    a, b = _weights(straight.workdir), _weights(split.workdir)
    assert all(torch.equal(a[k], b[k]) for k in a)
