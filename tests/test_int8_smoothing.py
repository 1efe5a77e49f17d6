"""SmoothQuant-style activation smoothing before int8: the same fp32 function, a smaller int8 error."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from distill.core.tokenizer import load_tokenizer
from distill.data.tasks import encode_tasks, load_tasks
from distill.export.artifact import export_artifact
from distill.export.outliers import input_channel_max, outlier_channels
from distill.export.quantize import quantize_int8
from distill.export.smoothing import SMOOTH_SUFFIX, smooth_inputs, smoothed_channel_max, smoothing_scales
from distill.recipe import ExportSpec, load_recipe


def _two_matmuls(path, weights):
    """x [1, tokens, K] -> x·W1 and x·W2 (one input read by two MatMuls, as Q and K read theirs)."""
    k, n = weights[0].shape
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in range(2)]
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, None, n]) for i in range(2)],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_smoothing_keeps_the_fp32_function_and_cuts_the_int8_error(tmp_path):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(64, 32)).astype(np.float32) for _ in range(2)]
    x = rng.normal(size=(1, 50, 64)).astype(np.float32)
    x[..., [5, 40]] *= 50  # BERT-like outlier channels in every token
    source = tmp_path / "fp32.onnx"
    _two_matmuls(source, weights)
    channel_max = input_channel_max(source, ["mm0", "mm1"], [{"x": x, "attention_mask": np.ones((1, 50))}])
    scales = smoothing_scales(source, channel_max, alpha=0.7)
    assert np.array_equal(scales["mm0"], scales["mm1"]), "MatMuls reading one input share its s"
    assert scales["mm0"][5] > 10 * np.median(scales["mm0"]), "the outlier channels are divided the most"

    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})

    smoothed = tmp_path / "smoothed.onnx"
    smoothed.write_bytes(source.read_bytes())
    smooth_inputs(smoothed, scales)
    graph = onnx.load(str(smoothed)).graph
    assert [n.op_type for n in graph.node] == ["Mul", "MatMul", "MatMul"], "one Mul for the shared input"
    assert all(n.input[0] == f"x{SMOOTH_SUFFIX}" for n in graph.node if n.op_type == "MatMul")
    reference = run(source)
    for got, want in zip(run(smoothed), reference, strict=True):
        assert np.allclose(got, want, rtol=1e-4, atol=1e-3), "the same product in fp32"

    plain, smooth = tmp_path / "plain.int8.onnx", tmp_path / "smooth.int8.onnx"
    quantize_int8(source, plain, "dynamic", True, False, embeddings="fp32", int8_heads=True)
    quantize_int8(source, smooth, "dynamic", True, False, embeddings="fp32", int8_heads=True, smoothing=scales)

    def error(path):
        return max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(run(path), reference, strict=True))

    assert error(smooth) < error(plain) / 2


def test_export_smooths_the_int8_graphs_only_and_records_alpha(trained_run, tiny_base, tmp_path):
    recipe = load_recipe(trained_run / "recipe.yaml")
    tasks = load_tasks(recipe)
    tokenizer = load_tokenizer(tiny_base)
    encode_tasks(tasks, tokenizer, recipe.max_length)

    def smoothing_muls(path):
        nodes = onnx.load(str(path)).graph.node
        return [n for n in nodes if n.op_type == "Mul" and n.output[0].endswith(SMOOTH_SUFFIX)]

    for alpha in (0.7, None):
        out = tmp_path / str(alpha)
        manifest = export_artifact(trained_run / "out" / "students" / "s2", out, tasks,
                                   ExportSpec(int8_smoothing=alpha), recipe.max_length, tokenizer.pad_token_id)
        assert manifest["checks"]["int8"]["dynamic"]["smoothing"] == alpha
        assert not smoothing_muls(out / "model.onnx")
        assert bool(smoothing_muls(out / "model.int8.onnx")) == (alpha is not None)


def test_the_outlier_split_looks_for_the_largest_channels_after_smoothing():
    channel_max = {"a": np.array([10.0, 1.0, 4.0, 1.0]), "b": np.array([1.0, 2.0, 3.0, 4.0])}
    scales = {"a": np.array([20.0, 1.0, 1.0, 1.0], dtype=np.float32)}  # smoothing shrank channel 0 to 0.5
    seen = smoothed_channel_max(channel_max, scales)
    assert outlier_channels(channel_max, 1)["a"].tolist() == [0]
    assert outlier_channels(seen, 1)["a"].tolist() == [2], "channel 0 is no longer the largest the int8 MatMul sees"
    assert np.array_equal(seen["b"], channel_max["b"]), "a node without s is unchanged"
