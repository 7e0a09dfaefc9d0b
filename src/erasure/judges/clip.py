"""Zero-shot CLIP judge (transformers CLIPModel, hub id or local folder, safetensors only).

CLIP accuracy as the CA paper defines it: an image counts when it is closer to "A photo depicts <text>"
than to "A photo depicts <contrast>". CLIP score is 100 * max(cos, 0) from the model's own outputs
(torchmetrics' CLIPScore is broken with transformers 5).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Judge, JudgeError, target

PREFIX = "A photo depicts "
DEFAULT_MODEL = "openai/clip-vit-large-patch14"


class ClipJudge(Judge):
    name = "clip"

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu"):
        """`device`: where the CLIP runs (the run's device); features come back on the CPU."""
        from transformers import CLIPModel, CLIPProcessor

        self.device = torch.device(device)
        try:
            self.model = CLIPModel.from_pretrained(model, use_safetensors=True).eval().to(self.device)
            self.processor = CLIPProcessor.from_pretrained(model)
        except OSError as e:
            raise JudgeError(f"clip judge: cannot load CLIP model {model!r} (a folder or hub id with "
                             f"safetensors weights, tokenizer and preprocessor config): {e}") from None
        self.model_id = str(model)

    @torch.no_grad()
    def image_features(self, images: np.ndarray) -> torch.Tensor:
        inputs = self.processor(images=list(images), return_tensors="pt")
        f = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
        f = f if isinstance(f, torch.Tensor) else f.pooler_output
        return torch.nn.functional.normalize(f.float(), dim=-1).cpu()

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        inputs = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        f = self.model.get_text_features(input_ids=inputs["input_ids"].to(self.device),
                                         attention_mask=inputs["attention_mask"].to(self.device))
        f = f if isinstance(f, torch.Tensor) else f.pooler_output
        return torch.nn.functional.normalize(f.float(), dim=-1).cpu()

    def score(self, images: np.ndarray, probe: dict) -> np.ndarray:
        """Cosine to the target text minus cosine to the contrast text (0 contrast: plain cosine)."""
        t = target(probe, self.name)
        texts = [PREFIX + t["text"]] + ([PREFIX + t["contrast"]] if t.get("contrast") else [])
        sims = self.image_features(images) @ self.text_features(texts).T
        s = sims[:, 0] - sims[:, 1] if sims.shape[1] == 2 else sims[:, 0]
        return s.numpy().astype(np.float64)

    def detect(self, images: np.ndarray, probe: dict) -> np.ndarray:
        t = target(probe, self.name)
        if not t.get("contrast"):
            raise JudgeError(f"clip judge: probe {probe.get('name')!r} has no target.contrast (CLIP accuracy "
                             "compares the target text with its anchor)")
        return self.score(images, probe) > 0

    def clip_score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        """Per image, 100 * max(cos(image, its prompt), 0)."""
        cos = (self.image_features(images) * self.text_features(list(prompts))).sum(-1)
        return (100 * cos.clamp(min=0)).numpy().astype(np.float64)

    def describe(self) -> dict:
        import transformers

        return {"judge": self.name, "model": self.model_id, "transformers": transformers.__version__,
                "threshold": "target closer than contrast", "prefix": PREFIX}
