"""The exporter: ONNX fp32 and int8 (dynamic, static) artifacts, checked against PyTorch and the task metrics."""

from __future__ import annotations

import logging
import platform
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.agreement import expected_agreement, label_agreement
from distill.batching import eval_batches, pad_batch
from distill.data import EncodedSplit, TaskData
from distill.embedding_int8 import embedding_gathers, on_int4_grid, quantize_embedding_rows
from distill.errors import DistillError
from distill.evaluation import ForwardFn, evaluate, predict, primary_scores, torch_forward
from distill.fileio import atomic_directory, atomic_write_json, sha256_dir, sha256_file
from distill.hardware import INT8_PRESETS, hardware, int8_preset
from distill.int8_fallback import (
    FallbackSearch,
    block_int8_matmuls,
    logit_noise,
    search_fallbacks,
    weight_matmuls,
)
from distill.int8_outliers import input_channel_max, outlier_channels, split_outlier_channels
from distill.int8_smoothing import smooth_inputs, smoothed_channel_max, smoothing_scales
from distill.progress import progress
from distill.recipe import ExportSpec
from distill.runtime import MODEL_FILES, OnnxForward, output_name, task_file
from teachers.multitask import TASKS_FILE, MultiTaskModel

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
PARITY_EXAMPLES = 256
INT8_WARN_DROP = 0.01
FALLBACK_NOISE_EXAMPLES = 128  # dev examples per task on which each node's int8 noise is measured


class _Heads(torch.nn.Module):
    """The model as ONNX sees it: (input_ids, attention_mask) -> one logits tensor per task (or for one task)."""

    def __init__(self, model: MultiTaskModel, task: str | None = None):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(input_ids, attention_mask, task=self.task).logits.values())


def trim_positions(model: MultiTaskModel, length: int) -> bool:
    """Keep only the first `length` rows of a BERT-style absolute position table (and its id buffers), for an
    artifact whose runtime truncates inputs to `length` tokens: 384 fewer rows on a 512-position model. Returns
    False (nothing changed) for other position schemes, or a table that is not longer."""
    embeddings = getattr(model.encoder, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if (not isinstance(table, torch.nn.Embedding) or table.padding_idx is not None
            or not isinstance(getattr(embeddings, "position_ids", None), torch.Tensor)
            or table.num_embeddings <= length):
        return False
    embeddings.position_embeddings = torch.nn.Embedding.from_pretrained(table.weight.detach()[:length].clone())
    for name in ("position_ids", "token_type_ids"):
        if isinstance(getattr(embeddings, name, None), torch.Tensor):
            embeddings.register_buffer(name, getattr(embeddings, name)[:, :length].clone(), persistent=False)
    model.encoder.config.max_position_embeddings = length
    return True


def export_onnx(model: MultiTaskModel, path: Path, opset: int, task: str | None = None) -> None:
    """Write an ONNX graph with every task head (or only `task`'s) as a named output, dynamic batch/sequence axes."""
    tasks = [task] if task else list(model.heads)
    names = [output_name(t) for t in tasks]
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "sequence"},
                                       "attention_mask": {0: "batch", 1: "sequence"}}
    for head, name in zip(tasks, names, strict=True):
        axes[name] = {0: "batch", 1: "sequence"} if model.tasks[head].token_level else {0: "batch"}
    sample = torch.ones((2, 16), dtype=torch.long)
    mask = torch.ones_like(sample)
    mask[1, 8:] = 0  # a padded row, so tracing keeps the attention-mask path of the graph
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Heads(model, task).eval(), (sample, mask), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=names, dynamic_axes=axes,
                          opset_version=opset, dynamo=False)


