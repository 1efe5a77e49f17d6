"""What the machine can do: int8 and fp32 matrix products through onnxruntime at the shapes the models use, so a
report can say how close each model's latency comes to it (achieved GOP/s, share of the measured peak)."""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.bench.latency import measure

PEAK_WARMUP = 5
PEAK_REPEATS = 30


def gemm_model(m: int, k: int, n: int, int8: bool) -> bytes:
    """One [m, k] × [k, n] product as an ONNX model: MatMulInteger (uint8 × int8 → int32, the kernel of dynamic
    int8) or MatMul (fp32); the right-hand matrix is a stored weight, as in a model."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        weight = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w")
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        kinds = (TensorProto.UINT8, TensorProto.INT32)
    else:
        weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        kinds = (TensorProto.FLOAT, TensorProto.FLOAT)
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", kinds[0], [m, k])],
                              [helper.make_tensor_value_info("y", kinds[1], [m, n])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def gemm_gops(m: int, k: int, n: int, int8: bool, threads: int) -> float:
    """Operations (2·m·k·n) per second, in billions, of one product at its median time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(gemm_model(m, k, n, int8), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8) if int8 else rng.standard_normal((m, k)).astype(np.float32)
    p50 = measure(lambda: session.run(None, {"a": a}), PEAK_WARMUP, PEAK_REPEATS)["p50"]
    return 2.0 * m * k * n / (p50 / 1000.0) / 1e9


def machine_peak(shapes: list[tuple[int, int, int]], threads: int) -> dict[str, Any]:
    """int8 and fp32 GOP/s of every (m, k, n) product, and the best of each: the peak the models are compared with."""
    measured = [{"m": m, "k": k, "n": n, "int8_gops": gemm_gops(m, k, n, True, threads),
                 "fp32_gops": gemm_gops(m, k, n, False, threads)} for m, k, n in dict.fromkeys(shapes)]
    return _peak_of(threads, measured)


def _peak_of(threads: int, measured: list[dict[str, Any]]) -> dict[str, Any]:
    """The `machine_peak` dict of measured shapes: the best int8 and fp32 product among them."""
    return {"threads": threads, "int8_gops": max(s["int8_gops"] for s in measured),
            "fp32_gops": max(s["fp32_gops"] for s in measured), "shapes": measured}


def best_peak(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two `machine_peak` measurements of the same shapes, each shape at the faster of the two: a slow spell of a
    shared machine during one of them must not lower the peak (on 2026-12-07 one bench measured 435 int8 GOP/s,
    half of the 812 an hour before, and the models timed after it reached 145 % of that peak)."""
    later = {(s["m"], s["k"], s["n"]): s for s in second["shapes"]}
    shapes = [{**s, **{key: max(s[key], later[(s["m"], s["k"], s["n"])][key]) for key in ("int8_gops", "fp32_gops")}}
              for s in first["shapes"]]
    return _peak_of(first["threads"], shapes)


def achieved(flops: float, p50_ms: float, model_format: str, peak: dict[str, Any]) -> dict[str, float]:
    """A model's GOP/s at its batch-1 latency and its share of the peak of its precision (int8 or fp32)."""
    gops = flops / (p50_ms / 1000.0) / 1e9
    reference = peak["int8_gops"] if "int8" in model_format else peak["fp32_gops"]
    return {"gops": gops, "peak_share": gops / reference if reference else 0.0}
