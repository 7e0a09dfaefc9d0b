"""A tiny random-init CLIP folder (safetensors weights, tokenizer, image processor) for judge tests.

32 px images, 8-wide projections: the numbers mean nothing, the plumbing is real `CLIPModel` code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def build_tiny_clip(d: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                      num_hidden_layers=1, vocab_size=64, max_position_embeddings=16,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=1),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                        num_hidden_layers=1, image_size=32, patch_size=8),
                     projection_dim=8)
    CLIPModel(cfg).save_pretrained(d, safe_serialization=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=16)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}), tokenizer=tok)
    proc.save_pretrained(d)
    return d
