"""Measuring one model: test-split scores, latency grid, throughput, memory, FLOPs, parameters and size."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from distill.bench.latency import bench_inputs, round_sizes, run_in_fresh_process, summarise
from distill.core.fileio import read_json
from distill.core.manifest import activation_scales, fallback_node_count, read_manifest
from distill.core.progress import progress
from distill.data.evaluation import ForwardFn, evaluate, primary_scores, torch_forward
from distill.data.metrics import mean_score
from distill.data.tasks import TaskData
from distill.model.encoder import config_value, find_anatomy, head_size
from distill.model.multitask import MultiTaskModel
from distill.recipe import BenchSpec
from distill.runtime import INT8_PRECISIONS, OnnxForward, model_files


@dataclass
class ModelEntry:
    """A model to measure: a PyTorch model directory (format torch-fp32) or an artifact directory and the
    precision to run (format onnx-<precision>), and the model directory it came from."""

    name: str
    role: str
    format: str
    path: Path
    model_dir: Path
    params: int
    optimization_level: str = "all"


def count_params(model_dir: Path) -> int:
    """Parameters of a saved multi-task model (encoder and heads)."""
    return sum(p.numel() for p in MultiTaskModel.load(model_dir).parameters())


def onnx_files(entry: ModelEntry) -> Path | dict[str, Path]:
    """The ONNX file (or per-task files) of an onnx-<precision> entry."""
    files = model_files(entry.path, entry.format.removeprefix("onnx-"))
    if files is None:
        raise FileNotFoundError(f"{entry.path}: no {entry.format} model")
    return files


def size_bytes(entry: ModelEntry) -> int:
    """Bytes on disk: the ONNX file(s), or the safetensors weights of a PyTorch model directory."""
    if entry.format == "torch-fp32":
        return sum(p.stat().st_size for p in entry.path.glob("*.safetensors"))
    files = onnx_files(entry)
    return sum(p.stat().st_size for p in (files.values() if isinstance(files, dict) else [files]))


def int8_scheme(entry: ModelEntry) -> dict[str, Any] | None:
    """How an onnx-int8 / onnx-int8-static entry was quantized, from its manifest: the export's int8 mode, the
    activation scales (static ones are calibrated per tensor) and the weight products the accuracy search kept out
    of int8 (whole or their outlier channels). None for other formats, or where the manifest has no checks of
    that mode."""
    mode = next((m for m, precision in INT8_PRECISIONS.items() if entry.format == f"onnx-{precision}"), None)
    check = (read_manifest(entry.path).checks.get("int8") or {}).get(mode) if mode else None
    if not isinstance(check, dict):
        return None
    return {"mode": mode, "activations": activation_scales(check), "kept_out": fallback_node_count(check)}


def saved_config(model_dir: Path) -> SimpleNamespace:
    """A model directory's config.json as attributes, without transformers."""
    return SimpleNamespace(**read_json(model_dir / "config.json"))


def flops_estimate(model_dir: Path, seq_len: int) -> float:
    """Multiply-adds × 2 of one forward pass at batch 1 × seq_len, from the encoder's config.json (any family the
    encoder anatomy knows; heads removed by pruning, `config.pruned_heads`, shrink that layer's attention width)."""
    config = saved_config(model_dir)
    hidden, layers = config_value(config, "hidden"), config_value(config, "layers")
    family = find_anatomy(config)
    ffn = config_value(config, "ffn", default=4 * hidden)
    ffn_matrices = 3 if family and family.ffn_glu else 2
    heads, size = config_value(config, "heads"), head_size(config)
    pruned = getattr(config, "pruned_heads", None) or {}
    total = 0.0
    for layer in range(layers):
        attention = size * (heads - len(pruned.get(str(layer), [])))
        total += (2 * seq_len * (4 * hidden * attention + ffn_matrices * hidden * ffn)
                  + 2 * 2 * seq_len * seq_len * attention)
    return total


def deployed_model(entry: ModelEntry, threads: int) -> dict[str, Any]:
    """What `run_in_fresh_process` loads for an entry: its format, files and optimisation level."""
    return {"format": entry.format, "path": entry.path, "threads": threads, "level": entry.optimization_level}


def bench_feed(tasks: list[TaskData], pad_id: int, batch: int, seq_len: int) -> np.ndarray:
    """The input_ids the bench times a model on: real test-split token ids (64 per task), cycled or cut."""
    sample = [ids for t in tasks for ids in t.encoded["test"].input_ids[:64]]
    return bench_inputs(sample, batch, seq_len, pad_id)[0]


def peak_memory_mb(entry: ModelEntry, batch: int, seq_len: int, threads: int) -> float:
    """Peak resident memory (MB) of a fresh process that loads the model, as deployed, and runs one batch
    (every task's output)."""
    with tempfile.TemporaryDirectory() as tmp:
        feed = Path(tmp) / "ones.npy"
        np.save(feed, np.ones((batch, seq_len), dtype=np.int64))
        return run_in_fresh_process(deployed_model(entry, threads), [feed], None, warmup=0, repeats=1)[1]


