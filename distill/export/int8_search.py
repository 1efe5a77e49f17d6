"""Accuracy-aware int8: take the few weight MatMuls whose int8 noise moves predictions the most out of it.

Dynamic int8 rounds every MatMul's input (one scale per token by default, see `distill.export.per_token`, or
onnxruntime's one scale per tensor); on a task with many borderline examples that noise flips labels (0.5-1 %
of the demo's sentiment test set), and part of it comes from a few nodes (the first layer's feed-forward block,
on the demo). With `export.int8_min_agreement`,
each candidate node is quantized alone on a dev sample and ranked by how far it moves the logits; then the
noisiest 1, 2, 4, ... nodes leave the int8 scheme (then a bisection finds the fewest) until int8
and fp32 agree on the dev labels of every task, expected (`distill.export.agreement`, the default) or
counted; short of that, the fewest nodes that gave the best agreement are kept. A node that leaves becomes
(`export.int8_fallback`) int8 with its largest input channels in fp32 (`outliers`, the default, see
`distill.export.outliers`), onnxruntime's MatMulNBits with 8-bit weights and int8 activations quantized per
block of 128 values (`block_int8`: nearly fp32's accuracy at int8's size, at about fp32's speed on CPU), or
fp32."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from distill.core.int8_presets import PER_TOKEN_ACTIVATIONS
from distill.export.fusion import FUSED_ATTENTION
from distill.export.per_token import int8_weight, per_token_round_trip

log = logging.getLogger(__name__)


@dataclass
class FallbackSearch:
    """What the search did, for the manifest."""

    target: float
    nodes: list[str] = field(default_factory=list)
    agreement_before: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    noise: dict[str, float] = field(default_factory=dict)
    measure: str = "labels"
    dev_label_agreement: dict[str, float] = field(default_factory=dict)
    candidates: int = 0  # MatMuls that could leave int8; `noise` holds those measured end to end
    fallback: str = "outliers"  # what the nodes became (export.int8_fallback, or fp32 where that fell short)
    short_fallback: dict = field(default_factory=dict)  # the int8_fallback result that fell short, when escalated

    @property
    def reached(self) -> bool:
        return min(self.agreement.values(), default=1.0) >= self.target

    def as_dict(self) -> dict:
        top = dict(sorted(self.noise.items(), key=lambda kv: -kv[1])[:10])
        return {"target_dev_agreement": self.target, "measure": self.measure, "reached": self.reached,
                "nodes": self.nodes, "dev_agreement_all_int8": self.agreement_before, "dev_agreement": self.agreement,
                "dev_label_agreement": self.dev_label_agreement, "noisiest_nodes": top,
                "candidates": self.candidates, "measured_end_to_end": len(self.noise), "fallback": self.fallback,
                **({"fell_short": self.short_fallback} if self.short_fallback else {})}


def search_fallbacks(candidates: list[str], noise_of: Callable[[str], float],
                     agreement_with: Callable[[list[str]], dict[str, float]], target: float, max_nodes: int,
                     progress: Callable[[Iterable[str]], Iterable[str]] = iter,
                     agreement_before: dict[str, float] | None = None) -> FallbackSearch:
    """Rank `candidates` by `noise_of` (one node quantized alone); take the 1, 2, 4, ... noisiest out until
    `agreement_with(fallback nodes)` (dev agreement per task, which also quantizes the graph) is at least
    `target` everywhere, then bisect for the fewest that reach it; short of the target within `max_nodes`,
    keep the fewest nodes with the best result measured. `agreement_before`: the agreement with no node out,
    when it is known already."""
    result = FallbackSearch(target=target)
    result.agreement_before = result.agreement = agreement_before or agreement_with([])
    if result.reached or max_nodes == 0:
        return result
    result.noise = {name: noise_of(name) for name in progress(candidates)}
    ranked = sorted(candidates, key=lambda n: -result.noise[n])[:max_nodes]
    tried: dict[int, dict[str, float]] = {0: result.agreement_before}
    last = [0]

    def reaches(count: int) -> bool:
        if count not in tried:
            tried[count] = agreement_with(ranked[:count])
            last[0] = count
            log.info("int8 fallback: %d node(s) out of int8, dev agreement %s", count,
                     {k: round(v, 4) for k, v in tried[count].items()})
        return min(tried[count].values()) >= target

    # 1, 2, 4, ... nodes out until the target is reached, then bisect for the fewest that reach it: a handful
    # of graphs quantized and run on dev instead of one per node
    low, high, count = 0, None, 1
    while high is None and low < len(ranked):
        count = min(count, len(ranked))
        if reaches(count):
            high = count
        else:
            low, count = count, count * 2
    if high is not None:
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if reaches(middle) else (middle, high)
        best = high
    else:  # short of the target, the fewest nodes with the best worst-task agreement (more nodes can do worse)
        best = max(tried, key=lambda k: (min(tried[k].values()), -k))
    result.nodes, result.agreement = ranked[:best], tried[best]
    if best != last[0]:
        agreement_with(result.nodes)  # leave the graph quantized with the chosen nodes
    return result


def weight_matmuls(model_path: Path, gemm: bool = True, attention: bool = True) -> list[str]:
    """The products of an activation with a stored weight (what dynamic int8 quantizes): MatMul, Gemm unless
    `gemm` is False, and a fused Attention (see `distill.export.fusion`) unless `attention` is False."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    kinds = ("MatMul",) + (("Gemm",) if gemm else ()) + ((FUSED_ATTENTION,) if attention else ())
    return [n.name for n in graph.node if n.op_type in kinds and len(n.input) > 1 and n.input[1] in weights]


