"""Measuring one model: test-split scores, latency at each batch size, throughput, parameters and size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from distill.progress import progress

from benchmarks.latency import bench_inputs, measure
from distill.data import TaskData
from distill.evaluation import ForwardFn, evaluate, primary_scores, torch_forward
from distill.metrics import mean_score
from distill.recipe import BenchSpec
from distill.runtime import OnnxForward
from teachers.multitask import MultiTaskModel


@dataclass
class ModelEntry:
    """A model to measure: a PyTorch model directory or one ONNX file."""

    name: str
    role: str
    format: str
    path: Path
    params: int


def count_params(model_dir: Path) -> int:
    """Parameters of a saved multi-task model (encoder and heads)."""
    return sum(p.numel() for p in MultiTaskModel.load(model_dir).parameters())


def size_bytes(entry: ModelEntry) -> int:
    """Bytes on disk: the ONNX file, or the safetensors weights of a PyTorch model directory."""
    if entry.path.is_file():
        return entry.path.stat().st_size
    return sum(p.stat().st_size for p in entry.path.glob("*.safetensors"))


def _forward(entry: ModelEntry, threads: int) -> ForwardFn:
    if entry.format == "torch-fp32":
        torch.set_num_threads(threads)
        return torch_forward(MultiTaskModel.load(entry.path))
    return OnnxForward(entry.path, threads)


def measure_model(entry: ModelEntry, tasks: list[TaskData], spec: BenchSpec, threads: int, pad_id: int) -> dict[str, Any]:
    """One `models` item of report.json (without retention)."""
    forward = _forward(entry, threads)
    metrics = evaluate(forward, tasks, "test", pad_id, desc=f"{entry.name} test")
    scores = primary_scores(tasks, metrics)
    sample = [ids for t in tasks for ids in t.encoded["test"].input_ids[:64]]
    first_task = tasks[0].info.name
    latencies = []
    for batch in progress(spec.batch_sizes, desc=f"{entry.name} latency", leave=False, unit="batch size"):
        input_ids, mask = bench_inputs(sample, batch, spec.seq_len, pad_id)
        timing = measure(lambda ids=input_ids, m=mask: forward(first_task, ids, m), spec.warmup, spec.repeats)
        latencies.append({"batch": batch, "seq_len": spec.seq_len, **timing})
    largest = max(latencies, key=lambda x: x["batch"])
    return {
        "name": entry.name, "role": entry.role, "format": entry.format, "params": entry.params,
        "size_bytes": size_bytes(entry), "latency_ms": latencies[0],
        "latency_by_batch": latencies,
        "throughput_per_s": largest["batch"] * 1000.0 / largest["p50"],
        "scores": scores, "metrics": metrics, "mean_score": mean_score(scores),
    }
