"""The model being fine-tuned: UNet + text encoder as one module, with only a chosen subset trainable.

One module (not two) so that Accelerate / DeepSpeed wrap a single model. `forward(x, t, cond)`
takes either text embeddings (float, precomputed while the text encoder is frozen) or token ids
(long, run through the text encoder, needed when its embedding rows are trained).

The `embedding` rule trains only the target tokens' embedding rows: they live in a small parameter
(rows x dim) patched over the token-embedding table, so no optimizer ever touches the other rows.
"""

from __future__ import annotations

import torch
from torch import nn

from .params import UNET_RULES, select_unet


class PatchedEmbedding(nn.Module):
    """A token embedding whose rows for `token_ids` come from a trainable parameter."""

    def __init__(self, base: nn.Embedding, token_ids: list[int]):
        super().__init__()
        self.base = base
        ids = torch.as_tensor(sorted(set(token_ids)), dtype=torch.long)
        self.register_buffer("token_ids", ids, persistent=False)
        self.rows = nn.Parameter(base.weight.detach()[ids].clone())
        lookup = torch.full((base.num_embeddings,), -1, dtype=torch.long)
        lookup[ids] = torch.arange(len(ids))
        self.register_buffer("lookup", lookup, persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.base(input_ids)
        slot = self.lookup[input_ids]
        hit = slot >= 0
        if hit.any():
            out = out.clone()
            out[hit] = self.rows[slot[hit]].to(out.dtype)
        return out

    def merged_weight(self) -> torch.Tensor:
        weight = self.base.weight.detach().clone()
        weight[self.token_ids] = self.rows.detach().to(weight.dtype)
        return weight


class EditableModel(nn.Module):
    def __init__(self, unet: nn.Module, text_encoder: nn.Module, rules: list[str],
                 embedding_token_ids: list[int] | None = None, time_ids: torch.Tensor | None = None,
                 pooled_dim: int | None = None):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        # SDXL (families.added_conditioning): the conditioning's last row carries the pooled text
        # embedding (its first `pooled_dim` values), passed with the time ids as added_cond_kwargs.
        self.pooled_dim = pooled_dim
        self.register_buffer("time_ids", time_ids, persistent=False)
        if time_ids is not None and "embedding" in rules:
            from .families import SDXL_EMBEDDING_RULE

            raise ValueError(SDXL_EMBEDDING_RULE)
        for p in self.parameters():
            p.requires_grad_(False)
        self.unet_trainable: dict[str, nn.Parameter] = {}
        for rule in rules:
            if rule in UNET_RULES:
                self.unet_trainable.update(select_unet(unet, rule))
        for p in self.unet_trainable.values():
            p.requires_grad_(True)
        self.patched: PatchedEmbedding | None = None
        if "embedding" in rules:
            if not embedding_token_ids:
                raise ValueError("the 'embedding' rule needs the target concept's token ids")
            holder = _embedding_holder(text_encoder)
            self._embedding_name = _embedding_weight_name(text_encoder, holder.token_embedding)
            self.patched = PatchedEmbedding(holder.token_embedding, embedding_token_ids)
            holder.token_embedding = self.patched
        self._sot_hooks: list = []

    @property
    def text_trainable(self) -> bool:
        return self.patched is not None

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if cond.dtype == torch.long:
            cond = self.text_encoder(cond)[0]
        if self.time_ids is None:
            return self.unet(x, t, encoder_hidden_states=cond).sample
        added = {"text_embeds": cond[:, -1, :self.pooled_dim], "time_ids": self.time_ids.expand(len(x), -1)}
        return self.unet(x, t, encoder_hidden_states=cond[:, :-1], added_cond_kwargs=added).sample

    def trainable(self) -> dict[str, nn.Parameter]:
        """Trainable parameters by their name in this module."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def set_trainable(self, names: set[str]) -> None:
        """Limit gradients to `names` (a subset of the trainable set), e.g. one concept's rule."""
        for n, p in self.named_parameters():
            if n in names:
                p.requires_grad_(True)
            elif p.requires_grad:
                p.requires_grad_(False)

    def delta_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors this edit may have changed, under pipeline component names (for a delta)."""
        out = {f"unet.{n}": p.detach().clone() for n, p in self.unet_trainable.items()}
        if self.patched is not None:
            out[f"text_encoder.{self._embedding_name}"] = self.patched.merged_weight()
        return out

    def release(self) -> None:
        """Leave the pipeline's modules plain again: edited rows merged into the embedding table,
        hooks removed, nothing requiring gradients (so save_pretrained writes standard keys)."""
        self.stop_gradient_first_token(False)
        if self.patched is not None:
            holder = _embedding_holder(self.text_encoder)
            with torch.no_grad():
                self.patched.base.weight.copy_(self.patched.merged_weight())
            holder.token_embedding = self.patched.base
        for p in self.parameters():
            p.requires_grad_(False)

    def stop_gradient_first_token(self, enable: bool = True) -> None:
        """Stop the gradient through the start-of-text token's key and value in every cross-attention.

        The start token carries no concept (its embedding is the same for every prompt); CA's
        reference code detaches its key/value so that the edit does not move it.
        """
        for h in self._sot_hooks:
            h.remove()
        self._sot_hooks = []
        if not enable:
            return
        for name, mod in self.unet.named_modules():
            if name.endswith(("attn2.to_k", "attn2.to_v")):
                self._sot_hooks.append(mod.register_forward_hook(_detach_first_token))


def _detach_first_token(module, inputs, output):
    return torch.cat([output[:, :1].detach(), output[:, 1:]], dim=1)


def _embedding_holder(text_encoder: nn.Module) -> nn.Module:
    for mod in text_encoder.modules():
        if isinstance(getattr(mod, "token_embedding", None), (nn.Embedding, PatchedEmbedding)):
            return mod
    raise ValueError(f"{type(text_encoder).__name__} has no 'token_embedding' module (expected a CLIP text encoder)")


def _embedding_weight_name(text_encoder: nn.Module, embedding: nn.Module) -> str:
    return next(f"{name}.weight" for name, mod in text_encoder.named_modules() if mod is embedding)
