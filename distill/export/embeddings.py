"""Int8 embedding tables with one scale per row.

onnxruntime quantizes a Gather's table with one scale for the whole tensor, so a few large values in the
position or word embeddings make the step coarse for every row; on the demo that alone flips ~1 % of the
sentiment labels. Here the word embedding table (the one indexed by the token ids: most of an edge model's
size) gets one symmetric scale per row, using only standard ONNX operators: Gather(int8 rows) and
Gather(row scales) -> Cast -> Mul; only the gathered rows are dequantized. The small position and
token-type tables stay fp32: they are added to every token, and int8 even per row costs agreement there.

A table whose rows already hold 4-bit values (a student trained with `embedding_bits: 4`) is stored exactly at
4 bits, two values a byte (value + 8 in each nibble), and unpacked after the Gather with float arithmetic
(Cast, Div, Floor, Mul, Sub, Concat, Reshape): half the size of int8, and no rounding of its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.core.int8_presets import INT8_MAX

INT4_MAX = 7
NIBBLE = 16


def embedding_gathers(model_path: Path, token_tables_only: bool = False) -> list[str]:
    """Names of the Gather nodes that look up rows of a float 2-D table stored in the graph; with
    `token_tables_only`, only those indexed by a graph input (the word embeddings, not positions or types)."""
    import onnx

    return _gathers(onnx.load(str(model_path), load_external_data=False).graph, token_tables_only)


def quantize_embedding_rows(model_path: Path) -> dict[str, int]:
    """Rewrite the Gathers of the token tables (see `embedding_gathers`) in `model_path` to per-row int8, or
    per-row int4 for a table already on a 4-bit grid; returns {table: bits}."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    wanted = set(_gathers(graph, token_tables_only=True))
    uses = _table_uses(graph)
    done: dict[str, tuple[str, str, int]] = {}
    nodes = []
    for node in graph.node:
        table_name = node.input[0] if node.op_type == "Gather" else ""
        if node.name not in wanted or table_name not in initializers or uses[table_name] != 1:
            nodes.append(node)
            continue
        if table_name not in done:
            table = numpy_helper.to_array(initializers[table_name]).astype(np.float32)
            bits = 4 if on_int4_grid(table) else 8
            rows, scales = pack_int4_rows(table) if bits == 4 else quantize_rows(table)
            graph.initializer.remove(initializers[table_name])
            done[table_name] = (f"{table_name}_int{bits}_rows", f"{table_name}_row_scales", bits)
            graph.initializer.extend([numpy_helper.from_array(rows, done[table_name][0]),
                                      numpy_helper.from_array(scales, done[table_name][1])])
        rows_name, scales_name, bits = done[table_name]
        out, ids = node.output[0], node.input[1]
        nodes += [
            helper.make_node("Gather", [rows_name, ids], [f"{out}_int{bits}"], name=f"{node.name}_int{bits}", axis=0),
            helper.make_node("Gather", [scales_name, ids], [f"{out}_scale"], name=f"{node.name}_scale", axis=0),
            helper.make_node("Cast", [f"{out}_int{bits}"], [f"{out}_float"], name=f"{node.name}_cast",
                             to=TensorProto.FLOAT),
        ]
        values = f"{out}_float"
        if bits == 4:
            nodes += _unpack_nibbles(graph, node.name, values, f"{out}_values")
            values = f"{out}_values"
        nodes.append(helper.make_node("Mul", [values, f"{out}_scale"], [out], name=f"{node.name}_dequantize"))
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(model_path))
    return {name: bits for name, (_, _, bits) in done.items()}


def _unpack_nibbles(graph, prefix: str, packed: str, out: str) -> list:
    """Nodes turning gathered bytes (as float, [..., width/2]) into the signed 4-bit values [..., width]: the low
    nibble is the even column, the high nibble the odd one, each stored as value + 8."""
    from onnx import helper, numpy_helper

    constants = {f"{prefix}_sixteen": np.array(NIBBLE, np.float32), f"{prefix}_eight": np.array(8, np.float32),
                 f"{prefix}_shape": np.array([0, 0, -1], np.int64), f"{prefix}_last": np.array([-1], np.int64)}
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    sixteen, eight, shape, last = constants

    def name(part: str) -> str:
        return f"{prefix}_{part}"

    return [
        helper.make_node("Div", [packed, sixteen], [name("div")], name=name("div")),
        helper.make_node("Floor", [name("div")], [name("high")], name=name("high")),
        helper.make_node("Mul", [name("high"), sixteen], [name("high16")], name=name("high16")),
        helper.make_node("Sub", [packed, name("high16")], [name("low")], name=name("low")),
        helper.make_node("Unsqueeze", [name("low"), last], [name("low1")], name=name("low1")),
        helper.make_node("Unsqueeze", [name("high"), last], [name("high1")], name=name("high1")),
        helper.make_node("Concat", [name("low1"), name("high1")], [name("pairs")], name=name("pairs"), axis=-1),
        helper.make_node("Reshape", [name("pairs"), shape], [name("offset")], name=name("offset")),
        helper.make_node("Sub", [name("offset"), eight], [out], name=name("values")),
    ]


def on_int4_grid(table: np.ndarray) -> bool:
    """Whether every row is a multiple of its own scale max|row| / 7 by integers in [-7, 7] (a table trained with
    `embedding_bits: 4`), to float precision, and the rows have an even width to pack."""
    if table.ndim != 2 or table.shape[1] % 2:
        return False
    if len(table) > 256 and not on_int4_grid(table[:256]):  # most tables are not: a few rows tell, not all 30k
        return False
    scales = np.abs(table).max(axis=1, keepdims=True) / INT4_MAX
    scales[scales == 0] = 1.0
    steps = table / scales
    return bool(np.abs(steps - np.rint(steps)).max() < 1e-3)


def pack_int4_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [rows, width/2]: column 2j in the low nibble and 2j+1 in the high one, each as value + 8;
    float32 scales [rows, 1]) for a table on a 4-bit grid (see `on_int4_grid`)."""
    scales = np.abs(table).max(axis=1, keepdims=True) / INT4_MAX
    scales[scales == 0] = 1.0
    values = (np.clip(np.rint(table / scales), -INT4_MAX, INT4_MAX) + 8).astype(np.uint8)
    return values[:, 0::2] | (values[:, 1::2] << 4), scales.astype(np.float32)


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
