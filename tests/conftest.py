import os
from pathlib import Path

# Tests never touch the network: the hub is unreachable where this project is built.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")

# Under `pytest -n 2` each worker, and every process it starts, computes on one thread: in-process
# results then equal a subprocess's bit for bit (thread count changes float reduction order).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores: alone, a test uses both; under `pytest -n 2` (scripts/test.sh) each worker takes one.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def build_tiny_pipeline(path, safe_serialization=True):
    """A tiny, randomly initialised Stable Diffusion pipeline saved as a diffusers folder
    (`safe_serialization=False`: with pickled `.bin` weights only, which loading must refuse)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from families import tiny_tokenizer

    torch.manual_seed(0)
    tok = tiny_tokenizer(max_length=64)
    vocab = tok.get_vocab()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2,
                                        max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
                                        eos_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 32), norm_num_groups=8, cross_attention_dim=32,
                                attention_head_dim=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(16, 16), norm_num_groups=8, latent_channels=4, sample_size=16,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(path), safe_serialization=True)
    if not safe_serialization:  # transformers writes safetensors whatever it is told: pickle by hand
        from safetensors.torch import load_file

        pickled = {"model.safetensors": "pytorch_model.bin",
                   "diffusion_pytorch_model.safetensors": "diffusion_pytorch_model.bin"}
        for st in sorted(Path(path).rglob("*.safetensors")):
            torch.save(load_file(str(st)), st.with_name(pickled[st.name]))
            st.unlink()
    return path


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipe")


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread; two threads crawl when another process holds a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    """{family: folder} of tiny random-init pipelines of every family (tests/families.py), built once."""
    from families import FAMILIES, build

    root = tmp_path_factory.mktemp("families")
    return {f: build(f, root / f) for f in FAMILIES}
