"""The release as an MLflow pyfunc model: prompts (and optional seeds) in, images out.

Logged as a model from code: MLflow saves this file with the model and runs it when the model is
loaded, so loading unpickles nothing, and a machine that loads `models:/<name>@<alias>` needs
mlflow, diffusers and torch, not this project. The diffusers folder is the model's artifact
"diffusers" (a copy of the release's `model/`, inside the run's artifacts).

    model = mlflow.pyfunc.load_model("models:/miniworld-erased@production")
    images = model.predict(pandas.DataFrame({"prompt": ["a painting by Vasquez"], "seed": [0]}))
    # uint8 array (N, H, W, 3); a list of prompts works too (seeds 0, 1, ...)
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


def _rows(model_input) -> tuple[list[str], list[int]]:
    """(prompts, seeds) from a DataFrame with a `prompt` (and optional `seed`) column, a dict of
    such columns, a list of prompts or one prompt; missing seeds are the row numbers."""
    if isinstance(model_input, str):
        model_input = [model_input]
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # a pandas DataFrame
        model_input = {c: list(model_input[c]) for c in model_input.columns}
    if isinstance(model_input, dict):
        if "prompt" not in model_input:
            raise ValueError(f"expected a 'prompt' column, got columns {sorted(model_input)}")
        prompts = [str(p) for p in model_input["prompt"]]
        seeds = model_input.get("seed")
    else:
        prompts, seeds = [str(p) for p in model_input], None
    seeds = list(range(len(prompts))) if seeds is None else [int(s) for s in seeds]
    return prompts, seeds


class ErasedDiffusion(PythonModel):
    def load_context(self, context):
        from pathlib import Path

        from diffusers import DiffusionPipeline

        folder = Path(context.artifacts["diffusers"])
        # Served as released: with the base model's safety checker when it has one. Never unpickle.
        self.pipe = DiffusionPipeline.from_pretrained(str(folder), use_safetensors=True)
        self.pipe.set_progress_bar_config(disable=True)
        config = context.model_config or {}
        self.steps, self.guidance = int(config.get("steps", 25)), float(config.get("guidance", 5.0))

    def predict(self, context, model_input, params=None):
        import torch

        prompts, seeds = _rows(model_input)
        # One generator per image, seeded by its own seed, as the pipeline draws its evaluation images.
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        with torch.no_grad():
            out = self.pipe(prompt=prompts, num_inference_steps=self.steps, guidance_scale=self.guidance,
                            generator=gens, output_type="np").images
        return np.clip(np.rint(np.asarray(out) * 255), 0, 255).astype(np.uint8)


mlflow.models.set_model(ErasedDiffusion())
