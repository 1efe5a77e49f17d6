"""The bench stage: measure the teacher, the int8 baseline and every student artifact; write the reports."""

from __future__ import annotations

import logging
from pathlib import Path

from distill.bench.measure import (
    ModelEntry,
    count_params,
    gemm_shapes,
    measure_latencies,
    measure_model,
    median_test_length,
    model_forward,
)
from distill.bench.peak import achieved, best_peak, machine_peak
from distill.bench.report import add_retention, write_reports
from distill.core.fileio import read_json
from distill.core.hardware import hardware
from distill.core.manifest import read_manifest
from distill.data.tasks import TaskData
from distill.recipe import BenchSpec
from distill.runtime import MODEL_FILES, model_files
from students.layers import STUDENT_FILE
from students.vocab_map import student_inputs

log = logging.getLogger(__name__)


def model_entries(teacher_dir: Path, artifacts: dict[str, Path], model_dirs: dict[str, Path]) -> list[ModelEntry]:
    """The teacher in PyTorch, then each artifact's ONNX files (the teacher's int8 files are the baseline)."""
    params_of = {name: count_params(path) for name, path in model_dirs.items()}
    entries = [ModelEntry("teacher", "teacher", "torch-fp32", teacher_dir, teacher_dir, params_of["teacher"])]
    for name, directory in artifacts.items():
        params = params_of[name]
        level = read_manifest(directory).optimization_level
        for precision in MODEL_FILES:
            if model_files(directory, precision) is None:
                continue
            role = "student"
            if name == "teacher":
                role = "teacher" if precision == "fp32" else "baseline"
            entry_name = "baseline" if role == "baseline" else name
            entries.append(ModelEntry(entry_name, role, f"onnx-{precision}", directory, model_dirs[name],
                                      params, level))
    return entries


def run_benchmarks(tasks: list[TaskData], entries: list[ModelEntry], spec: BenchSpec, pad_id: int,
                   out_dir: Path) -> dict:
    """Measure every entry on the test split and write report.json, report.md and the Pareto plot."""
    threads = spec.threads or hardware()["cores"] or 1
    forwards = [model_forward(entry, threads) for entry in entries]
    # a vocabulary-pruned student reads its own token ids
    inputs = [student_inputs(entry.model_dir, tasks, pad_id) for entry in entries]
    log.info("bench: int8 and fp32 matrix products at the models' shapes, for the machine's peak")
    shapes = gemm_shapes([e.model_dir for e in entries], spec.seq_len)
    peak = machine_peak(shapes, threads)
    log.info("bench: peak %.0f int8 GOP/s, %.0f fp32 GOP/s", peak["int8_gops"], peak["fp32_gops"])
    median = median_test_length(tasks)
    log.info("bench: timing %d models, each in a process of its own, in %d rounds", len(entries), spec.rounds)
    latencies = measure_latencies(entries, inputs, spec, threads, [median])
    peak = best_peak(peak, machine_peak(shapes, threads))
    log.info("bench: peak measured again after the models: %.0f int8 GOP/s, %.0f fp32 GOP/s", peak["int8_gops"],
             peak["fp32_gops"])
    models = []
    for k, (entry, forward, grid) in enumerate(zip(entries, forwards, latencies, strict=True)):
        log.info("bench: %s (%s)", entry.name, entry.format)
        entry_tasks, entry_pad = inputs[k]
        models.append(measure_model(entry, forward, grid, entry_tasks, spec, threads, entry_pad))
        models[-1]["latency_median_length_ms"] = next(x for x in grid if x["batch"] == 1 and x["seq_len"] == median)
        models[-1].update(achieved(models[-1]["flops"], models[-1]["latency_ms"]["p50"], entry.format, peak))
        if entry.role == "student" and (entry.model_dir / STUDENT_FILE).is_file():
            models[-1]["student"] = read_json(entry.model_dir / STUDENT_FILE)
    add_retention(models)
    report = {
        "hardware": hardware(threads),
        "tasks": [{"name": t.info.name, "type": t.info.type, "metric": t.info.metric} for t in tasks],
        "median_test_tokens": median,
        "machine_peak": peak,
        "models": models,
    }
    write_reports(report, out_dir)
    return report
