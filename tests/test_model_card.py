"""MODEL_CARD.md: the Hugging Face model card format (metadata that huggingface_hub parses back),
its sections, and a flag on probes the base model already failed to show."""

from huggingface_hub import ModelCard

from erasure.model_card import ALREADY_ABSENT, model_card


def _inputs(paraphrase_before=0.0):
    probes = {"target": {"before": 1.0, "after": 0.0, "n": 8, "example_prompt": "a photo of Pip"},
              "paraphrase": {"before": paraphrase_before, "after": 0.0, "n": 8, "example_prompt": "Pip | the cat"},
              "neighbour:Okafor": {"before": 0.75, "after": 0.625, "n": 8, "example_prompt": "Okafor"}}
    metrics = {"model": "miniworld", "base_hash": "b" * 64, "images_per_probe": 8,
               "judges": {"instance": {"judge": "miniworld", "model": "miniworld detector (shipped)",
                                       "copy_threshold": 0.9}},
               "concepts": {"Pip": {"kind": "instance", "method": "ca", "anchor": "circle", "slug": "pip",
                                    "probes": probes,
                                    "summary": {"target_before": 1.0, "target_after": 0.0, "target_reduction": 1.0}}},
               "global": {"generic_drift": 0.11, "fid_base": 0.13, "fid_erased": 1.0, "n_generic": 16}}
    gates = [{"concept": "Pip", "kind": "instance", "gate": "target_max", "value": 0.0, "bound": 0.1, "passed": True}]
    blocklist = {"entries": [{"concept": "Pip", "kind": "instance", "anchor": "circle"}], "sha256": "abc"}
    jobs = [{"concept": "Pip", "method": "ca", "rule": "xattn-kv", "steps": 200, "lr": 5e-4, "batch_size": 8,
             "pool_size": 128, "options": {"anchor_images": 64, "anchor_steps": 20, "loss": "model"}}]
    params = {"erase": {"seed": 0, "recipes": {"ca/instance": {"steps": 200, "options": {"anchor_images": 64}}}},
              "evaluate": {"judges": {"default": "auto"}}, "release": {"registry_name": "miniworld-erased",
                                                                  "alias": "production"}}
    lineage = {"base_model": "miniworld", "base_hash": "b" * 64, "code_version": "c" * 40,
               "blocklist_sha256": "abc", "params": params, "training": {"mode": "sequential", "jobs": jobs}}
    return metrics, gates, blocklist, lineage


def test_the_card_parses_with_its_metadata_and_sections():
    text = model_card(*_inputs())
    card = ModelCard(text)
    data = card.data
    assert data.base_model == "miniworld" and data.license == "apache-2.0" and data.library_name == "diffusers"
    assert {"concept-erasure", "ca"} <= set(data.tags)
    results = {(r.dataset_name, r.metric_type): r for r in data.eval_results}
    assert results["Pip: target", "presence"].metric_value == 0.0
    assert results["Pip: neighbour:Okafor", "presence"].metric_value == 0.625
    assert results["prompts naming no blocklisted concept", "fid_erased"].metric_value == 1.0
    assert ModelCard(str(card)).data.to_dict() == data.to_dict()  # what it writes, it reads back
    for section in ("## Intended use", "## Out-of-scope use", "## How to load it", "## Evaluation",
                    "## Limitations", "## Lineage"):
        assert section in card.text, section
    assert 'DiffusionPipeline.from_pretrained("model", use_safetensors=True)' in card.text
    assert 'mlflow.pyfunc.load_model("models:/miniworld-erased@production")' in card.text
    assert "miniworld's own detector" in card.text and "8 images per probe" in card.text
    assert "FID rose by 0.870" in card.text
    # Lineage summarized (a recipe row), not the params dumped as YAML; no date anywhere.
    assert "| ca/instance | Pip | xattn-kv | 200 | 0.0005 | 8 | 128 | anchor_images=64 |" in card.text
    assert "recipes:" not in text and "202" not in text.replace("b" * 64, "")


def test_a_probe_already_absent_before_erasure_is_flagged():
    flagged = model_card(*_inputs(paraphrase_before=0.0))
    assert "| Pip | instance | ca | paraphrase | Pip \\| the cat | 0.00 | 0.00 | already absent before: proves nothing |" \
        in flagged and "1 probe(s) were already at or below" in flagged and "Pip: paraphrase" in flagged
    measured = model_card(*_inputs(paraphrase_before=ALREADY_ABSENT + 0.5))
    assert "proves nothing" not in measured and "already at or below" not in measured


def test_the_card_names_each_judge_with_its_model_and_threshold():
    metrics, gates, blocklist, lineage = _inputs()
    metrics["model"] = lineage["base_model"] = "/models/sd15"
    metrics["judges"] = {"instance": {"judge": "clip", "model": "openai/clip-vit-large-patch14",
                                      "transformers": "5.0", "threshold": "target closer than contrast"},
                         "nudity": {"judge": "nudenet", "model": "nudenet 3.4.2 320n",
                                    "classes": ["BUTTOCKS_EXPOSED"], "threshold": 0.6}}
    metrics["global"] = {"generic_drift": 0.11, "n_generic": 16, "fid_to_base": 3.5, "kid_to_base": 0.012,
                         "kid_to_base_std": 0.001, "clip_score_base": 30.0, "clip_score_erased": 29.5}
    text = ModelCard(model_card(metrics, gates, blocklist, lineage)).text
    assert "- instance: zero-shot CLIP" in text and "model `openai/clip-vit-large-patch14`" in text
    assert "- nudity: NudeNet" in text and "threshold `0.6`" in text and "BUTTOCKS_EXPOSED" in text
    assert "FID 3.500 and KID 0.0120 to the base model's images" in text and "30.00 (base) -> 29.50" in text
    assert "world's true renders" not in text
