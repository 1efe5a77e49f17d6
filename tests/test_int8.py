"""Int8 details: per-row embedding tables and the accuracy-aware fp32 fallback search."""

import logging

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from distill.core.tokenizer import load_tokenizer
from distill.data.tasks import encode_tasks, load_tasks
from distill.export.artifact import export_artifact
from distill.export.embeddings import embedding_gathers, quantize_rows
from distill.export.int8_search import logit_noise, search_fallbacks
from distill.export.outliers import OUTLIER_SUFFIX, input_channel_max, outlier_channels, split_outlier_channels
from distill.export.quantize import quantize_int8
from distill.recipe import ExportSpec, load_recipe
from distill.runtime import OnnxForward, Predictor


def test_quantize_rows_keeps_each_row_within_half_its_own_step():
    table = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    table[3] *= 100  # one row of large values must not coarsen the others
    table[7] = 0
    rows, scales = quantize_rows(table)
    assert rows.dtype == np.int8 and scales.shape == (50, 1)
    error = np.abs(rows * scales - table)
    assert np.all(error <= scales / 2 + 1e-6)
    assert np.all(rows[7] == 0) and np.abs(rows[3]).max() == 127
    assert error[np.arange(50) != 3].max() < 0.02


def test_qat_rounds_embedding_rows_to_the_exported_values():
    import torch

    from students.modules import fake_quant_rows

    table = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    table[4] = 0
    rows, scales = quantize_rows(table)
    faked = fake_quant_rows(torch.from_numpy(table)).numpy()
    assert np.allclose(faked, rows * scales, atol=1e-6)


def _float_tables(path):
    graph = onnx.load(str(path)).graph
    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}, graph


