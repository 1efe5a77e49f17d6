"""Int8 MatMuls whose few outlier input channels run in fp32 (the mixed decomposition of LLM.int8(), Dettmers et
al. 2022), with standard ONNX operators.

Dynamic int8 quantizes a MatMul's input with one scale for the whole tensor. In BERT-style encoders a handful of
input channels are far larger than the rest in every token (on the demo's students the largest channel of the
feed-forward inputs is 30-100x the median one), so that scale is coarse for every other channel. Here X·W
becomes (X ⊙ m)·W + X[..., O]·W[O, :]: the k channels O with the largest magnitude on a dev sample are masked out
of the int8 MatMul (m is 0 there, 1 elsewhere) and go through a small fp32 MatMul of k rows instead; the sum is
the same product in fp32. On a 3-layer demo student, k = 8 cut the relative int8 error of the feed-forward
MatMuls' outputs 4-10x, at 0.06 ms a MatMul (one thread) where 8-bit block quantization (MatMulNBits) cost 0.4 ms."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

OUTLIER_SUFFIX = "_fp32_outliers"  # the small fp32 MatMuls, which the quantizer must leave alone


def matmul_inputs(model_path: Path, nodes: list[str],
                  feeds: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, list[np.ndarray]]]:
    """Per feed, each named MatMul's input as one [tokens, channels] array per example (real tokens only; an
    input without the batch × sequence shape comes as one array of all its rows)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(model_path))
    inputs = {n.name: n.input[0] for n in model.graph.node if n.name in nodes}
    tensors = sorted(set(inputs.values()))
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in known)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    graph_inputs = {i.name for i in session.get_inputs()}
    for feed in feeds:
        valid = feed["attention_mask"].astype(bool)  # padding tokens do not count
        run = session.run(tensors, {k: v for k, v in feed.items() if k in graph_inputs})
        rows = {name: [example[keep] for example, keep in zip(values, valid, strict=True)]
                if values.shape[:2] == valid.shape else [values.reshape(-1, values.shape[-1])]
                for name, values in zip(tensors, run, strict=True)}
        yield {node: rows[tensor] for node, tensor in inputs.items()}


def input_channel_max(model_path: Path, nodes: list[str],
                      feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """For each named MatMul, max |x| per channel (last axis) of its input over the real tokens of `feeds`."""
    largest: dict[str, np.ndarray] = {}
    for inputs in matmul_inputs(model_path, nodes, feeds):
        for node, examples in inputs.items():
            top = np.abs(np.concatenate(examples)).max(axis=0)
            largest[node] = np.maximum(largest[node], top) if node in largest else top
    return largest


def outlier_channels(channel_max: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    """The `count` largest channels of each node's input (fewer when the input is that narrow), ascending."""
    return {node: np.sort(np.argsort(-values, kind="stable")[: min(count, len(values) - 1)]).astype(np.int64)
            for node, values in channel_max.items()}


def split_outlier_channels(model_path: Path, channels: dict[str, np.ndarray]) -> list[str]:
    """Rewrite each named MatMul(X, W) of `model_path` (W an initializer) as MatMul(X ⊙ m, W) + MatMul(X[..., O],
    W[O, :]), O = channels[node]; nodes reading the same X share the mask and the Gather. Returns the names of
    the new fp32 MatMuls (to keep out of quantization)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    split_inputs: dict[tuple[str, bytes], tuple[str, str]] = {}
    nodes, added = [], []
    for node in graph.node:
        if node.name not in channels or node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        x, w, y = node.input[0], node.input[1], node.output[0]
        index = channels[node.name]
        weight = numpy_helper.to_array(weights[w])
        key = (x, index.tobytes())
        if key not in split_inputs:
            tag = f"{x}_split{len(split_inputs)}"
            mask = np.ones(weight.shape[0], dtype=np.float32)
            mask[index] = 0.0
            graph.initializer.extend([numpy_helper.from_array(mask, f"{tag}_inlier_mask"),
                                      numpy_helper.from_array(index, f"{tag}_outlier_index")])
            nodes += [helper.make_node("Mul", [x, f"{tag}_inlier_mask"], [f"{tag}_inliers"], name=f"{tag}_mask"),
                      helper.make_node("Gather", [x, f"{tag}_outlier_index"], [f"{tag}_outliers"],
                                       name=f"{tag}_gather", axis=-1)]
            split_inputs[key] = (f"{tag}_inliers", f"{tag}_outliers")
        inliers, outliers = split_inputs[key]
        rows = f"{w}_outlier_rows_{len(added)}"
        graph.initializer.append(numpy_helper.from_array(weight[index], rows))
        small = f"{node.name}{OUTLIER_SUFFIX}"
        nodes += [helper.make_node("MatMul", [inliers, w], [f"{y}_inliers"], name=node.name),
                  helper.make_node("MatMul", [outliers, rows], [f"{y}_outliers"], name=small),
                  helper.make_node("Add", [f"{y}_inliers", f"{y}_outliers"], [y], name=f"{node.name}_sum")]
        added.append(small)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(model_path))
    return added
