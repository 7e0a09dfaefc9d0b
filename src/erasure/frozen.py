"""The frozen original model, held only as far as an objective needs it.

An erasure run trains a subset of tensors. The original model's prediction eps* is the same
module evaluated with the original values of just those tensors swapped in
(`torch.func.functional_call`), so an ESD-x or CA-xattn run keeps one UNet plus copies of its
cross-attention weights, not a second UNet.
"""

from __future__ import annotations

import torch
from torch import nn


class FrozenOriginal:
    def __init__(self, module: nn.Module, trainable: dict[str, nn.Parameter]):
        self.module = module
        self.originals = {name: p.detach().clone() for name, p in trainable.items()}

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        return torch.func.functional_call(self.module, self.originals, args, kwargs, strict=False)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.originals.values())

    def changed(self, atol: float = 0.0) -> dict[str, torch.Tensor]:
        """Current values of the tensors that moved away from their originals (for a delta)."""
        params = dict(self.module.named_parameters())
        return {n: params[n].detach().clone() for n, o in self.originals.items()
                if not torch.allclose(params[n].detach(), o, atol=atol, rtol=0)}
