"""The torch-free runtime over an exported artifact."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from distill.core.tokenizer import load_tokenizer
from distill.data.batching import pad_batch
from distill.data.tasks import encode_tasks, load_tasks
from distill.model.multitask import MultiTaskModel
from distill.recipe import load_recipe
from distill.runtime import OnnxForward, Predictor


def test_runtime_imports_without_torch_or_transformers(trained_run):
    artifact = trained_run / "out" / "artifacts" / "s2"
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from distill.runtime import Predictor
out = Predictor({str(artifact)!r}, precision='fp32').predict(['the film was great fun', 'alice went to paris'])
assert 'torch' not in sys.modules and 'transformers' not in sys.modules
print(__import__('json').dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out[0]) == {"sentiment", "ner"}
    assert out[0]["sentiment"]["label"] in ("pos", "neg")
    assert isinstance(out[1]["ner"], list)


def test_predictor_agrees_with_pytorch(trained_run, tiny_base):
    artifact = trained_run / "out" / "artifacts" / "s2"
    model = MultiTaskModel.load(trained_run / "out" / "students" / "s2")
    recipe = load_recipe(trained_run / "recipe.yaml")
    tasks = load_tasks(recipe)
    tokenizer = load_tokenizer(tiny_base)
    encode_tasks(tasks, tokenizer, recipe.max_length)
    texts = tasks[0].splits["test"].texts
    predictions = Predictor(artifact, precision="fp32").predict(texts)
    split = tasks[0].encoded["test"]
    batch = pad_batch("sentiment", split, np.arange(len(split)), tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).logits["sentiment"]
    expected = [tasks[0].info.labels[i] for i in logits.argmax(-1).tolist()]
    assert [p["sentiment"]["label"] for p in predictions] == expected


def test_entities_have_character_offsets(trained_run):
    artifact = trained_run / "out" / "artifacts" / "s2"
    predictor = Predictor(artifact, precision="fp32")
    text = "bob and carol went to rome"
    for entity in predictor.predict([text])[0]["ner"]:
        assert text[entity["start"] : entity["end"]] == entity["text"]
        assert entity["label"] in ("per", "loc")


def test_int8_session_runs(trained_run):
    forward = OnnxForward(trained_run / "out" / "artifacts" / "s2" / "model.int8.onnx", threads=1)
    ids = np.array([[2, 10, 11, 3]])
    assert forward("ner", ids, np.ones_like(ids)).shape[:2] == (1, 4)


def test_bench_sessions_do_not_spin_between_runs(trained_run):
    """Every model's session stays open while the bench times the others: spinning threads would steal cores."""
    from distill.bench.measure import ModelEntry, model_forward

    artifact = trained_run / "out" / "artifacts" / "s2"
    entry = ModelEntry("s2", "student", "onnx-int8", artifact, trained_run / "out" / "students" / "s2", 0)
    options = model_forward(entry, threads=1).session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    default = OnnxForward(artifact / "model.int8.onnx", threads=1).session.get_session_options()
    with pytest.raises(RuntimeError, match="allow_spinning"):  # not set: onnxruntime's default, spinning
        default.get_session_config_entry("session.intra_op.allow_spinning")


def test_int8_preset_follows_the_isa():
    from distill.core.int8_presets import int8_preset

    assert int8_preset(["avx2", "avx512f", "avx512_vnni"]) == {"preset": "vnni", "reduce_range": False}
    assert int8_preset(["avx2", "avx512f"]) == {"preset": "avx512", "reduce_range": True}
    assert int8_preset(["avx2"]) == {"preset": "avx2", "reduce_range": True}
    assert int8_preset([]) == {"preset": "generic", "reduce_range": False}


def test_predictor_refuses_a_missing_precision(trained_run, tmp_path):
    import shutil

    import pytest

    artifact = tmp_path / "a"
    shutil.copytree(trained_run / "out" / "artifacts" / "s2", artifact)
    (artifact / "model.int8.onnx").unlink()
    with pytest.raises(ValueError, match="no 'int8' model here"):
        Predictor(artifact, precision="int8")


