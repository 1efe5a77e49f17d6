"""Fused graphs (onnxruntime's transformer optimizer before int8): every family's graph fuses what its structure
allows and computes the same logits; int8 quantizes the fused attention; the fallback nodes found on one graph are
named in the other."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from distill.export.fusion import FUSED_ATTENTION, fuse_graph, matching_nodes
from distill.export.int8_search import weight_matmuls
from distill.export.onnx_graph import export_onnx
from distill.export.quantize import quantize_int8
from distill.export.smoothing import SMOOTH_SUFFIX, smoothing_scales
from tests.test_families import FAMILIES, tiny_model

# what fuses per family: BERT's attention pattern in BERT, RoBERTa and ELECTRA; DistilBERT (its mask applied by
# Where), relative-position (MPNet, DeBERTa)
# and rotary (ModernBERT) attention stay unfused, their layer norms and GELUs fuse where the pattern matches
ATTENTION_FUSES = {"bert", "roberta", "xlm-roberta", "electra"}


def run(path, ids, mask):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids, "attention_mask": mask})


def feeds():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 60, (3, 11)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return ids, mask


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = tmp_path_factory.mktemp("graphs")
    paths = {}
    for model_type in FAMILIES:
        paths[model_type] = directory / f"{model_type}.onnx"
        export_onnx(tiny_model(model_type), paths[model_type], 17)
    return paths


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_every_family_fuses_what_it_can_to_the_same_logits(exported, model_type, tmp_path):
    fused = tmp_path / "fused.onnx"
    fusion = fuse_graph(exported[model_type], fused, fuse_embeddings=False)
    ids, mask = feeds()
    if not fusion.fused:
        assert model_type not in ATTENTION_FUSES and fusion.note and not fused.exists()
        return
    assert (fusion.ops.get(FUSED_ATTENTION) == 3) == (model_type in ATTENTION_FUSES), fusion.ops
    assert "EmbedLayerNormalization" not in fusion.ops, "per-row int8 tables need the embedding Gather"
    for plain, merged in zip(run(exported[model_type], ids, mask), run(fused, ids, mask), strict=True):
        np.testing.assert_allclose(merged, plain, atol=1e-4)
    apart = tmp_path / "projections.onnx"  # the graph per-token int8 quantizes
    projected = fuse_graph(exported[model_type], apart, fuse_embeddings=False, projections=True)
    assert FUSED_ATTENTION not in projected.ops
    assert (projected.ops.get("MultiHeadAttention") == 3) == (model_type in ATTENTION_FUSES), projected.ops
    for plain, merged in zip(run(exported[model_type], ids, mask), run(apart, ids, mask), strict=True):
        np.testing.assert_allclose(merged, plain, atol=1e-4)


def test_dynamic_int8_of_a_fused_graph_quantizes_its_attention_after_smoothing(exported, tmp_path):
    fused = tmp_path / "fused.onnx"
    assert fuse_graph(exported["bert"], fused, fuse_embeddings=False).fused
    attention = [n for n in weight_matmuls(fused, gemm=False) if n.startswith(FUSED_ATTENTION)]
    assert len(attention) == 3, "a fused Attention is a weight product like a MatMul"
    channel_max = {name: np.linspace(0.1, 4.0, 32).astype(np.float32) for name in attention}  # hidden 32
    scales = smoothing_scales(fused, channel_max, 0.7)
    assert set(scales) == set(attention)
    int8 = tmp_path / "fused.int8.onnx"
    quantize_int8(fused, int8, "dynamic", per_channel=True, reduce_range=False, smoothing=scales)
    graph = onnx.load(str(int8)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QAttention") == 3 and "Attention" not in ops
    producers = {output: node for node in graph.node for output in node.output}
    quantized_inputs = [producers[n.input[0]] for n in graph.node if n.op_type == "QAttention"]
    assert all(q.op_type == "DynamicQuantizeLinear" and q.input[0].endswith(SMOOTH_SUFFIX) for q in quantized_inputs), \
        "each attention input divided by its s before it is quantized"
    ids, mask = feeds()
    for plain, quantized in zip(run(exported["bert"], ids, mask), run(int8, ids, mask), strict=True):
        assert np.abs(quantized - plain).max() < 0.2 * np.abs(plain).max() + 0.05


def test_fallback_nodes_name_their_counterparts_in_the_other_graph(exported, tmp_path):
    plain = exported["bert"]
    fused = tmp_path / "fused.onnx"
    fuse_graph(plain, fused, fuse_embeddings=False)
    fused_nodes = {n.name: n for n in onnx.load(str(fused)).graph.node}
    second_attention = [n for n in fused_nodes if fused_nodes[n].op_type == FUSED_ATTENTION][1]
    ffn = next(n for n in weight_matmuls(fused, gemm=False, attention=False) if "intermediate" in n)
    qkv = [n for n in weight_matmuls(plain, gemm=False) if "layer.1/attention/self/" in n]
    assert len(qkv) == 3
    assert matching_nodes(fused, plain, [second_attention, ffn]) == [*qkv, ffn]
    assert matching_nodes(plain, fused, [*qkv, ffn]) == [second_attention, ffn]



def _export_student(trained_run, tiny_base, tmp_path, spec):
    from distill.core.tokenizer import load_tokenizer
    from distill.data.tasks import encode_tasks, load_tasks
    from distill.export.artifact import export_artifact
    from distill.recipe import load_recipe

    recipe = load_recipe(trained_run / "recipe.yaml")
    tasks = load_tasks(recipe)
    tokenizer = load_tokenizer(tiny_base)
    encode_tasks(tasks, tokenizer, recipe.max_length)
    return export_artifact(trained_run / "out" / "students" / "s2", tmp_path / "a", tasks, spec, recipe.max_length,
                           tokenizer.pad_token_id)


def test_a_fused_graph_that_changes_the_logits_ships_unfused(trained_run, tiny_base, tmp_path, monkeypatch, caplog):
    from onnx import numpy_helper

    import distill.export.artifact as exporter
    from distill.recipe import ExportSpec

    real = exporter.fuse_graphs

    def fuse_wrongly(graphs, unfused, fuse_embeddings):
        fusions = real(graphs, unfused, fuse_embeddings)
        for path in graphs.values():  # a broken fusion: every LayerNorm scale of the fused graph doubled
            model = onnx.load(str(path))
            fused = {n.input[2] for n in model.graph.node if n.op_type == "SkipLayerNormalization"}
            for tensor in model.graph.initializer:
                if tensor.name in fused:
                    tensor.CopyFrom(numpy_helper.from_array(2 * numpy_helper.to_array(tensor), tensor.name))
            onnx.save(model, str(path))
        return fusions

    monkeypatch.setattr(exporter, "fuse_graphs", fuse_wrongly)
    manifest = _export_student(trained_run, tiny_base, tmp_path, ExportSpec(int8_min_agreement=None))
    assert manifest["fusion"]["model"]["fused"] is False
    assert "fused logits differ from PyTorch" in manifest["fusion"]["model"]["note"] and "ship unfused" in caplog.text
    assert manifest["checks"]["fp32_max_abs_diff"] <= 1e-4 and manifest["checks"]["int8"]["dynamic"]["graph"] == \
        "unfused"
    ops = {n.op_type for n in onnx.load(str(tmp_path / "a" / "model.onnx")).graph.node}
    assert "SkipLayerNormalization" not in ops and not list((tmp_path / "a").glob("*unfused*"))


def test_fuse_false_exports_the_graph_as_traced(trained_run, tiny_base, tmp_path):
    from distill.recipe import ExportSpec

    manifest = _export_student(trained_run, tiny_base, tmp_path, ExportSpec(fuse=False, int8_min_agreement=None))
    assert "fusion" not in manifest and manifest["checks"]["int8"]["dynamic"]["graph"] == "unfused"
    assert "QAttention" not in {n.op_type for n in onnx.load(str(tmp_path / "a" / "model.int8.onnx")).graph.node}
