"""Per-token dynamic int8 (the default `export.int8_activations`): each token's row quantized on its own scale."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from distill.core.tokenizer import load_tokenizer
from distill.data.tasks import encode_tasks, load_tasks
from distill.export.artifact import export_artifact
from distill.export.int8_search import local_int8_noise
from distill.export.per_token import int8_weight, per_token_round_trip, quantize_per_token
from distill.export.quantize import quantize_int8
from distill.recipe import ExportSpec, load_recipe
from distill.runtime import OnnxForward, Predictor


def _products_graph(path, weights: dict[str, np.ndarray], gemm_weight: np.ndarray, gemm_bias: np.ndarray,
                    opset: int = 17) -> None:
    """x [batch, tokens, 8] read by MatMuls first, second, third; h [rows, 8] by a Gemm (B transposed, bias)."""
    nodes = [helper.make_node("MatMul", ["x", f"w_{name}"], [f"y_{name}"], name=name) for name in weights]
    nodes.append(helper.make_node("Gemm", ["h", "w_gemm", "b_gemm"], ["y_gemm"], name="gemm", transB=1))
    initializers = [numpy_helper.from_array(w, f"w_{name}") for name, w in weights.items()]
    initializers += [numpy_helper.from_array(gemm_weight, "w_gemm"), numpy_helper.from_array(gemm_bias, "b_gemm")]
    graph = helper.make_graph(
        nodes, "products",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", 8]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, ["rows", 8])],
        [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, None) for name in [*weights, "gemm"]],
        initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))


@pytest.mark.parametrize("opset", [17, 18])  # from 18 on, ReduceMax takes its axes as an input
def test_each_token_is_rounded_on_its_own_scale_and_excluded_products_stay_float(tmp_path, opset):
    rng = np.random.default_rng(0)
    weights = {name: rng.normal(size=(8, 6)).astype(np.float32) for name in ("first", "second", "third")}
    gemm_weight, gemm_bias = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    _products_graph(tmp_path / "fp32.onnx", weights, gemm_weight, gemm_bias, opset)
    quantized = quantize_per_token(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", exclude=["second"], only=None,
                                   per_channel=True, reduce_range=False)
    assert quantized == ["first", "third", "gemm"]
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulIntegerToFloat") == 3 and ops.count("MatMul") == 1, "the excluded product stays float"
    assert ops.count("QuantizeLinear") == 2, "products reading one input share its quantization (x, h)"
    x = rng.normal(size=(2, 4, 8)).astype(np.float32)
    x[0, 1] *= 200  # one token far larger than the rest: per tensor, it would coarsen every other token
    h = rng.normal(size=(3, 8)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x, "h": h}), strict=True))

    def dequantized(w):
        q_weight, scale = int8_weight(w, per_channel=True, reduce_range=False)
        return q_weight.astype(np.float32) * scale

    for name in ("first", "third"):
        assert np.allclose(got[f"y_{name}"], per_token_round_trip(x) @ dequantized(weights[name]), atol=1e-4)
        exact = x @ weights[name]
        small = np.abs(got[f"y_{name}"][0, 0] - exact[0, 0]).max() / np.abs(exact[0, 0]).max()
        assert small < 0.02, "the token beside the large one keeps its precision"
    assert np.allclose(got["y_second"], x @ weights["second"], atol=1e-5)
    assert np.allclose(got["y_gemm"], per_token_round_trip(h) @ dequantized(gemm_weight.T) + gemm_bias, atol=1e-4)
    only = quantize_per_token(tmp_path / "fp32.onnx", tmp_path / "one.onnx", exclude=[], only=["third"],
                              per_channel=False, reduce_range=True)
    assert only == ["third"]
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "one.onnx")).graph.initializer}
    q_weight = next(v for k, v in stored.items() if k.endswith("_per_token_int8"))
    assert np.abs(q_weight).max() == 64, "reduce_range: 7-bit weights, as onnxruntime's"


@pytest.mark.parametrize("opset", [17, 18])
def test_asymmetric_rounds_each_tokens_range_around_its_center_and_adds_the_center_back(tmp_path, opset):
    rng = np.random.default_rng(1)
    weights = {name: rng.normal(size=(8, 6)).astype(np.float32) for name in ("first", "second")}
    gemm_weight, gemm_bias = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    _products_graph(tmp_path / "fp32.onnx", weights, gemm_weight, gemm_bias, opset)
    for asymmetric in (False, True):
        quantize_per_token(tmp_path / "fp32.onnx", tmp_path / f"{asymmetric}.onnx", exclude=[], only=None,
                           per_channel=True, reduce_range=False, asymmetric=asymmetric)
    x = rng.normal(size=(2, 4, 8)).astype(np.float32)
    x[..., 3] -= 40  # one channel large and of one sign in every token, as LayerNorm outputs carry them
    h = (np.abs(rng.normal(size=(3, 8))) + 5).astype(np.float32)  # lopsided rows through a Gemm with a bias

    def run(asymmetric):
        session = ort.InferenceSession(str(tmp_path / f"{asymmetric}.onnx"), providers=["CPUExecutionProvider"])
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x, "h": h}), strict=True))

    def dequantized(w):
        q_weight, scale = int8_weight(w, per_channel=True, reduce_range=False)
        return q_weight.astype(np.float32) * scale

    symmetric, centred = run(False), run(True)
    for name in ("first", "second"):
        expected = per_token_round_trip(x, asymmetric=True) @ dequantized(weights[name])
        assert np.allclose(centred[f"y_{name}"], expected, atol=1e-3), "the center's product is added back"
    assert np.allclose(centred["y_gemm"], per_token_round_trip(h, asymmetric=True) @ dequantized(gemm_weight.T)
                       + gemm_bias, atol=1e-3)
    rounded = per_token_round_trip(x, asymmetric=True)
    assert np.abs(rounded - x).max() < 0.6 * np.abs(per_token_round_trip(x) - x).max(), "finer steps"

    def error(outputs, name):
        exact = x @ weights[name]
        return np.sqrt(np.mean((outputs[f"y_{name}"] - exact) ** 2))

    assert error(centred, "first") < error(symmetric, "first")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "True.onnx")).graph.node]
    assert ops.count("ReduceMin") == 2 and ops.count("QuantizeLinear") == 2, "one center per input (x, h)"

    # the accuracy search's probe (one node alone) and its first ranking round the way the graph does
    quantize_per_token(tmp_path / "fp32.onnx", tmp_path / "probe.onnx", exclude=[], only=["first"],
                       per_channel=True, reduce_range=False, asymmetric=True)
    probe = {n.name: n.op_type for n in onnx.load(str(tmp_path / "probe.onnx")).graph.node}
    assert probe["first_center_add"] == "Add" and probe["second"] == "MatMul" and "ReduceMin" in probe.values()
    feeds = [{"x": x, "h": h, "attention_mask": np.ones(x.shape[:2], np.int64)}]
    noise = {activations: local_int8_noise(tmp_path / "fp32.onnx", ["first"], feeds, True, False, activations)
             for activations in ("per_token", "per_token_asymmetric")}
    assert noise["per_token_asymmetric"]["first"] < noise["per_token"]["first"]


def test_qat_fakes_the_per_token_rounding_of_the_export():
    import torch

    from students.modules import fake_quant_tokens

    values = np.random.default_rng(2).normal(size=(2, 5, 16)).astype(np.float32)
    values[1, 3] *= 50
    values[0, 2] = 0
    faked = fake_quant_tokens(torch.from_numpy(values).requires_grad_())
    assert np.allclose(faked.detach().numpy(), per_token_round_trip(values), atol=1e-6)
    faked.sum().backward()  # straight through


@pytest.fixture(scope="module")
def per_token_export(trained_run, tiny_base, tmp_path_factory):
    import distill.export.quantize as quantize

    # all int8 agrees on half the dev labels, one node in fp32 on all of them
    values = iter([0.5] + [1.0] * 100)
    patch = pytest.MonkeyPatch()
    patch.setattr(quantize, "expected_agreement",
                  lambda tasks, *_: dict.fromkeys((t.info.name for t in tasks), next(values)))
    recipe = load_recipe(trained_run / "recipe.yaml")
    tasks = load_tasks(recipe)
    tokenizer = load_tokenizer(tiny_base)
    encode_tasks(tasks, tokenizer, recipe.max_length)
    out = tmp_path_factory.mktemp("per-token") / "a"
    spec = ExportSpec(quantization=["dynamic", "static"], int8_activations="per_token", int8_min_agreement=0.99,
                      int8_max_fallback_nodes=1, int8_fallback="fp32", calibration_examples=8)
    try:
        manifest = export_artifact(trained_run / "out" / "students" / "s2", out, tasks, spec, recipe.max_length,
                                   tokenizer.pad_token_id)
    finally:
        patch.undo()
    return out, manifest


def test_auto_takes_the_first_scheme_whose_every_product_int8_graph_reaches_the_target_and_searches_the_last(
        trained_run, tiny_base, tmp_path, monkeypatch):
    import distill.export.artifact as exporter

    recipe = load_recipe(trained_run / "recipe.yaml")
    tasks = load_tasks(recipe)
    tokenizer = load_tokenizer(tiny_base)
    encode_tasks(tasks, tokenizer, recipe.max_length)
    student = trained_run / "out" / "students" / "s2"

    def dev_agreements(*shares):  # one per call of expected_agreement, the last one from then on
        left = list(shares)
        return lambda tasks, *_: dict.fromkeys((t.info.name for t in tasks), left.pop(0) if len(left) > 1 else left[0])

    def ops(path):
        return {n.op_type for n in onnx.load(str(path)).graph.node}

    both = dict.fromkeys(("sentiment", "ner"), 0.995)
    monkeypatch.setattr(exporter, "expected_agreement", dev_agreements(0.995))
    spec = ExportSpec(quantization=["dynamic", "static"], int8_min_agreement=0.99, calibration_examples=8)
    assert spec.int8_activations == "auto"
    manifest = export_artifact(student, tmp_path / "a", tasks, spec, recipe.max_length, tokenizer.pad_token_id)
    dynamic, static = manifest["checks"]["int8"]["dynamic"], manifest["checks"]["int8"]["static"]
    assert dynamic["activations"] == "per_tensor" and dynamic["graph"] == "fused"
    assert dynamic["activations_auto"] == {"chose": "per_tensor", "reached": True, "measure": "expected",
                                           "target": 0.99, "dev_agreement_all_int8": {"per_tensor": both}}
    assert "fallback_search" not in dynamic and dynamic["fp32_nodes"] == 0, "every product int8, no search"
    assert static["fallback_search"]["model"] == {"nodes": [], "fallback": "outliers", "searched_in": "dynamic"}
    assert "DynamicQuantizeLinear" in ops(tmp_path / "a" / "model.int8.onnx")
    assert "MatMulIntegerToFloat" not in ops(tmp_path / "a" / "model.int8.onnx")
    assert not list((tmp_path / "a").glob("*.auto.onnx")), "the trial graph is gone"
    assert Predictor(tmp_path / "a").batch_size == 1, "per-tensor labels hold at the batch size checked"

    only_dynamic = spec.model_copy(update={"quantization": ["dynamic"]})
    monkeypatch.setattr(exporter, "expected_agreement", dev_agreements(0.98, 0.985, 0.995))
    manifest = export_artifact(student, tmp_path / "b", tasks, only_dynamic, recipe.max_length, tokenizer.pad_token_id)
    dynamic = manifest["checks"]["int8"]["dynamic"]
    assert dynamic["activations"] == "per_token_asymmetric" and dynamic["activations_auto"]["reached"]
    assert dynamic["graph"] == "fused, MultiHeadAttention (per-token int8)"
    tried = dynamic["activations_auto"]["dev_agreement_all_int8"]
    assert {scheme: shares["ner"] for scheme, shares in tried.items()} == {
        "per_tensor": 0.98, "per_token": 0.985, "per_token_asymmetric": 0.995}, "each scheme in turn, fastest first"
    assert "fallback_search" not in dynamic and dynamic["smoothing"] is None, "asymmetric graphs are not smoothed"
    int8_graph = onnx.load(str(tmp_path / "b" / "model.int8.onnx")).graph
    assert not [n for n in int8_graph.node if n.name.endswith("_smooth")], "no smoothing Mul"
    assert {"MatMulIntegerToFloat", "ReduceMin", "MultiHeadAttention"} <= {n.op_type for n in int8_graph.node}
    assert not list((tmp_path / "b").glob("*per-token*")) and not list((tmp_path / "b").glob("*unfused*"))
    assert Predictor(tmp_path / "b").batch_size == 16, "per-token labels do not depend on the batch"

    # none on target: the search starts from the fastest scheme within 0.001 of the best
    for name, shares, searched in (("c", (0.98, 0.981, 0.983, 0.98), "per_token_asymmetric"),
                                   ("d", (0.98, 0.981, 0.9819, 0.98), "per_token"),
                                   ("e", (0.9805, 0.981, 0.9812, 0.98), "per_tensor")):
        monkeypatch.setattr(exporter, "expected_agreement", dev_agreements(*shares))
        manifest = export_artifact(student, tmp_path / name, tasks, only_dynamic, recipe.max_length,
                                   tokenizer.pad_token_id)
        dynamic = manifest["checks"]["int8"]["dynamic"]
        assert dynamic["activations"] == searched and dynamic["activations_auto"]["chose"] == searched
        assert not dynamic["activations_auto"]["reached"] and "fallback_search" in dynamic
        assert ("ReduceMin" in ops(tmp_path / name / "model.int8.onnx")) == (searched == "per_token_asymmetric")
        assert ("MatMulIntegerToFloat" in ops(tmp_path / name / "model.int8.onnx")) == (searched != "per_tensor")
        assert Predictor(tmp_path / name).batch_size == (1 if searched == "per_tensor" else 16)
        assert not list((tmp_path / name).glob("*.auto.onnx"))


def test_the_default_int8_quantizes_a_graph_fused_with_its_projections_apart_per_token(per_token_export):
    out, manifest = per_token_export
    dynamic = manifest["checks"]["int8"]["dynamic"]
    assert dynamic["activations"] == "per_token" and dynamic["graph"] == "fused, MultiHeadAttention (per-token int8)"
    assert manifest["fusion"]["model"]["ops"]["Attention"] == 2, "the fp32 model keeps its fused attention"
    int8_ops = dynamic["fused_ops"]["model"]
    assert "Attention" not in int8_ops and int8_ops["MultiHeadAttention"] == 2 and int8_ops["SkipLayerNormalization"]
    ops = [n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node]
    assert "MatMulIntegerToFloat" in ops and "DynamicQuantizeLinear" not in ops and "QAttention" not in ops
    search = dynamic["fallback_search"]["model"]
    assert len(search["nodes"]) == 1 and search["nodes"][0] in {n.name for n in onnx.load(
        str(out / "model.int8.onnx")).graph.node if n.op_type == "MatMul"}, "the search's node stays an fp32 MatMul"
    static = manifest["checks"]["int8"]["static"]
    assert "activations" not in static and static["fallback_search"]["model"]["nodes"] == search["nodes"]
    assert not list(out.glob("*.mha.onnx")) and not list(out.glob("*unfused*"))
    assert Predictor(out).batch_size == 16, "labels that do not depend on the batch need no batch of one"


def test_per_token_int8_labels_do_not_depend_on_the_batch(per_token_export):
    out, _ = per_token_export
    forward = OnnxForward(out / "model.int8.onnx")
    rng = np.random.default_rng(3)
    alone = rng.integers(5, 30, size=(1, 12))
    others = rng.integers(5, 30, size=(3, 12))
    batch = np.concatenate([alone, others])
    mask = np.ones_like(batch)
    for task in forward.output_tasks:
        by_itself = forward(task, alone, mask[:1])
        in_company = forward(task, batch, mask)[:1]
        assert np.allclose(by_itself, in_company, atol=1e-5), task
    # padded beside a longer text, as the Predictor batches texts of different lengths
    longer = np.concatenate([np.pad(alone, ((0, 0), (0, 6))), rng.integers(5, 30, size=(1, 18))])
    longer_mask = np.ones_like(longer)
    longer_mask[0, 12:] = 0
    for task in forward.output_tasks:
        padded = forward(task, longer, longer_mask)[:1]
        by_itself = forward(task, alone, mask[:1])
        if padded.ndim == 3:  # token tags: the real tokens
            padded = padded[:, :12]
        assert np.allclose(by_itself, padded, atol=1e-4), task
    per_tensor = out.parent / "per_tensor.int8.onnx"
    quantize_int8(out / "model.onnx", per_tensor, "dynamic", True, False)
    forward = OnnxForward(per_tensor)
    moved = max(float(np.abs(forward(t, alone, mask[:1]) - forward(t, batch, mask)[:1]).max())
                for t in forward.output_tasks)
    assert moved > 1e-3, "with one scale per tensor, the company an example keeps moves its logits"


def test_per_tensor_tables_under_per_token_products_are_quantized_even_when_fused(per_token_export, tmp_path):
    from distill.export.embeddings import embedding_gathers
    from distill.export.fusion import fuse_graph

    out, _ = per_token_export
    fused = tmp_path / "embed-fused.onnx"
    assert fuse_graph(out / "model.onnx", fused, fuse_embeddings=True).ops.get("EmbedLayerNormalization") == 1
    int8 = tmp_path / "int8.onnx"
    quantize_int8(fused, int8, "dynamic", True, False, embeddings="per_tensor", activations="per_token")
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert "QEmbedLayerNormalization" in ops and "EmbedLayerNormalization" not in ops and not embedding_gathers(int8)
    assert "MatMulIntegerToFloat" in ops and "DynamicQuantizeMatMul" not in ops


def test_keeping_a_fused_attention_in_fp32_keeps_its_projections_under_per_token(tmp_path):
    from distill.export.fusion import attention_projections, fuse_graph
    from distill.export.onnx_graph import export_onnx
    from tests.test_families import tiny_model

    plain, apart = tmp_path / "plain.onnx", tmp_path / "apart.onnx"
    export_onnx(tiny_model("bert"), plain, 17)
    assert fuse_graph(plain, apart, fuse_embeddings=False, projections=True).ops["MultiHeadAttention"] == 3
    graph = onnx.load(str(apart)).graph
    first = next(n for n in graph.node if n.op_type == "MultiHeadAttention")
    kept = attention_projections(apart, [first.name, "something_else"])
    by_name = {n.name: n for n in graph.node}
    assert kept[-1] == "something_else" and len(kept) == 4
    assert all(by_name[name].op_type == "MatMul" for name in kept[:3])


def test_qat_of_the_inputs_follows_the_export_and_hashes_as_before_per_tensor(recipe_file):
    from distill.recipe import load_recipe
    from distill.stage_inputs import student_hash_inputs

    def with_qat(scales):
        def edit(recipe):
            recipe["students"][0].update(qat_epochs=1, qat_activations=True)
            recipe.setdefault("export", {})["int8_activations"] = scales
        return load_recipe(recipe_file(edit))

    per_token, per_tensor = with_qat("per_token"), with_qat("per_tensor")
    assert student_hash_inputs(per_token, per_token.students[0], "c")["int8_activations"] == "per_token"
    assert "int8_activations" not in student_hash_inputs(per_tensor, per_tensor.students[0], "c"), \
        "QAT that simulates per-tensor int8, as before per-token existed, keeps its stage hash"
    static_only = per_token.model_copy(update={"export": per_token.export.model_copy(
        update={"quantization": ["static"]})})
    assert static_only.export.dynamic_int8_activations() == "per_tensor", "no dynamic graph: static's fixed scales"


def test_a_refitted_graph_that_changes_the_logits_leaves_per_token_int8_the_unfused_graph(trained_run, tiny_base,
                                                                                          tmp_path, monkeypatch):
    import distill.export.artifact as exporter

    recipe = load_recipe(trained_run / "recipe.yaml")
    tasks = load_tasks(recipe)
    tokenizer = load_tokenizer(tiny_base)
    encode_tasks(tasks, tokenizer, recipe.max_length)
    real, calls = exporter.fp32_parity, []

    def parity(*args):  # the fused fp32 graph passes; the MultiHeadAttention refit does not
        calls.append(1)
        return real(*args) if len(calls) == 1 else 1.0

    monkeypatch.setattr(exporter, "fp32_parity", parity)
    out = tmp_path / "a"
    manifest = export_artifact(trained_run / "out" / "students" / "s2", out, tasks,
                               ExportSpec(int8_min_agreement=None), recipe.max_length, tokenizer.pad_token_id)
    dynamic = manifest["checks"]["int8"]["dynamic"]
    assert dynamic["activations_auto"] == {"chose": "per_token", "reached": False,
                                           "why": "no export.int8_min_agreement"}
    assert dynamic["graph"].startswith("unfused (per-token int8: MultiHeadAttention logits differ from PyTorch")
    assert manifest["fusion"]["model"]["fused"], "the fp32 model stays fused"
    assert not list(out.glob("*per-token*")) and not list(out.glob("*unfused*"))
    assert Predictor(out).predict(["the film was great fun"])
