"""Dynamic int8 with one activation scale per token, in standard ONNX operators.

onnxruntime's dynamic int8 (`DynamicQuantizeLinear`) quantizes a MatMul's input with one scale for the whole
tensor: every token of every example in the batch shares the range of the largest value among them. In BERT-style
encoders a few tokens ([CLS], [SEP], punctuation) carry values far larger than the rest, so the other tokens keep
few levels; and since the scale spans the batch, an example's int8 labels depend on the examples batched with it.

Here each row (token) x of a weight product's input is quantized by its own s = max|x| / 127, symmetric (uint8
with zero point 128), the weight per output channel as before:

    s = max|x| / 127 per row                  Abs, ReduceMax, Max (a floor), Mul
    q = QuantizeLinear(x / s, 1, 128)        once per input tensor, shared by Q, K and V
    y = MatMulIntegerToFloat(q, W_q, s, w_scale, 128)   (+ a Gemm's bias)

`asymmetric` maps each token's range [min, max] instead of [-max|x|, max|x|] onto the 254 steps, centred on
c = (max + min) / 2, and adds back what the center contributes:

    s = (max - min) / 254 per row, q = QuantizeLinear((x - c) / s, 1, 128)
    y = MatMulIntegerToFloat(q, W_q, s, w_scale, 128) + c · colsum(W_q · w_scale)

An encoder's LayerNorm outputs carry a few large channels of one sign in every token, so a token's range is
lopsided and symmetric scales leave up to half of the levels unused; centred, every step is up to 2x finer. On the
demo's teacher (every product int8, no search), unsmoothed: sentiment test labels equal to fp32's 99.69 %
(expected 99.63 %) against 99.30 % (99.35 %) symmetric, at about 13 % more time (two more element-wise passes per
product). Smoothing (`distill.export.smoothing`) made it worse (99.45 %): the weights it scales up hold the
noise that is left, so asymmetric graphs are quantized unsmoothed.

onnxruntime's `MatMulIntegerToFloat` (com.microsoft) runs the integer product in its int8 GEMM (MLAS, VNNI / AMX
where the CPU has them) and scales each output row by its token's s and each column by its weight scale; the
extra work is a few element-wise operators per input. On the quick demo's teacher: sentiment test labels equal
to fp32's on 99.5 % (every MatMul int8, no search) against 99.0 % with per-tensor scales after the fallback
search, and labels that no longer change with the batch size. onnxruntime's fused `Attention` holds the Q, K
and V products (its int8 form, `QAttention`, takes one scale per tensor), so the graph this quantizes is fused
with `MultiHeadAttention` after them instead (see `distill.export.fusion.per_token_graphs`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.core.int8_presets import INT8_MAX, INT8_MAX_REDUCED

if TYPE_CHECKING:
    import onnx

ACTIVATION_ZERO_POINT = 128  # symmetric values in uint8, the operand type every x86 int8 kernel takes
SCALE_FLOOR = 1e-12  # an all-zero token keeps a finite scale


def int8_weight(weight: np.ndarray, per_channel: bool, reduce_range: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights [in, out] and their scales (one per output column, or one)."""
    top = INT8_MAX_REDUCED if reduce_range else INT8_MAX
    largest = np.abs(weight).max(axis=0) if per_channel else np.abs(weight).max(keepdims=True)
    scale = np.where(largest == 0, 1.0, largest / top).astype(np.float32)
    return np.clip(np.rint(weight / scale), -top, top).astype(np.int8), scale


def per_token_round_trip(x: np.ndarray, asymmetric: bool = False) -> np.ndarray:
    """x through the per-token int8 of this module and back (what the int8 product sees of its input)."""
    if asymmetric:
        top, bottom = x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)
        center = (top + bottom) / 2
        half = top - center  # as the graph computes it
    else:
        center, half = np.zeros((), x.dtype), np.abs(x).max(axis=-1, keepdims=True)
    scale = np.maximum(half, SCALE_FLOOR) / INT8_MAX
    return (np.clip(np.rint((x - center) / scale), -128, 127) * scale + center).astype(np.float32)