def latency_grid(spec: BenchSpec, extra_lengths: list[int] = ()) -> list[tuple[int, int]]:
    """(batch, sequence length) shapes to time: every batch size at seq_len, then batch 1 at other lengths (the
    recipe's, then `extra_lengths`)."""
    grid = [(batch, spec.seq_len) for batch in spec.batch_sizes]
    for length in [*spec.other_seq_lens, *extra_lengths]:
        if (1, length) not in grid:
            grid.append((1, length))
    return grid


def median_test_length(tasks: list[TaskData]) -> int:
    """The median token count of the test examples of every task: what users' texts look like."""
    return int(np.median([len(ids) for t in tasks for ids in t.encoded["test"].input_ids]))


def gemm_shapes(model_dirs: list[Path], seq_len: int) -> list[tuple[int, int, int]]:
    """The (tokens, in, out) products the models spend their time in: hidden × hidden and hidden × FFN."""
    shapes = []
    for model_dir in dict.fromkeys(model_dirs):
        config = saved_config(model_dir)
        hidden = config_value(config, "hidden")
        shapes += [(seq_len, hidden, hidden), (seq_len, hidden, config_value(config, "ffn", default=4 * hidden))]
    return list(dict.fromkeys(shapes))


def measure_latencies(entries: list[ModelEntry], inputs: list[tuple[list[TaskData], int]], spec: BenchSpec,
                      threads: int, extra_lengths: list[int] = ()) -> list[list[dict[str, Any]]]:
    """For each model, its latency at every grid shape on its own (tasks, pad id) inputs.

    Each model is timed in a process of its own, as it is deployed: models loaded side by side in one process
    slow each other down (idle thread pools, caches), by 13-62 % on the base demo even without spinning threads.
    The calls are spread over `spec.rounds` rounds, the models taking turns (a new process each), so that a
    slow spell of a shared machine hits every model alike."""
    grid = latency_grid(spec, extra_lengths)
    first_task = inputs[0][0][0].info.name
    times: list[list[list[np.ndarray]]] = [[[] for _ in grid] for _ in entries]
    with tempfile.TemporaryDirectory() as tmp:
        feeds = []
        for k, (tasks, pad) in enumerate(inputs):
            feeds.append([Path(tmp) / f"{k}-{batch}x{seq_len}.npy" for batch, seq_len in grid])
            for feed, (batch, seq_len) in zip(feeds[-1], grid, strict=True):
                np.save(feed, bench_feed(tasks, pad, batch, seq_len))
        sizes = round_sizes(spec.repeats, spec.rounds)
        with progress(total=len(sizes) * len(entries), desc="latency", unit="model") as bar:
            for count in sizes:
                for k, entry in enumerate(entries):
                    got, _ = run_in_fresh_process(deployed_model(entry, threads), feeds[k], first_task, spec.warmup,
                                                  count)
                    for s, shape_times in enumerate(got):
                        times[k][s].append(shape_times)
                    bar.update(1)
    return [[{"batch": batch, "seq_len": seq_len, **summarise(np.concatenate(times[k][s]))}
             for s, (batch, seq_len) in enumerate(grid)] for k in range(len(entries))]


def model_forward(entry: ModelEntry, threads: int) -> ForwardFn:
    """The entry loaded for scoring: PyTorch, or onnxruntime at the artifact's optimisation level, its threads
    not spinning between runs (every model's session stays open while the others are scored)."""
    if entry.format == "torch-fp32":
        torch.set_num_threads(threads)
        return torch_forward(MultiTaskModel.load(entry.path))
    return OnnxForward(onnx_files(entry), threads, entry.optimization_level, spinning=False)


def measure_model(entry: ModelEntry, forward: ForwardFn, latencies: list[dict[str, Any]], tasks: list[TaskData],
                  spec: BenchSpec, threads: int, pad_id: int) -> dict[str, Any]:
    """One `models` item of report.json (without retention), given the model's latency grid."""
    metrics = evaluate(forward, tasks, "test", pad_id, desc=f"{entry.name} test")
    scores = primary_scores(tasks, metrics)
    largest = max(latencies[: len(spec.batch_sizes)], key=lambda x: x["batch"])
    return {
        "name": entry.name, "role": entry.role, "format": entry.format, "params": entry.params,
        "size_bytes": size_bytes(entry), "latency_ms": latencies[0], "latencies": latencies,
        "throughput_per_s": largest["batch"] * 1000.0 / largest["p50"],
        "peak_memory_mb": peak_memory_mb(entry, largest["batch"], spec.seq_len, threads),
        "flops": flops_estimate(entry.model_dir, spec.seq_len),
        "scores": scores, "metrics": metrics, "mean_score": mean_score(scores),
        **({"int8": scheme} if (scheme := int8_scheme(entry)) else {}),
    }
