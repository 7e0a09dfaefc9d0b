"""Model families in the engine (families.py): forward process, prediction-space targets, trajectories
with the model's own sampler, and every method through `erasure erase` / `export` / plain diffusers."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from erasure import methods
from erasure.cli import app
from erasure.concept import Concept
from erasure.editable import EditableModel
from erasure.methods.base import Bench
from erasure.models import load_pipeline
from erasure.trajectories import partial_trajectories

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT = ("a dog", "a cup")  # the tiny tokenizer holds 62 characters


def _acp(config) -> torch.Tensor:
    """alphas_cumprod of the tiny folders' schedule (scaled_linear), computed here from the betas."""
    assert config["beta_schedule"] == "scaled_linear"
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5,
                           config["num_train_timesteps"], dtype=torch.float32) ** 2
    return torch.cumprod(1 - betas, 0)


def _bench(folder, rule="xattn-kv") -> Bench:
    pipe = load_pipeline(str(folder))
    return Bench(pipe, EditableModel(pipe.unet, pipe.text_encoder, [rule]), "tiny", progress=False)


def _bcast(v: torch.Tensor) -> torch.Tensor:
    return v[:, None, None, None]


def test_euler_x_t_is_the_ddpm_forward_process_even_after_sampling(family_dirs):
    bench = _bench(family_dirs["sd2-euler"])
    bench.pipe.scheduler.set_timesteps(2)  # what sampling leaves behind: Euler's add_noise raised IndexError
    x0 = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    rows = bench.noised_rows(x0, torch.Generator().manual_seed(2))
    acp = _acp(bench.scheduler_config)[rows["t"]]
    expected = _bcast(acp.sqrt()) * x0 + _bcast((1 - acp).sqrt()) * rows["noise"]
    torch.testing.assert_close(rows["x"], expected, rtol=1e-5, atol=1e-5)
    assert set(rows) == {"x", "t", "noise"}  # epsilon model: the noise is the target, no velocity row


def test_ddim_x_t_equals_the_ddim_schedulers_add_noise_bit_for_bit(family_dirs):
    bench = _bench(family_dirs["sd1"])
    x0 = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    x, t, noise = bench.noised(x0, torch.Generator().manual_seed(2))
    assert torch.equal(x, bench.pipe.scheduler.add_noise(x0, noise, t))


def _spy_noised(bench: Bench, seen: dict):
    """Record what the forward process was given (x0) and drew (noise, t)."""
    noised = bench.noised

    def spy(latents, gen):
        x, t, noise = noised(latents, gen)
        seen.update(x0=latents, t=t, noise=noise)
        return x, t, noise

    bench.noised = spy


