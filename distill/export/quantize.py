"""int8 graphs: onnxruntime quantization after smoothing, with outlier splits and the accuracy-aware fallback
search on dev."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from distill.core.int8_presets import PER_TOKEN_ACTIVATIONS
from distill.core.logs import logger_level
from distill.core.progress import progress
from distill.data.batching import eval_batches, pad_batch
from distill.data.evaluation import ForwardFn, predict
from distill.data.tasks import EncodedSplit, TaskData
from distill.export.agreement import expected_agreement, label_agreement
from distill.export.embeddings import embedding_gathers, quantize_embedding_rows
from distill.export.fusion import attention_projections
from distill.export.int8_search import (
    FallbackSearch,
    block_int8_matmuls,
    local_int8_noise,
    logit_noise,
    search_fallbacks,
    weight_matmuls,
)
from distill.export.onnx_graph import fp32_node_names, gemm_matmul_names, head_nodes
from distill.export.outliers import input_channel_max, outlier_channels, split_outlier_channels
from distill.export.per_token import quantize_per_token
from distill.export.smoothing import smooth_inputs, smoothed_channel_max, smoothing_scales
from distill.recipe import ExportSpec
from distill.runtime import OnnxForward

log = logging.getLogger(__name__)
ACTIVATION_EXAMPLES = 128  # dev examples per task whose activations set smoothing and the outlier channels
RANKING_EXAMPLES = 64  # dev examples per task on which each node's int8 noise is measured, to rank the nodes
# the end-to-end ranking measures this many candidates per node the search may take out; on the 3-layer quick-demo
# student the 8 noisiest end to end were all among the 16 with the largest int8 error of their own
SHORTLIST_PER_NODE = 2
# fp32 fallback nodes cost latency: where they do not reach the target either, they are kept only if they close at
# least this share of the distance from the int8_fallback result to it (quick demo's l3: 0.9931 -> 0.9934 against a
# 0.9975 target, for 4 fp32 nodes and 0.5 ms, was not worth it; the full demo's teacher: 0.9947 -> 0.9970 was)
FP32_SHARE_OF_GAP = 0.5
TABLE_OPS = ["Gather", "EmbedLayerNormalization"]  # embedding tables, as onnxruntime's dynamic int8 stores them


def quantize_int8(fp32_path: Path, int8_path: Path, mode: str, per_channel: bool, reduce_range: bool,
                  calibration: list[dict[str, np.ndarray]] | None = None,
                  keep_fp32: list[str] | None = None, embeddings: str = "per_row",
                  fallback_nodes: list[str] | None = None, fallback: str = "fp32",
                  only_nodes: list[str] | None = None, outliers: dict[str, np.ndarray] | None = None,
                  int8_heads: bool = False, smoothing: dict[str, np.ndarray] | None = None,
                  activations: str = "per_tensor") -> list[str]:
    """Int8 by onnxruntime: dynamic (weights; activations at run time, one scale per tensor or, with
    `activations` per_token or per_token_asymmetric, per token: see `distill.export.per_token`) or static QDQ
    calibrated on `calibration`.

    Nodes whose name matches a regular expression of `keep_fp32` stay in fp32; `fallback_nodes` (MatMuls) are
    left out of the int8 scheme and become `fallback`: fp32, `block_int8` (see `block_int8_matmuls`), or
    `outliers`: int8 with their `outliers[node]` input channels in fp32 (see `distill.export.outliers`). The inputs
    of the MatMuls in `smoothing` are divided by their s first (see `distill.export.smoothing`). The task
    heads (see `head_nodes`) stay fp32 unless `int8_heads`. With
    `only_nodes`, only those are quantized (embeddings stay fp32). Embedding tables: `per_row` (int8, one
    scale per row, see `distill.export.embeddings`), `per_tensor` (onnxruntime's) or `fp32`. Returns the names
    of the nodes `keep_fp32` matched."""
    with prepared_graph(fp32_path, int8_path, keep_fp32 or [], int8_heads, smoothing) as prepared:
        quantize_prepared(prepared, int8_path, mode, per_channel, reduce_range, calibration, embeddings,
                          fallback_nodes, fallback, only_nodes, outliers, activations)
        return prepared.kept


@dataclass
class PreparedGraph:
    """An fp32 graph ready for int8: shape-inferred, smoothed, with the nodes that stay fp32 in any case."""

    path: Path
    kept: list[str]  # matched by export.keep_fp32
    heads: list[str]  # the task heads, unless export.int8_heads


@contextmanager
def prepared_graph(fp32_path: Path, int8_path: Path, keep_fp32: list[str], int8_heads: bool,
                   smoothing: dict[str, np.ndarray] | None) -> Iterator[PreparedGraph]:
    """onnxruntime's pre-processing and the smoothing, done once for every int8 graph quantized from it (the
    fallback search quantizes a graph a dozen times); the file is removed afterwards."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = int8_path.with_name(f"{int8_path.stem}.prepared.onnx")
    try:
        quant_pre_process(str(fp32_path), str(path), skip_symbolic_shape=True)
        kept = fp32_node_names(path, keep_fp32)
        heads = [] if int8_heads else head_nodes(path)
        if smoothing:  # after the names are matched: the smoothing Muls are not the user's nodes
            smooth_inputs(path, smoothing)
        yield PreparedGraph(path, kept, heads)
    finally:
        path.unlink(missing_ok=True)


