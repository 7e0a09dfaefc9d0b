"""The run's device and dtype: --device/--dtype and params.yaml's device/dtype resolve to one place with
one clear error for a device the machine lacks; model calls run where the model is and hand pool data
back on the CPU; bf16 draws images; the image cache names a device or dtype other than CPU fp32."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from erasure.cli import app
from erasure.device import resolve_device, resolve_dtype
from erasure.models import load_pipeline

NO_CUDA = not torch.cuda.is_available()
runner = CliRunner()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cpu") if NO_CUDA else torch.device("cuda", 0))
    for bad in ("gpu", "cuda:x", "auto:1", ""):
        with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    if NO_CUDA:
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_resolve_dtype():
    assert resolve_dtype("fp32") is torch.float32 and resolve_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="expected one of fp32, bf16"):
        resolve_dtype("fp16")


def test_params_refuse_a_bad_device_and_dtype(tmp_path):
    from erasure.config import ParamsError, load_params

    f = tmp_path / "p.yaml"
    f.write_text("device: gpu\ndtype: half\n")
    with pytest.raises(ParamsError) as err:
        load_params(f)
    assert "device: expected auto, cpu, cuda or cuda:N, got 'gpu'" in str(err.value)
    assert "dtype: Input should be 'fp32' or 'bf16', got 'half'" in str(err.value)


@pytest.mark.skipif(not NO_CUDA, reason="checks the refusal on a machine without CUDA")
def test_cli_refuses_cuda_without_it(tiny_pipeline_dir, tmp_path):
    res = runner.invoke(app, ["generate", "--model", str(tiny_pipeline_dir), "-p", "a cat", "-n", "1",
                              "--device", "cuda", "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 2 and "no CUDA device" in res.output and not (tmp_path / "g.png").exists()


class _Recorder(torch.nn.Module):
    """A model that records where its inputs were and answers on its own device."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones((), dtype=torch.bfloat16))
        self.seen = []

    def forward(self, x, t, c):
        self.seen.append((x.device, x.dtype, t.device, c.dtype))
        return x * self.w


def test_model_calls_run_in_the_models_dtype_and_return_float_where_x_is():
    from erasure.methods.base import _chunked

    model = _Recorder()
    x, ids = torch.randn(3, 4, 2, 2), torch.zeros(3, 5, dtype=torch.long)
    out = _chunked(model, x, 7, ids, torch.device("cpu"), torch.bfloat16)
    assert model.seen == [(torch.device("cpu"), torch.bfloat16, torch.device("cpu"), torch.long)]
    assert out.dtype == torch.float32 and out.device == x.device
    torch.testing.assert_close(out, x.to(torch.bfloat16).float())


def test_bf16_pipeline_draws_images_and_the_cache_names_it(tiny_pipeline_dir, tmp_path, one_thread):
    from erasure.config import PipelineParams
    from erasure.pipeline.generate import image_cache
    from erasure.sampling import generate

    pipe = load_pipeline(str(tiny_pipeline_dir), dtype=torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16
    images = generate(pipe, ["a cat", "a dog"], [0, 1], steps=2, progress=False)
    assert images.dtype == np.uint8 and images.shape[0] == 2
    params = PipelineParams(paths={"cache": str(tmp_path)})
    bf16 = image_cache(params, "h", pipe)
    fp32 = image_cache(params, "h", load_pipeline(str(tiny_pipeline_dir)))
    assert bf16.sampler.endswith("@cpu-bfloat16") and "@" not in fp32.sampler
    assert bf16.key("a cat", 0) != fp32.key("a cat", 0)


def test_erase_runs_with_bf16_compute(tiny_pipeline_dir, tmp_path, one_thread):
    """ESD and CA steps with erase.mixed_precision bf16 on the CPU: finite losses, a delta written."""
    for method, extra in (("esd", ["--option", "ddim_steps=2"]),
                          ("ca", ["--anchor", "dog", "--option", "anchor_images=2", "--option", "anchor_steps=1"])):
        out = tmp_path / f"{method}.safetensors"
        res = runner.invoke(app, ["erase", "--model", str(tiny_pipeline_dir), "--out", str(out), "-c", "rex",
                                  "--kind", "object", "--method", method, "--steps", "2", "--batch-size", "1",
                                  "--device", "cpu", "--mixed-precision", "bf16", *extra])
        assert res.exit_code == 0, res.output
        assert out.is_file()
    res = runner.invoke(app, ["erase", "--model", str(tiny_pipeline_dir), "--out", str(tmp_path / "x.safetensors"),
                              "-c", "rex", "--kind", "object", "--mixed-precision", "fp16"])
    assert res.exit_code == 2 and "--mixed-precision" in res.output