@pytest.mark.parametrize("method_name,options", [
    ("ca", {"anchor_images": 2, "anchor_steps": 1, "loss": "noise", "regularization": 0.5}),
    ("ca", {"anchor_images": 2, "anchor_steps": 1, "regularization": 0.5}),
    ("loss-max", {"images": 2, "image_steps": 1}),
])
def test_v_prediction_targets_are_the_epsilon_targets_converted_to_velocity(family_dirs, method_name, options):
    bench = _bench(family_dirs["sd2-v"])
    method = methods.get(method_name)
    opts = method.Options(**options)
    seen: dict = {}
    _spy_noised(bench, seen)
    concept = Concept(text="cat", kind="style", anchor_prompts=SHORT)
    pool = method.build_pool(bench, concept, opts, 6, torch.Generator().manual_seed(0))
    acp = _acp(bench.scheduler_config)[seen["t"]]
    # the epsilon-space target is the noise; in velocity: sqrt(acp) noise - sqrt(1 - acp) x0
    velocity = _bcast(acp.sqrt()) * seen["noise"] - _bcast((1 - acp).sqrt()) * seen["x0"]
    torch.testing.assert_close(pool.rows["velocity"], velocity, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(velocity, seen["noise"], atol=0.1)
    batch = pool.batch(torch.arange(len(pool)))
    with torch.no_grad():
        loss = float(method.loss(bench.model, batch, opts, bench))
        out_c = bench.model(batch["x"], batch["t"], batch["c"])
        if method_name == "loss-max":
            expected = -torch.nn.functional.mse_loss(out_c, velocity)
        else:
            out_a = bench.model(batch["x"], batch["t"], batch["a"])
            first = velocity if opts.loss == "noise" else batch["target"]  # model-based: an output, either space
            expected = (torch.nn.functional.mse_loss(out_c, first)
                        + opts.regularization * torch.nn.functional.mse_loss(out_a, velocity))
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_trajectories_record_the_unet_input_of_each_sampler_at_its_timestep():
    """With the exact epsilon of Gaussian data N(0, s^2), the UNet input at timestep t has the forward
    process's std sqrt(acp s^2 + 1 - acp): Euler's unscaled x (std ~ sigma) would not, nor its t."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    s = 0.5
    for sched in (EulerDiscreteScheduler(**common, timestep_spacing="linspace"),
                  DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False)):
        config = dict(sched.config) | {"_class_name": type(sched).__name__}
        sigmas = ((1 - _acp(config)) / _acp(config)).sqrt().double().numpy()

        def acp_at(t):  # Euler's timesteps are fractional: its sigma is interpolated, as here
            return 1 / (1 + float(np.interp(float(t), np.arange(len(sigmas)), sigmas)) ** 2)

        def eps(x, t, cond):
            a = acp_at(t)
            return (1 - a) ** 0.5 * x / (a * s**2 + 1 - a)

        stops = torch.arange(6).repeat_interleave(300)
        cond = torch.zeros(1, 1, 1)
        x, t = partial_trajectories(eps, config, cond, cond, stops, (4, 4, 4), num_steps=8,
                                    generator=torch.Generator().manual_seed(0))
        sched.set_timesteps(8)
        for k in range(6):
            assert torch.equal(t[stops == k], sched.timesteps[k].expand(300)), type(sched).__name__
            a = acp_at(sched.timesteps[k])
            assert float(x[stops == k].std()) == pytest.approx((a * s**2 + 1 - a) ** 0.5, rel=0.05), (k, sched)  # 8-step discretization


runner = CliRunner()
METHOD_ARGS = {
    "esd": ["--kind", "object", "--option", "ddim_steps=2"],
    "abo": ["--kind", "object", "--option", "ddim_steps=2"],
    "ca": ["--kind", "object", "--anchor", "dog", "--option", "anchor_images=2", "--option", "anchor_steps=1"],
    "loss-max": ["--kind", "object", "--anchor", "dog", "--option", "images=2", "--option", "image_steps=1"],
    "uce": ["--kind", "object", "--anchor", "dog", "--option", "context_prompts=2", "--option", "preserve_prompts=2"],
}


@pytest.mark.parametrize("family", ["sd1", "sd2-v", "sd2-euler", "sdxl"])
def test_every_method_erases_exports_and_reloads_in_plain_diffusers(family, family_dirs, tmp_path):
    from families import pipeline_class
    from safetensors.torch import load_file

    base = load_file(str(family_dirs[family] / "unet" / "diffusion_pytorch_model.safetensors"))
    for method, args in METHOD_ARGS.items():
        delta, folder = tmp_path / f"{method}.safetensors", tmp_path / method
        res = runner.invoke(app, ["erase", "--model", str(family_dirs[family]), "--out", str(delta), "-c", "rex",
                                  "--method", method, "--steps", "1", "--batch-size", "1", "--lr", "1e-3", *args])
        assert res.exit_code == 0, (method, res.output)
        res = runner.invoke(app, ["export", "--delta", str(delta), "--out", str(folder),
                                  "--model", str(family_dirs[family])])
        assert res.exit_code == 0, (method, res.output)
        pipe = pipeline_class(family).from_pretrained(str(folder), use_safetensors=True)
        assert type(pipe.scheduler).__name__ == type(load_pipeline(str(family_dirs[family])).scheduler).__name__
        erased = pipe.unet.state_dict()
        assert any(not torch.equal(erased[k], v) for k, v in base.items()), method  # the delta was applied
        pipe.set_progress_bar_config(disable=True)
        image = pipe("rex", num_inference_steps=2, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images
        assert image.shape == (1, 16, 16, 3) and np.isfinite(image).all(), method


def test_sdxl_conditioning_is_the_pipelines_own(family_dirs):
    """Bench.encode + EditableModel give the UNet what StableDiffusionXLPipeline gives it: both
    encoders' penultimate states, text_encoder_2's pooled embedding, the time ids; "" is zeros."""
    from erasure.families import added_conditioning

    pipe = load_pipeline(str(family_dirs["sdxl"]))
    model = EditableModel(pipe.unet, pipe.text_encoder, ["xattn"], **added_conditioning(pipe))
    bench = Bench(pipe, model, "tiny", progress=False)
    cond = bench.encode(["a cat", ""])
    embeds, _, pooled, _ = pipe.encode_prompt("a cat", do_classifier_free_guidance=False)
    pixels = pipe.default_sample_size * pipe.vae_scale_factor
    time_ids = pipe._get_add_time_ids((pixels, pixels), (0, 0), (pixels, pixels), dtype=torch.float32,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad():
        expected = pipe.unet(x, t, encoder_hidden_states=embeds,
                             added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        torch.testing.assert_close(model(x, t, cond[:1]), expected, rtol=1e-5, atol=1e-6)
        zeros = pipe.unet(x, t, encoder_hidden_states=torch.zeros_like(embeds),
                          added_cond_kwargs={"text_embeds": torch.zeros_like(pooled), "time_ids": time_ids}).sample
        torch.testing.assert_close(model(x, t, cond[1:]), zeros, rtol=1e-5, atol=1e-6)


def test_sdxl_refuses_the_embedding_rule_before_any_work(family_dirs, tmp_path):
    res = runner.invoke(app, ["erase", "--model", str(family_dirs["sdxl"]), "--out", str(tmp_path / "d.safetensors"),
                              "-c", "rex", "--kind", "object", "--rule", "embedding", "--steps", "1"])
    assert res.exit_code == 2 and "SDXL" in res.output and "embedding" in res.output, res.output
    assert not (tmp_path / "d.safetensors").exists() and not (tmp_path / "d.safetensors.work").exists()


def test_guidance_anchor_similarity_runs_on_sdxl_with_its_conditioning(family_dirs):
    from erasure.anchors import choose, guidance_embedder

    embed = guidance_embedder(load_pipeline(str(family_dirs["sdxl"])))
    v = embed(["a dog", "a cat", "a dog"])
    assert v.shape[0] == 3 and torch.allclose(v.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(v[0], v[2]) and not torch.allclose(v[0], v[1])
    c = choose("Pip", "instance", "ca", anchor=None, paraphrases=[], candidates=["dog", "cat"],
               no_anchor_methods=["esd"], embed=embed)
    assert c.anchor in ("dog", "cat") and set(c.scores) == {"dog", "cat"}