def quantize_per_token(source: Path, target: Path, exclude: list[str], only: list[str] | None, per_channel: bool,
                       reduce_range: bool, asymmetric: bool = False) -> list[str]:
    """Write `source` to `target` with each weight MatMul (and plain Gemm: alpha = beta = 1, A not transposed)
    in per-token dynamic int8, except the nodes named in `exclude`; with `only`, just those; each token's range
    centred first where `asymmetric`. Returns the names of the nodes it quantized."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    stored = {i.name: i for i in graph.initializer}
    skip = set(exclude)
    chosen = [n for n in graph.node if _is_weight_product(n, stored) and n.name not in skip
              and (only is None or n.name in only)]
    if not chosen:
        onnx.save(model, str(target))
        return []
    prefix = "per_token_int8"
    constants = {f"{prefix}_inv_max": np.array(1 / INT8_MAX, np.float32),
                 f"{prefix}_floor": np.array(SCALE_FLOOR, np.float32),
                 f"{prefix}_one": np.array(1.0, np.float32),
                 f"{prefix}_zero_point": np.array(ACTIVATION_ZERO_POINT, np.uint8),
                 **({f"{prefix}_last_axis": np.array([-1], np.int64)} if opset >= 18 else {}),
                 **({f"{prefix}_half": np.array(0.5, np.float32)} if asymmetric else {})}
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    inputs: dict[str, tuple[str, str]] = {}  # float input -> (its uint8 tensor, its per-token scale)
    weights: dict[str, tuple[str, str]] = {}  # float weight -> (int8 weight, its scales)
    centers: dict[str, str] = {}  # float input -> its per-token center (asymmetric)
    column_sums: dict[str, str] = {}  # float weight -> the column sums of its int8 weight, dequantized (asymmetric)
    replaced: dict[int, list] = {}  # id of a chosen node -> the nodes that stand for it
    for node in chosen:
        x, rewrite = node.input[0], []
        if x not in inputs:
            tag = f"{prefix}_input{len(inputs)}"
            axes = {} if opset >= 18 else {"axes": [-1]}  # opset 18 moved a reduction's axes to an input
            axis_input = [f"{prefix}_last_axis"] if opset >= 18 else []
            if asymmetric:  # the half range around the token's center, and x - center
                rewrite += [
                    helper.make_node("ReduceMax", [x, *axis_input], [f"{tag}_top"], name=f"{tag}_top",
                                     keepdims=1, **axes),
                    helper.make_node("ReduceMin", [x, *axis_input], [f"{tag}_bottom"], name=f"{tag}_bottom",
                                     keepdims=1, **axes),
                    helper.make_node("Add", [f"{tag}_top", f"{tag}_bottom"], [f"{tag}_sum"], name=f"{tag}_sum"),
                    helper.make_node("Mul", [f"{tag}_sum", f"{prefix}_half"], [f"{tag}_center"],
                                     name=f"{tag}_center"),
                    helper.make_node("Sub", [f"{tag}_top", f"{tag}_center"], [f"{tag}_max"], name=f"{tag}_max"),
                    helper.make_node("Sub", [x, f"{tag}_center"], [f"{tag}_centered"], name=f"{tag}_centered"),
                ]
                centers[x], to_scale = f"{tag}_center", f"{tag}_centered"
            else:
                rewrite += [
                    helper.make_node("Abs", [x], [f"{tag}_abs"], name=f"{tag}_abs"),
                    helper.make_node("ReduceMax", [f"{tag}_abs", *axis_input], [f"{tag}_max"], name=f"{tag}_max",
                                     keepdims=1, **axes),
                ]
                to_scale = x
            rewrite += [
                helper.make_node("Max", [f"{tag}_max", f"{prefix}_floor"], [f"{tag}_max_floored"],
                                 name=f"{tag}_floor"),
                helper.make_node("Mul", [f"{tag}_max_floored", f"{prefix}_inv_max"], [f"{tag}_scale"],
                                 name=f"{tag}_scale"),
                helper.make_node("Div", [to_scale, f"{tag}_scale"], [f"{tag}_scaled"], name=f"{tag}_divide"),
                helper.make_node("QuantizeLinear", [f"{tag}_scaled", f"{prefix}_one", f"{prefix}_zero_point"],
                                 [f"{tag}_uint8"], name=f"{tag}_quantize"),
            ]
            inputs[x] = (f"{tag}_uint8", f"{tag}_scale")
        quantized, scale = inputs[x]
        weight_name = node.input[1]
        transposed = node.op_type == "Gemm" and _attribute(node, "transB", 0) == 1
        key = f"{weight_name}{'_T' if transposed else ''}"
        if key not in weights:
            weight = numpy_helper.to_array(stored[weight_name]).astype(np.float32)
            q_weight, w_scale = int8_weight(weight.T if transposed else weight, per_channel, reduce_range)
            weights[key] = (f"{key}_per_token_int8", f"{key}_per_token_scale")
            graph.initializer.extend([numpy_helper.from_array(q_weight, weights[key][0]),
                                      numpy_helper.from_array(w_scale, weights[key][1])])
            if asymmetric:
                column_sums[key] = f"{key}_per_token_column_sum"
                sums = (q_weight.astype(np.float64).sum(axis=0) * w_scale).astype(np.float32)
                graph.initializer.append(numpy_helper.from_array(sums, column_sums[key]))
        q_weight_name, w_scale_name = weights[key]
        # a bias goes in its own Add: with one a_scale per row, onnxruntime 1.32's MatMulIntegerToFloat does not
        # add its bias input as given (tests/test_per_token.py checks the sum)
        has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] != ""
        product = f"{node.output[0]}_unbiased" if has_bias or asymmetric else node.output[0]
        rewrite.append(helper.make_node("MatMulIntegerToFloat", [quantized, q_weight_name, scale, w_scale_name,
                                                                 f"{prefix}_zero_point"], [product],
                                        name=node.name, domain="com.microsoft"))
        if asymmetric:  # (x - c) W + c 1ᵀW
            centered = product
            product = f"{node.output[0]}_unbiased_sum" if has_bias else node.output[0]
            rewrite += [helper.make_node("Mul", [centers[x], column_sums[key]], [f"{node.output[0]}_center_term"],
                                         name=f"{node.name}_center_term"),
                        helper.make_node("Add", [centered, f"{node.output[0]}_center_term"], [product],
                                         name=f"{node.name}_center_add")]
        if has_bias:
            rewrite.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                            name=f"{node.name}_bias"))
        replaced[id(node)] = rewrite
    nodes = []
    for node in graph.node:
        nodes += replaced.get(id(node), [node])
    del graph.node[:]
    graph.node.extend(nodes)
    # the float weights of the replaced products go, unless something else still reads them
    replaced_weights = {node.input[1] for node in chosen}
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name not in replaced_weights or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(target))
    return [n.name for n in chosen]


def _is_weight_product(node: onnx.NodeProto, stored: dict[str, onnx.TensorProto]) -> bool:
    if len(node.input) < 2 or node.input[1] not in stored or len(stored[node.input[1]].dims) != 2:
        return False
    if node.op_type == "MatMul":
        return True
    return node.op_type == "Gemm" and _attribute(node, "transA", 0) == 0 and _attribute(node, "alpha", 1.0) == 1.0 \
        and _attribute(node, "beta", 1.0) == 1.0


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    from onnx import helper

    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)
