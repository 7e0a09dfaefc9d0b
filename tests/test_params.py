import pytest
import torch

from erasure.miniworld.architecture import build_text_encoder, build_unet
from erasure.params import RULES, count, embedding_row_mask, select_unet


@pytest.fixture(scope="module")
def unet():
    return build_unet()


def test_rules_nest_as_documented(unet):
    sets = {r: set(select_unet(unet, r)) for r in RULES if r != "embedding"}
    total = sum(p.numel() for p in unet.parameters())
    assert sets["xattn-kv"] < sets["xattn"] < sets["full"]
    assert sets["xattn-kv"] < sets["attn"]
    assert not sets["noxattn"] & sets["xattn"]
    assert sets["noxattn"] | sets["xattn"] < sets["full"]  # time embedding and outputs stay out
    assert all("attn2.to_k" in n or "attn2.to_v" in n for n in sets["xattn-kv"])
    assert not any("norm" in n for n in sets["noxattn-linear"])
    assert count(select_unet(unet, "full")) == total


def test_noxattn_excludes_time_embedding_and_output(unet):
    names = set(select_unet(unet, "noxattn"))
    assert not any(n.startswith(("time_embedding.", "conv_out.", "conv_norm_out.")) for n in names)
    assert any("time_emb_proj" in n for n in names)  # resnet projections are not the time embedding


def test_unknown_rule_is_a_clear_error(unet):
    with pytest.raises(ValueError, match="expected one of"):
        select_unet(unet, "xatn")


def test_embedding_mask_keeps_only_target_rows():
    te = build_text_encoder(50, 1, 0, 1)
    mask = embedding_row_mask(te, [7, 9, 7])
    assert mask.shape == (50, 1) and mask.sum() == 2 and mask[7] == 1 and mask[8] == 0
    w = te.get_input_embeddings().weight
    w.register_hook(lambda g: g * mask)
    out = te(torch.tensor([[0, 7, 8, 9, 1]]))[0]
    (out * torch.randn(out.shape)).sum().backward()  # a plain sum of a LayerNorm output has zero gradient
    assert torch.count_nonzero(w.grad.abs().sum(1)) == 2