def quantize_prepared(prepared: PreparedGraph, int8_path: Path, mode: str, per_channel: bool, reduce_range: bool,
                      calibration: list[dict[str, np.ndarray]] | None = None, embeddings: str = "per_row",
                      fallback_nodes: list[str] | None = None, fallback: str = "fp32",
                      only_nodes: list[str] | None = None, outliers: dict[str, np.ndarray] | None = None,
                      activations: str = "per_tensor") -> None:
    """`quantize_int8` from a graph `prepared_graph` made (left unchanged)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    source = prepared.path
    split = int8_path.with_name(f"{int8_path.stem}.split.onnx")
    tables_first = int8_path.with_name(f"{int8_path.stem}.tables.onnx")
    if fallback == "outliers":
        assert outliers is not None or not fallback_nodes, "fallback outliers needs the channels of each node"
        small: list[str] = []
        # `outliers` holds the MatMuls only: a fused Attention cannot be split and falls back to fp32 whole
        whole = [n for n in fallback_nodes or [] if n not in (outliers or {})]
        if outliers and fallback_nodes:
            shutil.copyfile(source, split)
            source = split
            small = split_outlier_channels(split, {n: outliers[n] for n in fallback_nodes if n in outliers})
        excluded = sorted(set(prepared.kept) | set(prepared.heads) | set(small) | set(whole))
    else:
        excluded = sorted(set(prepared.kept) | set(prepared.heads) | set(fallback_nodes or []))
    excluded += gemm_matmul_names(source, excluded)
    tables = embedding_gathers(source) if embeddings != "per_tensor" or only_nodes is not None else []
    # onnx's shape inference does not know onnxruntime's fused operators: their outputs are float
    untyped = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    common: dict[str, Any] = {"per_channel": per_channel, "reduce_range": reduce_range,
                              "nodes_to_exclude": excluded + tables, "nodes_to_quantize": only_nodes}
    try:
        with logger_level(logging.WARNING):  # onnxruntime's quantizer logs a line per tensor
            if mode == "dynamic" and activations in PER_TOKEN_ACTIVATIONS:
                if embeddings == "per_tensor" and only_nodes is None:  # onnxruntime's tables first, one scale each
                    quantize_dynamic(str(source), str(tables_first), op_types_to_quantize=TABLE_OPS,
                                     weight_type=QuantType.QInt8, extra_options=untyped, nodes_to_exclude=excluded)
                    source = tables_first
                quantize_per_token(source, int8_path, excluded, only_nodes, per_channel, reduce_range,
                                   asymmetric=activations == "per_token_asymmetric")
            elif mode == "dynamic":
                quantize_dynamic(str(source), str(int8_path), weight_type=QuantType.QInt8, extra_options=untyped,
                                 **common)
            else:
                class Reader(CalibrationDataReader):
                    def __init__(self) -> None:
                        self.feeds = iter(calibration or [])

                    def get_next(self) -> dict | None:
                        return next(self.feeds, None)

                quantize_static(str(source), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                op_types_to_quantize=["MatMul", "Gemm", "Gather"],
                                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, **untyped},
                                **common)
        if embeddings == "per_row" and only_nodes is None:
            quantize_embedding_rows(int8_path)
        if fallback == "block_int8" and fallback_nodes:
            block_int8_matmuls(int8_path, fallback_nodes)
    finally:
        split.unlink(missing_ok=True)
        tables_first.unlink(missing_ok=True)
        for leftover in int8_path.parent.glob("*augmented*.onnx"):
            leftover.unlink()


def applied_smoothing(spec: ExportSpec, mode: str) -> float | None:
    """The smoothing alpha an int8 graph of `mode` gets: `int8_smoothing`, except none for asymmetric per-token
    activations (the weights smoothing scales up hold the noise they leave)."""
    return None if mode == "dynamic" and spec.int8_activations == "per_token_asymmetric" else spec.int8_smoothing


def quantize_graph(source: Path, target: Path, mode: str, spec: ExportSpec, preset: dict[str, Any],
                    feeds: list[dict[str, np.ndarray]] | None, tasks: list[TaskData], pad_id: int,
                    found: tuple[list[str], str] | None = None) -> tuple[list[str], FallbackSearch | None]:
    """One int8 graph; with `export.int8_min_agreement`, the fallback search on dev (see int8_search),
    unless another mode's search `found` the nodes (and what they became) already. Returns the keep_fp32 nodes
    and the search."""
    activations = spec.int8_activations if mode == "dynamic" else "per_tensor"
    smoothing = applied_smoothing(spec, mode)
    # in a per-token graph a fused attention's name (Attention_N) is its MultiHeadAttention: its Q/K/V MatMuls
    kept = attention_projections(source, fp32_node_names(source, spec.keep_fp32))
    fp32_anyway = set(kept) | set([] if spec.int8_heads else head_nodes(source))
    need_outliers = (found[1] == "outliers" and bool(found[0])) if found is not None else \
        spec.int8_fallback == "outliers" and spec.int8_min_agreement is not None
    scales: dict[str, np.ndarray] = {}
    outliers = None
    if smoothing is not None or need_outliers:
        sample_feeds = calibration_feeds(tasks, ACTIVATION_EXAMPLES, pad_id)
        channel_max = input_channel_max(source, weight_matmuls(source, gemm=False), sample_feeds)
        if smoothing is not None:
            scales = smoothing_scales(source, {n: v for n, v in channel_max.items() if n not in fp32_anyway},
                                      smoothing)
        if need_outliers:  # the channels that stay largest once smoothing divided them by s; MatMuls only
            matmuls = set(weight_matmuls(source, gemm=False, attention=False))
            outliers = outlier_channels({n: v for n, v in smoothed_channel_max(channel_max, scales).items()
                                         if n in matmuls}, spec.int8_outlier_channels)

    with prepared_graph(source, target, spec.keep_fp32, spec.int8_heads, scales) as prepared:
        def quantize(path: Path, fallback_nodes: list[str] | None = None, only: list[str] | None = None,
                     fallback: str = spec.int8_fallback) -> None:
            quantize_prepared(prepared, path, mode, spec.per_channel, preset["reduce_range"], feeds,
                              spec.int8_embeddings, fallback_nodes, fallback, only, outliers, activations)

        if found is not None:
            quantize(target, found[0], fallback=found[1])
            return kept, None
        if spec.int8_min_agreement is None:
            quantize(target)
            return kept, None
        # named in the prepared graph, which the quantizer reads (its pre-processing folds a product of constants).
        # A fused attention can only leave int8 whole, its product and softmax in fp32 (the quick demo's
        # l2-f768-e4: 2.25 -> 3.59 ms with both out): with the split or block int8 the search picks MatMuls
        exact = spec.int8_fallback == "fp32"
        candidates = [n for n in weight_matmuls(prepared.path, gemm=exact, attention=exact) if n not in fp32_anyway]
        return kept, _search(source, target, spec, tasks, pad_id, quantize, candidates,
                             lambda nodes: local_int8_noise(prepared.path, nodes,
                                                            calibration_feeds(tasks, RANKING_EXAMPLES, pad_id),
                                                            spec.per_channel, preset["reduce_range"],
                                                            activations))


def _search(source: Path, target: Path, spec: ExportSpec, tasks: list[TaskData], pad_id: int,
            quantize: Callable[..., None], candidates: list[str],
            local_noise: Callable[[list[str]], dict[str, float]]) -> FallbackSearch:
    """The fallback search of `quantize_graph` (see `distill.export.int8_search`), on dev at check_batch_size.
    Of a deep model's MatMuls, only the SHORTLIST_PER_NODE × int8_max_fallback_nodes with the largest int8 error
    of their own (`local_noise`, one pass) are measured end to end."""
    assert spec.int8_min_agreement is not None
    level = spec.optimization_level
    reference = OnnxForward(source, optimization_level=level)
    batch = spec.check_batch_size
    dev_fp32 = split_predictions(reference, tasks, "dev", pad_id, batch)
    sample = [dev_sample(t, RANKING_EXAMPLES) for t in tasks]
    sample_fp32 = split_predictions(reference, sample, "dev", pad_id, batch)
    # MatMulNBits and the outlier split replace MatMuls only; a Gemm (a classifier head) can only fall back to fp32
    shortlist, total = SHORTLIST_PER_NODE * spec.int8_max_fallback_nodes, len(candidates)
    if len(candidates) > shortlist:
        own_error = local_noise(candidates)
        log.info("int8 search (%s): the %d of %d MatMuls with the largest int8 error of their own are measured "
                 "end to end", target.name, shortlist, len(candidates))
        candidates = sorted(candidates, key=lambda n: -own_error[n])[:shortlist]
    probe = target.with_name(f"{target.stem}.probe.onnx")

    def noise_of(node: str) -> float:
        quantize(probe, only=[node])
        return logit_noise(sample_fp32, split_predictions(OnnxForward(probe, optimization_level=level), sample, "dev",
                                                          pad_id, batch))

    counted: dict[str, float] = {}

    def agreement_with(fallback_nodes: list[str], fallback: str = spec.int8_fallback) -> dict[str, float]:
        quantize(target, fallback_nodes, fallback=fallback)
        dev_int8 = split_predictions(OnnxForward(target, optimization_level=level), tasks, "dev", pad_id, batch)
        counted.update(label_agreement(tasks, "dev", dev_int8, dev_fp32))  # the last call quantizes the chosen graph
        return dict(counted) if spec.int8_agreement == "labels" else expected_agreement(tasks, "dev", dev_fp32,
                                                                                         dev_int8)

    try:
        search = search_fallbacks(candidates, noise_of, agreement_with, spec.int8_min_agreement,
                                  spec.int8_max_fallback_nodes,
                                  lambda nodes: progress(nodes, desc=f"int8 noise per node ({target.name})",
                                                         leave=False, unit="node"))
    finally:
        probe.unlink(missing_ok=True)
    search.fallback = spec.int8_fallback
    if not search.reached and search.noise and spec.int8_fallback != "fp32":
        search = _escalate_to_fp32(search, target, spec, agreement_with)
    search.measure, search.dev_label_agreement, search.candidates = spec.int8_agreement, counted, total
    if not search.reached:
        log.warning("%s: int8 dev agreement %s is below export.int8_min_agreement %s with %d fallback node(s) "
                    "(export.int8_max_fallback_nodes)", target.name, search.agreement, spec.int8_min_agreement,
                    len(search.nodes))
    return search


def _escalate_to_fp32(short: FallbackSearch, target: Path, spec: ExportSpec,
                      agreement_with: Callable[..., dict[str, float]]) -> FallbackSearch:
    """The search again, the same ranked nodes falling back to fp32 (exact, slower) where `int8_fallback` fell
    short of the target. fp32 costs latency, so it is kept only where it reaches the target or closes at least
    half of the distance to it; otherwise the first result is quantized again."""
    assert spec.int8_min_agreement is not None
    log.info("int8 search (%s): int8_fallback %s falls short of %s; the same nodes in fp32", target.name,
             spec.int8_fallback, spec.int8_min_agreement)
    ranked = sorted(short.noise, key=lambda n: -short.noise[n])
    exact = search_fallbacks(ranked, short.noise.__getitem__, lambda nodes: agreement_with(nodes, "fp32"),
                             spec.int8_min_agreement, spec.int8_max_fallback_nodes,
                             agreement_before=short.agreement_before)
    exact.noise, exact.fallback = short.noise, "fp32"
    worst_short, worst_exact = min(short.agreement.values()), min(exact.agreement.values())
    if not exact.reached and worst_exact - worst_short < FP32_SHARE_OF_GAP * (spec.int8_min_agreement - worst_short):
        log.info("int8 search (%s): fp32 agrees %.4f against %.4f, too little for its latency; kept %s",
                 target.name, worst_exact, worst_short, spec.int8_fallback)
        agreement_with(short.nodes)
        return short
    exact.short_fallback = {"fallback": short.fallback, "nodes": short.nodes, "dev_agreement": short.agreement}
    return exact


def dev_sample(task: TaskData, n: int) -> TaskData:
    dev = task.encoded["dev"]
    words = dev.words[:n] if dev.words is not None else None
    return replace(task, encoded={"dev": EncodedSplit(dev.input_ids[:n], dev.labels[:n], words)})


def calibration_feeds(tasks: list[TaskData], per_task: int, pad_id: int) -> list[dict[str, np.ndarray]]:
    """Padded dev batches of every task, as onnxruntime feeds, for static int8 calibration."""
    feeds = []
    for task in tasks:
        split = dev_sample(task, per_task).encoded["dev"]
        for indices in eval_batches(split, 16):
            batch = pad_batch(task.info.name, split, indices, pad_id)
            feeds.append({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
    return feeds


def split_predictions(forward: ForwardFn, tasks: list[TaskData], split: str, pad_id: int,
                 batch_size: int = 64) -> dict[str, list[np.ndarray]]:
    return {t.info.name: predict(forward, t.info.name, t.encoded[split], pad_id, batch_size) for t in tasks}