def quantize_int8(fp32_path: Path, int8_path: Path, mode: str, per_channel: bool, reduce_range: bool,
                  calibration: list[dict[str, np.ndarray]] | None = None,
                  keep_fp32: list[str] | None = None, embeddings: str = "per_row",
                  fallback_nodes: list[str] | None = None, fallback: str = "fp32",
                  only_nodes: list[str] | None = None, outliers: dict[str, np.ndarray] | None = None,
                  int8_heads: bool = False, smoothing: dict[str, np.ndarray] | None = None) -> list[str]:
    """Int8 by onnxruntime: dynamic (weights; activations at run time) or static QDQ calibrated on `calibration`.

    Nodes whose name matches a regular expression of `keep_fp32` stay in fp32; `fallback_nodes` (MatMuls) are
    left out of the int8 scheme and become `fallback`: fp32, `block_int8` (see `block_int8_matmuls`), or
    `outliers`: int8 with their `outliers[node]` input channels in fp32 (see `distill.int8_outliers`). The inputs
    of the MatMuls in `smoothing` are divided by their s first (see `distill.int8_smoothing`). The task
    heads (see `head_nodes`) stay fp32 unless `int8_heads`. With
    `only_nodes`, only those are quantized (embeddings stay fp32). Embedding tables: `per_row` (int8, one
    scale per row, see `distill.embedding_int8`), `per_tensor` (onnxruntime's) or `fp32`. Returns the names
    of the nodes `keep_fp32` matched."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = int8_path.with_name(f"{int8_path.stem}.prepared.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    kept = fp32_node_names(prepared, keep_fp32 or [])
    heads = [] if int8_heads else head_nodes(prepared)
    if smoothing:  # after the names are matched: the smoothing Muls are not the user's nodes
        smooth_inputs(prepared, smoothing)
    if fallback == "outliers":
        assert outliers is not None or not fallback_nodes, "fallback outliers needs the channels of each node"
        small = split_outlier_channels(prepared, {n: outliers[n] for n in fallback_nodes or []}) if outliers else []
        excluded = sorted(set(kept) | set(heads) | set(small))
    else:
        excluded = sorted(set(kept) | set(heads) | set(fallback_nodes or []))
    excluded += gemm_matmul_names(prepared, excluded)
    tables = embedding_gathers(prepared) if embeddings != "per_tensor" or only_nodes is not None else []
    common: dict[str, Any] = {"per_channel": per_channel, "reduce_range": reduce_range,
                              "nodes_to_exclude": excluded + tables, "nodes_to_quantize": only_nodes}
    try:
        with _root_log_level(logging.WARNING):
            if mode == "dynamic":
                quantize_dynamic(str(prepared), str(int8_path), weight_type=QuantType.QInt8, **common)
            else:
                class Reader(CalibrationDataReader):
                    def __init__(self) -> None:
                        self.feeds = iter(calibration or [])

                    def get_next(self) -> dict | None:
                        return next(self.feeds, None)

                quantize_static(str(prepared), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                op_types_to_quantize=["MatMul", "Gemm", "Gather"],
                                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True}, **common)
        if embeddings == "per_row" and only_nodes is None:
            quantize_embedding_rows(int8_path)
        if fallback == "block_int8" and fallback_nodes:
            block_int8_matmuls(int8_path, fallback_nodes)
        return kept
    finally:
        prepared.unlink(missing_ok=True)
        for leftover in int8_path.parent.glob("*augmented*.onnx"):
            leftover.unlink()


def head_nodes(model_path: Path) -> list[str]:
    """The task heads: the last weight MatMul or Gemm on the way back from each graph output (a few KB of weights
    whose int8 rounding lands on the logits directly)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    heads: list[str] = []
    for output in graph.output:
        stack, seen = [output.name], set()
        while stack:
            node = producers.get(stack.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in weights:
                heads.append(node.name)
            else:
                stack.extend(node.input)
    return sorted(set(heads))


def gemm_matmul_names(model_path: Path, names: list[str]) -> list[str]:
    """The MatMuls onnxruntime's quantizer turns the named Gemm nodes into (`<name>_MatMul`): it converts every
    Gemm before it quantizes, so excluding a Gemm by its own name would not keep it in fp32."""
    import onnx

    gemms = {n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node if n.op_type == "Gemm"}
    return [f"{name}_MatMul" for name in names if name in gemms]


def _quantize_graph(source: Path, target: Path, mode: str, spec: ExportSpec, preset: dict[str, Any],
                    feeds: list[dict[str, np.ndarray]] | None, tasks: list[TaskData], pad_id: int,
                    found: list[str] | None = None) -> tuple[list[str], FallbackSearch | None]:
    """One int8 graph; with `export.int8_min_agreement`, the fallback search on dev (see int8_fallback),
    unless another mode's search `found` the nodes already. Returns the keep_fp32 nodes and the search."""
    kept = fp32_node_names(source, spec.keep_fp32)
    fp32_anyway = set(kept) | set([] if spec.int8_heads else head_nodes(source))
    need_outliers = spec.int8_fallback == "outliers" and (bool(found) or spec.int8_min_agreement is not None)
    scales: dict[str, np.ndarray] = {}
    outliers = None
    if spec.int8_smoothing is not None or need_outliers:
        sample_feeds = calibration_feeds(tasks, FALLBACK_NOISE_EXAMPLES, pad_id)
        channel_max = input_channel_max(source, weight_matmuls(source, gemm=False), sample_feeds)
        if spec.int8_smoothing is not None:
            scales = smoothing_scales(source, {n: v for n, v in channel_max.items() if n not in fp32_anyway},
                                      spec.int8_smoothing)
        if need_outliers:  # the channels that stay largest once smoothing divided them by s
            outliers = outlier_channels(smoothed_channel_max(channel_max, scales), spec.int8_outlier_channels)

    def quantize(path: Path, fallback_nodes: list[str] | None = None, only: list[str] | None = None) -> list[str]:
        return quantize_int8(source, path, mode, spec.per_channel, preset["reduce_range"], feeds, spec.keep_fp32,
                             spec.int8_embeddings, fallback_nodes, spec.int8_fallback, only, outliers, spec.int8_heads,
                             scales)

    if spec.int8_min_agreement is None or found is not None:
        return quantize(target, found), None
    level = spec.optimization_level
    reference = OnnxForward(source, optimization_level=level)
    batch = spec.check_batch_size
    dev_fp32 = _predictions(reference, tasks, "dev", pad_id, batch)
    sample = [_dev_sample(t, FALLBACK_NOISE_EXAMPLES) for t in tasks]
    sample_fp32 = _predictions(reference, sample, "dev", pad_id, batch)
    # MatMulNBits and the outlier split replace MatMuls only; a Gemm (a classifier head) can only fall back to fp32
    candidates = [n for n in weight_matmuls(source, gemm=spec.int8_fallback == "fp32") if n not in fp32_anyway]
    probe = target.with_name(f"{target.stem}.probe.onnx")

    def noise_of(node: str) -> float:
        quantize(probe, only=[node])
        return logit_noise(sample_fp32, _predictions(OnnxForward(probe, optimization_level=level), sample, "dev",
                                                     pad_id, batch))

    counted: dict[str, float] = {}

    def agreement_with(fallback_nodes: list[str]) -> dict[str, float]:
        quantize(target, fallback_nodes)
        dev_int8 = _predictions(OnnxForward(target, optimization_level=level), tasks, "dev", pad_id, batch)
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
    search.measure, search.dev_label_agreement = spec.int8_agreement, counted
    if not search.reached:
        log.warning("%s: int8 dev agreement %s is below export.int8_min_agreement %s with %d fallback node(s) "
                    "(export.int8_max_fallback_nodes)", target.name, search.agreement, spec.int8_min_agreement,
                    len(search.nodes))
    return kept, search


def _dev_sample(task: TaskData, n: int) -> TaskData:
    dev = task.encoded["dev"]
    words = dev.words[:n] if dev.words is not None else None
    return replace(task, encoded={"dev": EncodedSplit(dev.input_ids[:n], dev.labels[:n], words)})


@contextmanager
def _root_log_level(level: int) -> Iterator[None]:
    """onnxruntime's quantizer logs a line per tensor through the root logger; keep that out of the run log."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(max(level, before))
    try:
        yield
    finally:
        root.setLevel(before)


def fp32_node_names(model_path: Path, patterns: list[str]) -> list[str]:
    """Names of the graph's nodes that match any of the regular expressions (searched, not anchored)."""
    import onnx

    if not patterns:
        return []
    compiled = [re.compile(p) for p in patterns]
    names = [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node]
    return [name for name in names if any(p.search(name) for p in compiled)]


def calibration_feeds(tasks: list[TaskData], per_task: int, pad_id: int) -> list[dict[str, np.ndarray]]:
    """Padded dev batches of every task, as onnxruntime feeds, for static int8 calibration."""
    feeds = []
    for task in tasks:
        split = _dev_sample(task, per_task).encoded["dev"]
        for indices in eval_batches(split, 16):
            batch = pad_batch(task.info.name, split, indices, pad_id)
            feeds.append({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
    return feeds


def fp32_parity(model: MultiTaskModel, onnx: OnnxForward, tasks: list[TaskData], pad_id: int) -> float:
    """Largest absolute logit difference between PyTorch and ONNX fp32 over dev examples of every task."""
    worst = 0.0
    for task in tasks:
        dev = task.encoded["dev"]
        split = EncodedSplit(dev.input_ids[:PARITY_EXAMPLES], dev.labels[:PARITY_EXAMPLES])
        for indices in eval_batches(split, 32):
            batch = pad_batch(task.info.name, split, indices, pad_id)
            with torch.inference_mode():
                expected = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
            got = onnx.run_all(batch.input_ids, batch.attention_mask)
            for name, array in zip(model.heads, got, strict=True):
                diff = np.abs(expected.logits[name].numpy() - array)
                valid = batch.attention_mask.astype(bool) if diff.ndim == 3 else np.ones(diff.shape[0], bool)
                worst = max(worst, float(diff[valid].max()))
    return worst


def library_versions() -> dict[str, str]:
    names = ("torch", "transformers", "onnx", "onnxruntime", "tokenizers", "numpy")
    return {"python": platform.python_version(), **{n: version(n) for n in names}}


def _predictions(forward: ForwardFn, tasks: list[TaskData], split: str, pad_id: int,
                 batch_size: int = 64) -> dict[str, list[np.ndarray]]:
    return {t.info.name: predict(forward, t.info.name, t.encoded[split], pad_id, batch_size) for t in tasks}


def export_artifact(model_dir: Path, out_dir: Path, tasks: list[TaskData], spec: ExportSpec, max_length: int,
                    pad_id: int) -> dict[str, Any]:
    """Export `model_dir` to an artifact directory (ONNX files, tokenizer, tasks.json, manifest.json)."""
    model = MultiTaskModel.load(model_dir)
    positions = int(model.encoder.config.max_position_embeddings)
    if spec.positions == "max_length" and trim_positions(model, max_length):
        log.info("%s: position table cut from %d to max_length %d rows", model_dir.name, positions, max_length)
        positions = max_length
    cpu = hardware()
    preset = int8_preset(cpu["isa"]) if spec.isa == "auto" else INT8_PRESETS[spec.isa]
    level = spec.optimization_level
    with atomic_directory(out_dir) as tmp:
        fp32_path = _graph_files(tmp, "fp32", model, spec.graphs)
        for task, path in _by_task(fp32_path):
            export_onnx(model, path, spec.opset, task)
        fp32 = OnnxForward(fp32_path, optimization_level=level)
        parity = fp32_parity(model, fp32, tasks, pad_id)
        log.info("%s: ONNX fp32 max abs logit difference vs PyTorch %.2e", model_dir.name, parity)
        if parity > spec.parity_tolerance:
            raise DistillError(f"export of {model_dir}: ONNX fp32 differs from PyTorch by {parity:.2e} "
                               f"(> export.parity_tolerance {spec.parity_tolerance:.0e})")
        torch_dev = primary_scores(tasks, evaluate(torch_forward(model), tasks, "dev", pad_id, desc="torch dev"))
        torch_test = _predictions(torch_forward(model), tasks, "test", pad_id)
        fp32_test = _predictions(fp32, tasks, "test", pad_id)
        checks: dict[str, Any] = {
            "fp32_max_abs_diff": parity, "parity_tolerance": spec.parity_tolerance,
            "parity_examples_per_task": PARITY_EXAMPLES, "dev_torch_fp32": torch_dev,
            "test_label_agreement_fp32_vs_torch": label_agreement(tasks, "test", fp32_test, torch_test),
            "int8": {},
        }
        # per_row stores a table trained on a 4-bit grid (students' embedding_bits: 4) at 4 bits, others at 8
        word_bits = 4 if on_int4_grid(model.encoder.get_input_embeddings().weight.detach().numpy()) else 8
        # the fp32 fallback search runs in the first int8 mode; later modes keep the same nodes in fp32
        fallbacks: dict[str | None, list[str]] = {}
        first_mode = spec.quantization[0]
        for mode in spec.quantization if spec.int8 else []:
            precision = "int8" if mode == "dynamic" else "int8-static"
            int8_path = _graph_files(tmp, precision, model, spec.graphs)
            feeds = calibration_feeds(tasks, spec.calibration_examples, pad_id) if mode == "static" else None
            excluded, searches = [], {}
            for (task, source), (_, target) in zip(_by_task(fp32_path), _by_task(int8_path), strict=True):
                graph_tasks = [t for t in tasks if task is None or t.info.name == task]
                kept, search = _quantize_graph(source, target, mode, spec, preset, feeds, graph_tasks, pad_id,
                                               fallbacks.get(task))
                excluded += kept
                if search is not None:
                    searches[task or "model"] = search.as_dict()
                    fallbacks[task] = search.nodes
                elif task in fallbacks:
                    searches[task or "model"] = {"nodes": fallbacks[task], "searched_in": first_mode}
            int8 = OnnxForward(int8_path, optimization_level=level)
            int8_dev = primary_scores(tasks, evaluate(int8, tasks, "dev", pad_id, desc=f"{mode} int8 dev",
                                                      batch_size=spec.check_batch_size))
            delta = {t: int8_dev[t] - torch_dev[t] for t in torch_dev}
            int8_test = _predictions(int8, tasks, "test", pad_id, spec.check_batch_size)
            checks["int8"][mode] = {
                "files": [p.name for _, p in _by_task(int8_path)], "per_channel": spec.per_channel,
                "fp32_nodes": len(excluded), "embeddings": spec.int8_embeddings,
                **({"word_embedding_bits": word_bits} if spec.int8_embeddings == "per_row" else {}),
                **({"fallback": spec.int8_fallback, "fallback_search": searches} if searches else {}),
                **({"outlier_channels": spec.int8_outlier_channels}
                   if searches and spec.int8_fallback == "outliers" else {}),
                "reduce_range": preset["reduce_range"], "smoothing": spec.int8_smoothing,
                "batch_size": spec.check_batch_size,
                "dev": int8_dev, "metric_delta": delta,
                "test_label_agreement_vs_fp32": label_agreement(tasks, "test", int8_test, fp32_test),
                "test_expected_agreement_vs_fp32": expected_agreement(tasks, "test", fp32_test, int8_test),
            }
            _check_int8_drop(model_dir, mode, delta, spec.max_int8_drop)
        if not spec.fp32:
            for _, path in _by_task(fp32_path):
                path.unlink()
        for name in (*TOKENIZER_FILES, TASKS_FILE):
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        manifest = {
            "source_model": str(model_dir), "max_length": max_length, "positions": positions,
            "optimization_level": level,
            "graphs": spec.graphs,
            "inputs": {"model_sha256": sha256_dir(model_dir), "export": spec.model_dump()},
            "files": {p.name: sha256_file(p) for p in sorted(tmp.glob("*.onnx"))},
            "versions": library_versions(), "cpu": {"model": cpu["cpu"], "isa": cpu["isa"], **preset},
            "checks": checks,
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


def _graph_files(directory: Path, precision: str, model: MultiTaskModel, graphs: str) -> Path | dict[str, Path]:
    if graphs == "per_task":
        return {task: directory / task_file(precision, task) for task in model.heads}
    return directory / MODEL_FILES[precision]


def _by_task(files: Path | dict[str, Path]) -> list[tuple[str | None, Path]]:
    return list(files.items()) if isinstance(files, dict) else [(None, files)]


def _check_int8_drop(model_dir: Path, mode: str, delta: dict[str, float], limit: float | None) -> None:
    worst_task = min(delta, key=delta.get)
    drop = -delta[worst_task]
    if limit is not None and drop > limit:
        raise DistillError(f"export of {model_dir}: {mode} int8 loses {drop:.4f} dev {worst_task} score "
                           f"(> export.max_int8_drop {limit})")
    if drop > INT8_WARN_DROP:
        log.warning("%s: %s int8 loses %.4f dev %s score against PyTorch", model_dir.name, mode, drop, worst_task)
