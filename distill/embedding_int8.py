"""Int8 embedding tables with one scale per row.

onnxruntime quantizes a Gather's table with one scale for the whole tensor, so a few large values in the
position or word embeddings make the step coarse for every row; on the demo that alone flips ~1 % of the
sentiment labels. Here the word embedding table (the one indexed by the token ids: most of an edge model's
size) gets one symmetric scale per row, using only standard ONNX operators: Gather(int8 rows) and
Gather(row scales) -> Cast -> Mul; only the gathered rows are dequantized. The small position and
token-type tables stay fp32: they are added to every token, and int8 even per row costs agreement there."""

from __future__ import annotations

from pathlib import Path

import numpy as np

INT8_MAX = 127


def embedding_gathers(model_path: Path, token_tables_only: bool = False) -> list[str]:
    """Names of the Gather nodes that look up rows of a float 2-D table stored in the graph; with
    `token_tables_only`, only those indexed by a graph input (the word embeddings, not positions or types)."""
    import onnx

    return _gathers(onnx.load(str(model_path), load_external_data=False).graph, token_tables_only)


def quantize_embedding_rows(model_path: Path) -> int:
    """Rewrite the Gathers of the token tables (see `embedding_gathers`) in `model_path` to per-row int8;
    returns how many tables."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    wanted = set(_gathers(graph, token_tables_only=True))
    uses = _table_uses(graph)
    done: dict[str, tuple[str, str]] = {}
    nodes = []
    for node in graph.node:
        table_name = node.input[0] if node.op_type == "Gather" else ""
        if node.name not in wanted or table_name not in initializers or uses[table_name] != 1:
            nodes.append(node)
            continue
        if table_name not in done:
            table = numpy_helper.to_array(initializers[table_name]).astype(np.float32)
            rows, scales = quantize_rows(table)
            graph.initializer.remove(initializers[table_name])
            done[table_name] = (f"{table_name}_int8_rows", f"{table_name}_row_scales")
            graph.initializer.extend([numpy_helper.from_array(rows, done[table_name][0]),
                                      numpy_helper.from_array(scales, done[table_name][1])])
        rows_name, scales_name = done[table_name]
        out, ids = node.output[0], node.input[1]
        nodes += [
            helper.make_node("Gather", [rows_name, ids], [f"{out}_int8"], name=f"{node.name}_int8", axis=0),
            helper.make_node("Gather", [scales_name, ids], [f"{out}_scale"], name=f"{node.name}_scale", axis=0),
            helper.make_node("Cast", [f"{out}_int8"], [f"{out}_float"], name=f"{node.name}_cast",
                             to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{out}_float", f"{out}_scale"], [out], name=f"{node.name}_dequantize"),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(model_path))
    return len(done)


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 rows, float32 scales of shape [rows, 1]) with rows * scales ≈ table, symmetric per row."""
    scales = np.abs(table).max(axis=1, keepdims=True) / INT8_MAX
    scales[scales == 0] = 1.0
    rows = np.clip(np.rint(table / scales), -INT8_MAX, INT8_MAX).astype(np.int8)
    return rows, scales.astype(np.float32)


def _gathers(graph, token_tables_only: bool) -> list[str]:
    import onnx

    tables = {i.name for i in graph.initializer
              if len(i.dims) == 2 and i.dims[1] > 1 and i.data_type == onnx.TensorProto.FLOAT}
    inputs = {i.name for i in graph.input}
    return [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] in tables and _axis(n) == 0
            and (not token_tables_only or n.input[1] in inputs)]


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _table_uses(graph) -> dict[str, int]:
    """How many nodes read each tensor (a table read by anything but its Gather keeps its float copy)."""
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    for output in graph.output:
        counts[output.name] = counts.get(output.name, 0) + 1
    return counts
