import torch

from erasure.frozen import FrozenOriginal
from erasure.models import load_pipeline
from erasure.params import select_unet


def test_frozen_prediction_uses_originals_of_the_trainable_subset(tiny_pipeline_dir):
    unet = load_pipeline(str(tiny_pipeline_dir)).unet
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 500])
    emb = torch.randn(2, 16, 32)
    with torch.no_grad():
        before = unet(x, t, emb).sample
    trainable = select_unet(unet, "xattn")
    frozen = FrozenOriginal(unet, trainable)
    assert frozen.nbytes() == sum(p.numel() * 4 for p in trainable.values())
    with torch.no_grad():
        for p in trainable.values():
            p.add_(0.5)
    after = unet(x, t, emb).sample
    star = frozen(x, t, emb).sample
    assert not torch.allclose(after, before)
    assert torch.allclose(star, before, atol=1e-6)
    assert not star.requires_grad and after.requires_grad
    assert set(frozen.changed()) == set(trainable)
