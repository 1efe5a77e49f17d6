"""Model cards and Hugging Face directories: what a user hands on with an artifact."""

import json

import numpy as np
import pytest
import yaml

from distill.core.errors import DistillInputError
from distill.core.manifest import verify_artifact
from distill.runtime import OnnxForward, Predictor


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_every_artifact_has_a_model_card_with_the_reports_numbers(trained_run):
    out = trained_run / "out"
    report = json.loads((out / "report.json").read_text())
    for name in ("teacher", "s2"):
        card = (out / "artifacts" / name / "README.md").read_text()
        front = _front_matter(card)
        assert front["library_name"] == "onnx" and front["pipeline_tag"] == "text-classification"
        assert {"text-classification", "token-classification"} <= set(front["tags"])
        assert "base_model" not in front, "a local base model has no hub id to name"
        entry_name = "baseline" if name == "teacher" else name
        int8 = next(m for m in report["models"] if m["name"] == entry_name and m["format"] == "onnx-int8")
        results = front["model-index"][0]["results"]
        assert [r["task"]["name"] for r in results] == ["sentiment", "ner"]
        for result in results:
            assert result["metrics"][0]["value"] == pytest.approx(int8["scores"][result["task"]["name"]], abs=5e-5)
        assert f"| onnx-int8 | `model.int8.onnx` | {int8['size_bytes'] / 1e6:.1f} | {int8['latency_ms']['p50']:.2f} |" \
            in card
        assert (f"| {int8['latency_median_length_ms']['p50']:.2f} | {int8['gops']:.0f} "
                f"({100 * int8['peak_share']:.1f} %) |") in card
        assert report["hardware"]["cpu"] in card
    student = (out / "artifacts" / "s2" / "README.md").read_text()
    assert "| layers | 4 | 2 |" in student, "the structure table compares the student with the teacher"


def test_hf_directories_load_with_optimum_and_match_the_predictor(trained_run):
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTModelForTokenClassification
    from transformers import AutoTokenizer, pipeline

    artifact = trained_run / "out" / "artifacts" / "s2"
    texts = ["the film was great fun", "a dull and boring mess", "alice went to paris with bob"]
    predictor = Predictor(artifact)  # int8, one text at a time: what the hf graph is a copy of
    expected = [p["sentiment"]["label"] for p in predictor.predict(texts)]

    sentiment = artifact / "hf" / "sentiment"
    model = ORTModelForSequenceClassification.from_pretrained(sentiment)
    classify = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(sentiment))
    assert [classify(text)[0]["label"] for text in texts] == expected

    ner = artifact / "hf" / "ner"
    tokenizer = AutoTokenizer.from_pretrained(ner)
    tagger = ORTModelForTokenClassification.from_pretrained(ner)
    feeds = tokenizer(texts[2], return_tensors="np")
    logits = tagger(**{k: v for k, v in feeds.items() if k != "token_type_ids"}).logits
    reference = OnnxForward(artifact / "model.int8.onnx")("ner", feeds["input_ids"], feeds["attention_mask"])
    np.testing.assert_allclose(np.asarray(logits), reference, atol=1e-5)
    found = pipeline("token-classification", model=tagger, tokenizer=tokenizer)(texts[2])
    assert all(entity["entity"] in tagger.config.label2id for entity in found)


def test_a_changed_hf_file_is_caught_by_the_artifact_check(trained_run, tmp_path):
    import shutil

    copy = tmp_path / "s2"
    shutil.copytree(trained_run / "out" / "artifacts" / "s2", copy)
    assert set(json.loads((copy / "manifest.json").read_text())["hf_dirs"]) == {"sentiment", "ner"}
    with (copy / "hf" / "ner" / "config.json").open("a") as changed:
        changed.write(" ")
    with pytest.raises(DistillInputError, match=r"hf/ner/config\.json: sha256 differs"):
        verify_artifact(copy)