def logit_noise(reference: dict[str, list[np.ndarray]], other: dict[str, list[np.ndarray]]) -> float:
    """Mean over tasks of RMS(other - reference) / RMS(reference): how far int8 moved the logits."""
    ratios = []
    for task, ref in reference.items():
        a = np.concatenate([np.ravel(x) for x in ref])
        b = np.concatenate([np.ravel(x) for x in other[task]])
        ratios.append(float(np.sqrt(np.mean((b - a) ** 2)) / (np.sqrt(np.mean(a ** 2)) + 1e-12)))
    return float(np.mean(ratios))



def local_int8_noise(model_path: Path, nodes: list[str], feeds: Iterable[dict[str, np.ndarray]], per_channel: bool,
                     reduce_range: bool, activations: str = "per_tensor") -> dict[str, float]:
    """For each named weight MatMul: RMS(int8 output − fp32 output) / RMS(fp32 output) of that MatMul alone, its
    input quantized as dynamic int8 does (onnxruntime's uint8, one scale per example at batch 1; with
    `activations` per_token or per_token_asymmetric, one per token, see `distill.export.per_token`) and its
    weight as int8 (per output channel, or per tensor). One pass over `feeds`, no graph quantized: a cheap first
    ranking, which the end-to-end `noise_of` of `search_fallbacks` then refines on a shortlist."""
    import onnx
    from onnx import numpy_helper

    from distill.export.outliers import matmul_inputs

    graph = onnx.load(str(model_path)).graph
    stored = {i.name: i for i in graph.initializer}
    weights = {n.name: numpy_helper.to_array(stored[n.input[1]]) for n in graph.node if n.name in nodes}
    quantized = {}
    for name, w in weights.items():
        q_weight, scale = int8_weight(w, per_channel, reduce_range)
        quantized[name] = q_weight.astype(np.float32) * scale
    round_trip = partial(per_token_round_trip, asymmetric=activations == "per_token_asymmetric") \
        if activations in PER_TOKEN_ACTIVATIONS else _uint8_input
    error = dict.fromkeys(weights, 0.0)
    reference = dict.fromkeys(weights, 0.0)
    for inputs in matmul_inputs(model_path, list(weights), feeds):
        for node, examples in inputs.items():
            for x in examples:
                exact = x @ weights[node]
                error[node] += float(np.sum((round_trip(x) @ quantized[node] - exact) ** 2))
                reference[node] += float(np.sum(exact**2))
    return {node: float(np.sqrt(error[node] / max(reference[node], 1e-30))) for node in weights}


def _uint8_input(x: np.ndarray) -> np.ndarray:
    """x through onnxruntime's DynamicQuantizeLinear and back: uint8, the range always holding 0."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / 255 or 1.0
    zero = np.clip(np.rint(-low / scale), 0, 255)
    return ((np.clip(np.rint(x / scale) + zero, 0, 255) - zero) * scale).astype(np.float32)


BLOCK_SIZE = 128
ACCURACY_INT8 = 4  # MatMulNBits accuracy_level: activations quantized to int8 per block


def block_int8_matmuls(model_path: Path, nodes: list[str]) -> None:
    """Rewrite the named float MatMuls of `model_path` as MatMulNBits: symmetric 8-bit weights per block of
    BLOCK_SIZE input channels, activations quantized per block at run time (onnxruntime contrib op)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line a node
    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK_SIZE, is_symmetric=True, accuracy_level=ACCURACY_INT8,
                                          bits=8, op_types_to_quantize=("MatMul",))
    model = onnx.load(str(model_path))
    # nodes_to_include adds to the op types it converts anyway; every other float MatMul (the fp32 heads) is excluded
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in set(nodes)]
    nodes = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name in set(nodes)]
    quantizer = MatMulNBitsQuantizer(model, nodes_to_include=list(nodes), nodes_to_exclude=others, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(model_path), False)
