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


def test_implicit_refinement_resumes_exactly_and_exports(tmp_path, tiny_pipeline_dir, one_thread):
    from diffusers import StableDiffusionPipeline

    from erasure.miniworld.train import _implicit_modules, export_implicit, refine_implicit

    base = dict(implicit_batch=2, implicit_pairs=1, checkpoint_every=2, threads=1)
    straight = TrainConfig(workdir=tmp_path / "a", implicit_steps=3, **base)
    refine_implicit(straight, tiny_pipeline_dir)
    split = TrainConfig(workdir=tmp_path / "b", implicit_steps=3, run_steps=2, **base)
    refine_implicit(split, tiny_pipeline_dir)
    split.run_steps = None
    refine_implicit(split, tiny_pipeline_dir)  # resumes from step 2

    def weights(workdir):
        _, model = _implicit_modules(tiny_pipeline_dir)
        assert load_checkpoint(workdir / "implicit", {"model": model}, None)["step"] == 3
        return model.state_dict()

    a, b = weights(straight.workdir), weights(split.workdir)
    assert all(torch.equal(a[k], b[k]) for k in a)

    out = export_implicit(straight, tiny_pipeline_dir, tmp_path / "refined")
    pipe = StableDiffusionPipeline.from_pretrained(str(out))  # a plain diffusers folder
    orig = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir))
    refined, before = pipe.unet.state_dict(), orig.unet.state_dict()
    assert all(torch.equal(refined[k], a[f"unet.{k}"]) for k in refined)
    assert any(not torch.equal(refined[k], before[k]) for k in refined)  # training changed the UNet
    vae_a, vae_b = pipe.vae.state_dict(), orig.vae.state_dict()
    assert all(torch.equal(vae_a[k], vae_b[k]) for k in vae_a)  # the latent space is untouched
