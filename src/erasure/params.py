"""Which parameters an erasure method trains: the subset rules of METHODS.md, by diffusers names.

A rule selects UNet parameters by name (or, for `embedding`, text-encoder token-embedding rows).
Everything else stays frozen, and only the selected tensors need an original copy kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_ATTN_PROJ = ("to_q", "to_k", "to_v", "to_out")


def _xattn_kv(name: str, module: nn.Module | None) -> bool:
    return "attn2.to_k" in name or "attn2.to_v" in name


def _xattn(name: str, module: nn.Module | None) -> bool:
    return "attn2" in name


def _attn(name: str, module: nn.Module | None) -> bool:
    return any(f"{a}.{p}" in name for a in ("attn1", "attn2") for p in _ATTN_PROJ)


def _noxattn(name: str, module: nn.Module | None) -> bool:
    # The ESD paper's ESD-u: all but cross-attention, the time embedding and the output layers.
    return not ("attn2" in name or name.startswith(("time_embedding.", "conv_norm_out.", "conv_out.")))


def _noxattn_linear(name: str, module: nn.Module | None) -> bool:
    # The newer ESD code's ESD-u: every Linear / Conv2d outside cross-attention; norms stay frozen.
    return "attn2" not in name and isinstance(module, (nn.Linear, nn.Conv2d))


def _full(name: str, module: nn.Module | None) -> bool:
    return True


UNET_RULES: dict[str, Callable[[str, nn.Module | None], bool]] = {
    "xattn-kv": _xattn_kv,
    "xattn": _xattn,
    "attn": _attn,
    "noxattn": _noxattn,
    "noxattn-linear": _noxattn_linear,
    "full": _full,
}
RULES = tuple(UNET_RULES) + ("embedding",)


def select_unet(unet: nn.Module, rule: str) -> dict[str, nn.Parameter]:
    """UNet parameters chosen by `rule`, by name, in model order."""
    if rule not in UNET_RULES:
        raise ValueError(f"parameter rule {rule!r} unknown; expected one of {', '.join(RULES)}")
    keep = UNET_RULES[rule]
    owners = {f"{mname}.{pname}" if mname else pname: mod
              for mname, mod in unet.named_modules() for pname, _ in mod.named_parameters(recurse=False)}
    chosen = {name: p for name, p in unet.named_parameters() if keep(name, owners.get(name))}
    if not chosen:
        raise ValueError(f"parameter rule {rule!r} selects no parameter of this UNet "
                         "(does it have cross-attention layers named 'attn2'?)")
    return chosen


def token_embedding(text_encoder: nn.Module) -> nn.Parameter:
    return text_encoder.get_input_embeddings().weight


def embedding_row_mask(text_encoder: nn.Module, token_ids: list[int]) -> torch.Tensor:
    """Mask (vocab, 1) that keeps only the target tokens' rows: gradients elsewhere are zeroed."""
    weight = token_embedding(text_encoder)
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype)
    mask[torch.as_tensor(sorted(set(token_ids)), dtype=torch.long)] = 1.0
    return mask


def count(params: dict[str, nn.Parameter]) -> int:
    return sum(p.numel() for p in params.values())