def test_per_row_embeddings_replace_the_float_tables(trained_run, tmp_path):
    fp32 = trained_run / "out" / "artifacts" / "s2" / "model.onnx"
    gathers = embedding_gathers(fp32)
    assert any("word_embeddings" in name for name in gathers)
    files = {mode: tmp_path / f"{mode}.onnx" for mode in ("per_row", "per_tensor", "fp32")}
    for mode, path in files.items():
        quantize_int8(fp32, path, "dynamic", False, False, embeddings=mode)
    tables, _graph = _float_tables(files["per_row"])
    rows = [name for name in tables if name.endswith("_int8_rows")]
    assert len(rows) == 1 and "word_embeddings" in rows[0] and tables[rows[0]].dtype == np.int8
    left = embedding_gathers(files["per_row"])
    assert left and not any("word_embeddings" in name for name in left), "positions and token types stay fp32"
    assert embedding_gathers(fp32, token_tables_only=True) == [n for n in gathers if "word_embeddings" in n]
    assert files["per_row"].stat().st_size < files["fp32"].stat().st_size
    assert set(embedding_gathers(files["fp32"])) == set(gathers)
    per_token_tables = tmp_path / "per_token_per_tensor.onnx"
    quantize_int8(fp32, per_token_tables, "dynamic", False, False, embeddings="per_tensor", activations="per_token")
    assert not embedding_gathers(per_token_tables), "per-token products, every table in onnxruntime's int8"

    ids = np.array([[2, 17, 30, 9, 3, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    outputs = {mode: OnnxForward(path)("sentiment", ids, mask) for mode, path in files.items()}
    reference = OnnxForward(fp32)("sentiment", ids, mask)
    assert all(out.shape == reference.shape for out in outputs.values())
    assert np.abs(outputs["per_row"] - reference).max() < 0.5


def test_search_moves_the_noisiest_nodes_to_fp32_until_the_target():
    noise = {"a": 0.1, "b": 0.5, "c": 0.3, "d": 0.0}
    helpful = {"b", "c"}

    def agreement(nodes):
        return {"t": 0.99 + 0.004 * len(helpful & set(nodes)), "u": 1.0}

    done = search_fallbacks(list(noise), noise.get, agreement, target=0.997, max_nodes=4)
    assert done.nodes == ["b", "c"] and done.reached
    assert done.agreement_before["t"] == pytest.approx(0.99) and done.agreement["t"] == pytest.approx(0.998)

    capped = search_fallbacks(list(noise), noise.get, agreement, target=0.997, max_nodes=1)
    assert capped.nodes == ["b"] and not capped.reached

    calls = []

    def plateau(nodes):  # only the noisiest node helps; more nodes make it worse
        calls.append(list(nodes))
        return {"t": 0.99 + (0.004 if "b" in nodes else 0) - 0.001 * max(len(nodes) - 1, 0)}

    short = search_fallbacks(list(noise), noise.get, plateau, target=0.999, max_nodes=4)
    assert short.nodes == ["b"] and short.agreement["t"] == pytest.approx(0.994) and not short.reached
    assert calls[-1] == ["b"], "the graph is quantized again with the chosen nodes"

    def unused(_):
        raise AssertionError("no node is ranked when int8 already agrees")

    assert search_fallbacks(list(noise), unused, lambda _: {"t": 1.0}, 0.997, 4).nodes == []


def test_logit_noise_is_relative_to_the_logits():
    ref = {"t": [np.array([1.0, -1.0]), np.array([2.0, 0.0])]}
    assert logit_noise(ref, ref) == 0
    assert logit_noise(ref, {"t": [2 * x for x in ref["t"]]}) == pytest.approx(1.0)


def test_the_search_puts_the_nodes_in_fp32_where_the_outlier_split_falls_short(trained_run, tiny_base, tmp_path,
                                                                                  monkeypatch):
    import distill.export.artifact as exporter
    import distill.export.quantize as quantize

    recipe = load_recipe(trained_run / "recipe.yaml")
    tasks = load_tasks(recipe)
    tokenizer = load_tokenizer(tiny_base)
    encode_tasks(tasks, tokenizer, recipe.max_length)
    # all int8 0.5; one node split 0.6, two 0.7 (short of 0.99); one node in fp32: 1.0
    values = iter([0.5, 0.6, 0.7, 1.0] + [1.0] * 100)
    for module in (quantize, exporter):
        monkeypatch.setattr(module, "expected_agreement",
                            lambda tasks, *_: dict.fromkeys((t.info.name for t in tasks), next(values)))
    spec = ExportSpec(int8_activations="per_token", int8_min_agreement=0.99, int8_max_fallback_nodes=2,
                      int8_fallback="outliers")
    manifest = export_artifact(trained_run / "out" / "students" / "s2", tmp_path / "a", tasks, spec,
                               recipe.max_length, tokenizer.pad_token_id)
    search = manifest["checks"]["int8"]["dynamic"]["fallback_search"]["model"]
    assert search["reached"] and search["fallback"] == "fp32" and len(search["nodes"]) == 1
    assert search["fell_short"]["fallback"] == "outliers" and len(search["fell_short"]["nodes"]) == 2
    assert search["fell_short"]["dev_agreement"]["sentiment"] == pytest.approx(0.7)
    graph = onnx.load(str(tmp_path / "a" / "model.int8.onnx")).graph
    by_name = {n.name: n.op_type for n in graph.node}
    assert by_name[search["nodes"][0]] in ("MatMul", "Attention"), "the node stays fp32, whole"
    assert not [name for name in by_name if name.endswith(OUTLIER_SUFFIX)], "no outlier split left in the graph"


def test_fp32_that_barely_helps_is_not_worth_its_latency(trained_run, tiny_base, tmp_path, monkeypatch, caplog):
    import distill.export.artifact as exporter
    import distill.export.quantize as quantize

    recipe = load_recipe(trained_run / "recipe.yaml")
    tasks = load_tasks(recipe)
    tokenizer = load_tokenizer(tiny_base)
    encode_tasks(tasks, tokenizer, recipe.max_length)
    # split: 0.6, 0.7 (short of 0.99); in fp32: 0.72, 0.75, less than half of the 0.29 still missing
    values = iter([0.5, 0.6, 0.7, 0.72, 0.75] + [0.7] * 100)
    for module in (quantize, exporter):
        monkeypatch.setattr(module, "expected_agreement",
                            lambda tasks, *_: dict.fromkeys((t.info.name for t in tasks), next(values)))
    spec = ExportSpec(int8_activations="per_token", int8_min_agreement=0.99, int8_max_fallback_nodes=2,
                      int8_fallback="outliers")
    with caplog.at_level(logging.INFO):
        manifest = export_artifact(trained_run / "out" / "students" / "s2", tmp_path / "a", tasks, spec,
                                   recipe.max_length, tokenizer.pad_token_id)
    assert "fp32 agrees 0.7500 against 0.7000, too little for its latency" in caplog.text
    search = manifest["checks"]["int8"]["dynamic"]["fallback_search"]["model"]
    assert search["fallback"] == "outliers" and len(search["nodes"]) == 2 and "fell_short" not in search
    assert search["dev_agreement"]["sentiment"] == pytest.approx(0.7)
    names = {n.name for n in onnx.load(str(tmp_path / "a" / "model.int8.onnx")).graph.node}
    fused = {n.name: n.op_type for n in onnx.load(str(tmp_path / "a" / "model.onnx")).graph.node}
    matmuls = [n for n in search["nodes"] if fused[n] == "MatMul"]
    assert all(f"{n}{OUTLIER_SUFFIX}" in names for n in matmuls), "quantized again with the outlier split"
    assert all(n in names for n in search["nodes"] if fused[n] == "Attention"), "a fused attention stays fp32"


@pytest.mark.parametrize("fallback", ["fp32", "block_int8", "outliers"])
def test_export_takes_the_chosen_fallback_nodes_out_of_int8(trained_run, tiny_base, tmp_path, monkeypatch, caplog,
                                                            fallback):
    import distill.export.artifact as exporter
    import distill.export.quantize as quantize

    recipe = load_recipe(trained_run / "recipe.yaml")
    tasks = load_tasks(recipe)
    tokenizer = load_tokenizer(tiny_base)
    encode_tasks(tasks, tokenizer, recipe.max_length)
    # each node taken out helps a little but never enough, in fp32 neither: the search keeps the two noisiest
    # and warns
    calls = iter(range(1000))
    for module in (quantize, exporter):
        monkeypatch.setattr(module, "expected_agreement", lambda tasks, *_: dict.fromkeys(
            (t.info.name for t in tasks), 0.5 + 0.1 * min(next(calls), 2)))
    # onnxruntime's per-tensor int8 with the fused QAttention (tests/test_per_token.py: the per-token default)
    spec = ExportSpec(quantization=["dynamic", "static"], int8_min_agreement=0.99, int8_max_fallback_nodes=2,
                      int8_fallback=fallback, calibration_examples=8, int8_activations="per_tensor")
    with caplog.at_level(logging.WARNING):
        manifest = export_artifact(trained_run / "out" / "students" / "s2", tmp_path / "a", tasks, spec,
                                   recipe.max_length, tokenizer.pad_token_id)
    dynamic = manifest["checks"]["int8"]["dynamic"]
    search = dynamic["fallback_search"]["model"]
    assert not search["reached"] and len(search["nodes"]) == 2 and dynamic["fallback"] == fallback
    assert search["measure"] == "expected" and search["dev_agreement"]["sentiment"] == pytest.approx(0.7)
    assert set(search["dev_label_agreement"]) == {"sentiment", "ner"}, "the counted agreement of the chosen graph"
    noisiest = sorted(search["noisiest_nodes"], key=lambda n: -search["noisiest_nodes"][n])[:2]
    assert search["nodes"] == noisiest
    graph = onnx.load(str(tmp_path / "a" / "model.int8.onnx")).graph
    by_name = {n.name: n.op_type for n in graph.node}
    assert dynamic["graph"] == "fused" and manifest["fusion"]["model"]["ops"]["Attention"] == 2
    fused_fp32 = {n.name: n.op_type for n in onnx.load(str(tmp_path / "a" / "model.onnx")).graph.node}
    matmuls = [name for name in search["nodes"] if fused_fp32[name] == "MatMul"]
    # a fused Attention cannot be split or block-quantized: it falls back to fp32 whatever int8_fallback says
    assert all(by_name[name] == "Attention" for name in search["nodes"] if fused_fp32[name] == "Attention")
    if fallback == "fp32":
        assert all(by_name[name] == "MatMul" for name in matmuls)
    elif fallback == "outliers":
        small = [name for name in by_name if name.endswith(OUTLIER_SUFFIX)]
        assert sorted(small) == sorted(f"{name}{OUTLIER_SUFFIX}" for name in matmuls)
        assert all(by_name[name] == "MatMul" for name in small), "the outlier channels stay fp32"
        assert dynamic["outlier_channels"] == 8 and "outlier_channels" in manifest["checks"]["int8"]["static"]
    else:
        assert not set(matmuls) & {n for n, op in by_name.items() if op == "MatMul"}
        assert sum(op == "MatMulNBits" for op in by_name.values()) == len(matmuls)
    assert any(op == "MatMulInteger" for op in by_name.values())
    heads = [n for n, op in by_name.items() if n.startswith(("/model/sentiment/", "/model/ner/"))
             and op in ("MatMul", "Gemm", "MatMulInteger", "MatMulNBits")]
    assert len(heads) == 2 and all(by_name[n] in ("MatMul", "Gemm") for n in heads), "the heads (a Gemm too) stay fp32"
    assert "below export.int8_min_agreement" in caplog.text
    static = manifest["checks"]["int8"]["static"]
    assert static["graph"] == "unfused (static QDQ)"
    assert static["fallback_search"]["model"]["searched_in"] == "dynamic", "static reuses the search"
    if fallback != "block_int8":  # MatMulNBits nodes take new names
        unfused = {n.name for n in onnx.load(str(tmp_path / "a" / "model.int8-static.onnx")).graph.node}
        assert set(static["fallback_search"]["model"]["nodes"]) <= unfused, "fused nodes named in the unfused graph"
    assert len(static["fallback_search"]["model"]["nodes"]) == len(matmuls) + 3 * (2 - len(matmuls))
    for precision in ("int8", "int8-static"):
        assert Predictor(tmp_path / "a", precision=precision).predict(["the film was great fun"])
    assert not list((tmp_path / "a").glob("*probe*"))


def test_int8_agreement_labels_searches_on_the_counted_labels(trained_run, tiny_base, tmp_path, monkeypatch):
    import distill.export.artifact as exporter
    import distill.export.quantize as quantize

    recipe = load_recipe(trained_run / "recipe.yaml")
    tasks = load_tasks(recipe)
    tokenizer = load_tokenizer(tiny_base)
    encode_tasks(tasks, tokenizer, recipe.max_length)
    counted = iter([0.5, 0.995, 0.995])  # nothing int8 agrees on half the dev labels; one node out: enough

    def fake_counted(tasks, split, *_):
        return dict.fromkeys((t.info.name for t in tasks), next(counted) if split == "dev" else 1.0)

    def no_estimate_on_dev(tasks, split, *_):
        assert split == "test", "int8_agreement: labels must not search on the estimate"
        return {}

    for module in (quantize, exporter):
        monkeypatch.setattr(module, "label_agreement", fake_counted)
        monkeypatch.setattr(module, "expected_agreement", no_estimate_on_dev)
    spec = ExportSpec(int8_activations="per_token", int8_min_agreement=0.99, int8_agreement="labels",
                      int8_max_fallback_nodes=3)
    manifest = export_artifact(trained_run / "out" / "students" / "s2", tmp_path / "a", tasks, spec,
                               recipe.max_length, tokenizer.pad_token_id)
    search = manifest["checks"]["int8"]["dynamic"]["fallback_search"]["model"]
    assert search["measure"] == "labels" and search["reached"] and len(search["nodes"]) == 1


def _matmul_graph(weight: np.ndarray, path) -> None:
    """x [1, tokens, K] -> MatMul(x, W): two nodes reading the same input."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="first"),
             helper.make_node("MatMul", ["x", "w2"], ["z"], name="second")]
    k, n = weight.shape
    graph = helper.make_graph(
        nodes, "matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, n]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, None, n])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(weight[:, ::-1].copy(), "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_outlier_channels_run_in_fp32_and_shrink_the_int8_error(tmp_path):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(32, 16)).astype(np.float32)
    x = rng.normal(size=(1, 40, 32)).astype(np.float32)
    x[..., [3, 20]] *= 60  # two channels far larger than the rest in every token, as in BERT's FFN inputs
    _matmul_graph(weight, tmp_path / "fp32.onnx")
    feeds = [{"x": x, "attention_mask": np.ones((1, 40), dtype=np.int64)}]
    largest = input_channel_max(tmp_path / "fp32.onnx", ["first", "second"], feeds)
    assert np.allclose(largest["first"], np.abs(x[0]).max(axis=0))
    channels = outlier_channels(largest, 2)
    assert channels["first"].tolist() == [3, 20] == channels["second"].tolist()

    def run(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})

    reference = run(tmp_path / "fp32.onnx")
    split = tmp_path / "split.onnx"
    split.write_bytes((tmp_path / "fp32.onnx").read_bytes())
    assert split_outlier_channels(split, channels) == [f"first{OUTLIER_SUFFIX}", f"second{OUTLIER_SUFFIX}"]
    graph = onnx.load(str(split)).graph
    assert sum(n.op_type == "Gather" for n in graph.node) == 1, "nodes reading the same input share the split"
    for got, want in zip(run(split), reference, strict=True):
        assert np.allclose(got, want, atol=1e-3), "the split is the same product in fp32"
    plain, decomposed = tmp_path / "plain.int8.onnx", tmp_path / "split.int8.onnx"
    # both MatMuls feed graph outputs, so they count as heads: int8_heads quantizes them anyway
    quantize_int8(tmp_path / "fp32.onnx", plain, "dynamic", True, False, embeddings="fp32", int8_heads=True)
    quantize_int8(tmp_path / "fp32.onnx", decomposed, "dynamic", True, False, embeddings="fp32",
                  fallback_nodes=["first", "second"], fallback="outliers", outliers=channels, int8_heads=True)
    ops = [n.op_type for n in onnx.load(str(decomposed)).graph.node]
    assert "MatMulInteger" in ops and ops.count("MatMul") == 2, "the big products int8, the outlier rows fp32"
    heads_kept = tmp_path / "heads.int8.onnx"
    quantize_int8(tmp_path / "fp32.onnx", heads_kept, "dynamic", True, False, embeddings="fp32")
    assert [n.op_type for n in onnx.load(str(heads_kept)).graph.node] == ["MatMul", "MatMul"], "heads stay fp32"

    def error(path):
        return max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(run(path), reference, strict=True))

    assert error(decomposed) < error(plain) / 4


def test_int8_checks_and_search_run_at_the_check_batch_size(trained_run, tiny_base, tmp_path, monkeypatch):
    import distill.data.evaluation as evaluation
    import distill.export.quantize as quantize

    recipe = load_recipe(trained_run / "recipe.yaml")
    tasks = load_tasks(recipe)
    tokenizer = load_tokenizer(tiny_base)
    encode_tasks(tasks, tokenizer, recipe.max_length)
    batches: dict[str, set[int]] = {}
    real_predict = evaluation.predict

    def spy(forward, task, split, pad_id, batch_size=64):
        session = getattr(forward, "session", None)
        model = "torch" if session is None else str(session._model_path).rsplit("/", 1)[-1]
        batches.setdefault(model, set()).add(batch_size)
        return real_predict(forward, task, split, pad_id, batch_size)

    monkeypatch.setattr(evaluation, "predict", spy)
    monkeypatch.setattr(quantize, "predict", spy)
    spec = ExportSpec(quantization=["dynamic", "static"], int8_min_agreement=1.0, int8_max_fallback_nodes=1,
                      calibration_examples=8, check_batch_size=3)
    manifest = export_artifact(trained_run / "out" / "students" / "s2", tmp_path / "a", tasks, spec,
                               recipe.max_length, tokenizer.pad_token_id)
    int8_models = {m for m in batches if "int8" in m or "probe" in m}
    assert {"model.int8.onnx", "model.int8-static.onnx"} <= int8_models
    assert all(batches[m] == {3} for m in int8_models), batches
    assert all(manifest["checks"]["int8"][mode]["batch_size"] == 3 for mode in ("dynamic", "static"))


def test_search_doubles_then_bisects_for_the_fewest_nodes():
    noise = {f"n{k}": 1.0 - k / 10 for k in range(8)}
    counts = []

    def agreement(nodes):
        counts.append(len(nodes))
        return {"t": 0.99 + 0.001 * len(nodes)}  # the target is reached from 5 nodes on

    done = search_fallbacks(list(noise), noise.get, agreement, target=0.995, max_nodes=8)
    assert done.nodes == ["n0", "n1", "n2", "n3", "n4"] and done.reached
    assert counts == [0, 1, 2, 4, 8, 6, 5], "doubling to 8, then bisecting between 4 and 8"


def test_local_noise_ranks_a_matmul_with_an_outlier_input_channel_first(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from distill.export.int8_search import local_int8_noise

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "w")
    boost = np.ones(8, np.float32)
    boost[0] = 100.0  # one channel far larger than the rest: one int8 scale per tensor is coarse for the others
    nodes = [helper.make_node("MatMul", ["x", "w"], ["plain"], name="plain"),
             helper.make_node("Mul", ["x", "boost"], ["x_boosted"], name="boost"),
             helper.make_node("MatMul", ["x_boosted", "w"], ["boosted"], name="boosted")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("plain", "boosted")],
        [weight, numpy_helper.from_array(boost, "boost")])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    feeds = [{"x": rng.normal(size=(1, 6, 8)).astype(np.float32), "attention_mask": np.ones((1, 6), np.int64)}
             for _ in range(4)]
    noise = local_int8_noise(path, ["plain", "boosted"], feeds, per_channel=True, reduce_range=False)
    assert 0 < noise["plain"] < 0.02 < noise["boosted"]