def test_per_task_graphs_give_the_combined_graphs_predictions(trained_run, tmp_path, tiny_base):
    from distill.data.tasks import encode_tasks, load_tasks
    from distill.export.artifact import export_artifact
    from distill.recipe import ExportSpec
    from distill.runtime import model_files

    recipe = load_recipe(trained_run / "recipe.yaml")
    tasks = load_tasks(recipe)
    tokenizer = load_tokenizer(tiny_base)
    encode_tasks(tasks, tokenizer, recipe.max_length)
    out = tmp_path / "per-task"
    spec = ExportSpec(graphs="per_task", quantization=["dynamic"])
    manifest = export_artifact(trained_run / "out" / "students" / "s2", out, tasks, spec, recipe.max_length,
                               tokenizer.pad_token_id)
    assert manifest["graphs"] == "per_task"
    assert {n for n in manifest["files"] if n.endswith(".onnx")} == {
        "model.sentiment.onnx", "model.ner.onnx", "model.sentiment.int8.onnx", "model.ner.int8.onnx"}
    assert manifest["checks"]["fp32_max_abs_diff"] <= 1e-4
    assert set(model_files(out, "int8")) == {"sentiment", "ner"}
    texts = ["the film was great fun", "bob and carol went to rome"]
    combined = Predictor(trained_run / "out" / "artifacts" / "s2", precision="fp32").predict(texts)
    per_task = Predictor(out, precision="fp32").predict(texts)
    assert [p["sentiment"]["label"] for p in per_task] == [p["sentiment"]["label"] for p in combined]
    assert [p["ner"] for p in per_task] == [p["ner"] for p in combined]
    only_ner = Predictor(out, precision="int8", tasks=["ner"]).predict(texts)
    assert set(only_ner[0]) == {"ner"}


def test_keep_fp32_leaves_matching_nodes_unquantized(trained_run, tmp_path):
    import onnx

    from distill.export.quantize import quantize_int8

    fp32 = trained_run / "out" / "artifacts" / "s2" / "model.onnx"
    plain, partial = tmp_path / "plain.onnx", tmp_path / "partial.onnx"
    assert quantize_int8(fp32, plain, "dynamic", False, False) == []
    kept = quantize_int8(fp32, partial, "dynamic", False, False, keep_fp32=[r"layer\.\d+/output/dense/MatMul"])
    assert kept and all("/output/dense/MatMul" in name and "attention" not in name for name in kept)
    quantized = {n.name for n in onnx.load(str(partial)).graph.node if n.op_type == "MatMulInteger"}
    assert not any(name.startswith(k) for k in kept for name in quantized)
    assert partial.stat().st_size > plain.stat().st_size, "the kept weights stay 4-byte floats"


def test_keep_fp32_rejects_a_bad_pattern():
    import pytest

    from distill.recipe import ExportSpec

    with pytest.raises(ValueError, match="not a regular expression"):
        ExportSpec(keep_fp32=["layer.(("])


def test_int8_runs_by_default_at_the_batch_size_it_was_checked_at(trained_run, tmp_path):
    artifact = trained_run / "out" / "artifacts" / "s2"
    manifest = json.loads((artifact / "manifest.json").read_text())
    checked = manifest["checks"]["int8"]["dynamic"]["batch_size"]
    # per token: labels the batch does not move
    expected = {"per_token": 16, "per_token_asymmetric": 16, "per_tensor": checked}
    assert Predictor(artifact, precision="int8").batch_size == \
        expected[manifest["checks"]["int8"]["dynamic"]["activations"]]
    for activations, batch_size in expected.items():
        copy = tmp_path / activations
        shutil.copytree(artifact, copy)
        manifest["checks"]["int8"]["dynamic"]["activations"] = activations
        (copy / "manifest.json").write_text(json.dumps(manifest))
        assert Predictor(copy, precision="int8", verify=False).batch_size == batch_size, activations
    assert checked == 1
    assert Predictor(artifact, precision="fp32").batch_size == 16
    assert Predictor(artifact, precision="int8-static").batch_size == 16, "fixed scales: the batch does not matter"
    assert Predictor(artifact, precision="int8", batch_size=8).batch_size == 8
    with pytest.raises(ValueError, match="at least 1"):
        Predictor(artifact, precision="int8", batch_size=0)


def test_length_sorted_batches_keep_the_input_order(trained_run):
    artifact = trained_run / "out" / "artifacts" / "s2"
    texts = ["a long review of a film that went on and on for ever", "fine", "bob went to rome with carol", "ok then"]
    predictor = Predictor(artifact, precision="fp32", batch_size=3)
    alone = [predictor.predict([text])[0] for text in texts]
    batched = predictor.predict(texts)
    assert len({round(p["sentiment"]["score"], 6) for p in alone}) == len(texts), "scores tell the texts apart"
    for text, one, many in zip(texts, alone, batched, strict=True):
        assert all(e["text"] == text[e["start"] : e["end"]] for e in many["ner"])
        assert one["sentiment"]["label"] == many["sentiment"]["label"]
        assert abs(one["sentiment"]["score"] - many["sentiment"]["score"]) < 1e-5
        assert [(e["start"], e["end"], e["label"]) for e in one["ner"]] == \
               [(e["start"], e["end"], e["label"]) for e in many["ner"]]
