"""The exporter: ONNX fp32 and int8 (dynamic, static) artifacts, checked against PyTorch and the task metrics."""

from __future__ import annotations

import logging
import platform
import shutil
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from distill.core.errors import DistillError
from distill.core.fileio import atomic_directory, atomic_write_json, sha256_dir, sha256_file
from distill.core.hardware import hardware
from distill.core.int8_presets import PER_TOKEN_ACTIVATIONS, configured_preset
from distill.core.manifest import HF_DIR, read_tasks
from distill.core.tokenizer import TOKENIZER_FILES
from distill.data.evaluation import evaluate, primary_scores, torch_forward
from distill.data.tasks import TaskData
from distill.export.agreement import expected_agreement, label_agreement
from distill.export.embeddings import on_int4_grid
from distill.export.fusion import Fusion, fuse_graphs, matching_nodes, per_token_graphs, unfuse_graphs
from distill.export.hf_dirs import write_hf_dirs
from distill.export.onnx_graph import (
    PARITY_EXAMPLES,
    export_onnx,
    fp32_parity,
    trim_positions,
)
from distill.export.quantize import (
    applied_smoothing,
    calibration_feeds,
    quantize_graph,
    split_predictions,
)
from distill.model.multitask import TASKS_FILE, MultiTaskModel
from distill.recipe import ExportSpec
from distill.runtime import INT8_PRECISIONS, MODEL_FILES, OnnxForward, task_file

log = logging.getLogger(__name__)
INT8_WARN_DROP = 0.01
# export.int8_activations: auto tries these in turn, fastest first (per token costs a few operators per product,
# asymmetric two passes more)
AUTO_ACTIVATIONS = ("per_tensor", "per_token", "per_token_asymmetric")
# where none reaches the target, the search starts from the fastest scheme that no slower one beat by this much
# (dev agreement, worst task): a slower scheme has to earn its cost by one label in a thousand, more than the noise
# of the estimate (on a 2-layer student, per-token int8 ran at fp32's speed, per tensor 30 % faster)
AUTO_MIN_GAIN = 0.001


def library_versions() -> dict[str, str]:
    names = ("torch", "transformers", "onnx", "onnxruntime", "tokenizers", "numpy")
    return {"python": platform.python_version(), **{n: version(n) for n in names}}


def export_artifact(model_dir: Path, out_dir: Path, tasks: list[TaskData], spec: ExportSpec, max_length: int,
                    pad_id: int) -> dict[str, Any]:
    """Export `model_dir` to an artifact directory (ONNX files, tokenizer, tasks.json, manifest.json)."""
    model = MultiTaskModel.load(model_dir)
    positions = int(model.encoder.config.max_position_embeddings)
    if spec.positions == "max_length" and trim_positions(model, max_length):
        log.info("%s: position table cut from %d to max_length %d rows", model_dir.name, positions, max_length)
        positions = max_length
    cpu = hardware()
    preset = configured_preset(spec.isa)
    level = spec.optimization_level
    with atomic_directory(out_dir) as tmp:
        fp32_path = _graph_files(tmp, "fp32", model, spec.graphs)
        fp32_graphs = dict(_by_task(fp32_path))
        for task, path in fp32_graphs.items():
            export_onnx(model, path, spec.opset, task)
        unfused = {task: path.with_name(f"{path.stem}.unfused.onnx") for task, path in fp32_graphs.items()}
        fusions = fuse_graphs(fp32_graphs, unfused, spec.int8_embeddings != "per_row") \
            if spec.fuse else {}
        fp32 = OnnxForward(fp32_path, optimization_level=level)
        parity = fp32_parity(model, fp32, tasks, pad_id)
        if parity > spec.parity_tolerance and any(f.fused for f in fusions.values()):
            reason = f"fused logits differ from PyTorch by {parity:.2e} (> export.parity_tolerance " \
                     f"{spec.parity_tolerance:.0e})"
            fusions = unfuse_graphs(fp32_graphs, unfused, reason)
            log.warning("%s: %s; the graphs ship unfused", model_dir.name, next(iter(fusions.values())).note)
            fp32 = OnnxForward(fp32_path, optimization_level=level)
            parity = fp32_parity(model, fp32, tasks, pad_id)
        for graph, fusion in fusions.items():
            log.info("%s: %s", model_dir.name if graph is None else f"{model_dir.name} {graph}",
                     f"fused {fusion.ops}" if fusion.fused else f"unfused: {fusion.note}")
        log.info("%s: ONNX fp32 max abs logit difference vs PyTorch %.2e", model_dir.name, parity)
        if parity > spec.parity_tolerance:
            raise DistillError(f"export of {model_dir}: ONNX fp32 differs from PyTorch by {parity:.2e} "
                               f"(> export.parity_tolerance {spec.parity_tolerance:.0e})")
        per_token_sources: dict[str | None, tuple[Path, Fusion]] = {}

        def dynamic_source(task: str | None, fp32_source: Path, activations: str) -> Path:
            """The graph dynamic int8 with these activation scales quantizes (per token: MultiHeadAttention)."""
            if activations not in PER_TOKEN_ACTIVATIONS or not (task in fusions and fusions[task].fused):
                return fp32_source
            if not per_token_sources:
                per_token_sources.update(_per_token_sources(model_dir.name, model, fp32_graphs, unfused, fusions,
                                                            spec, tasks, pad_id))
            return per_token_sources[task][0]

        auto = _auto_activations(model_dir.name, fp32_path, dynamic_source, tmp, model, spec, preset, tasks,
                                 pad_id, fp32) \
            if spec.int8 and "dynamic" in spec.quantization and spec.int8_activations == "auto" else None
        # where a scheme auto tried reached the target with every product in int8, that graph is the model
        all_int8 = auto is not None and auto["reached"]
        dynamic_spec = spec if auto is None else spec.model_copy(update={"int8_activations": auto["chose"]} | (
            {"int8_min_agreement": None} if all_int8 else {}))
        torch_dev = primary_scores(tasks, evaluate(torch_forward(model), tasks, "dev", pad_id, desc="torch dev"))
        torch_test = split_predictions(torch_forward(model), tasks, "test", pad_id)
        fp32_test = split_predictions(fp32, tasks, "test", pad_id)
        checks: dict[str, Any] = {
            "fp32_max_abs_diff": parity, "parity_tolerance": spec.parity_tolerance,
            "parity_examples_per_task": PARITY_EXAMPLES, "dev_torch_fp32": torch_dev,
            "test_label_agreement_fp32_vs_torch": label_agreement(tasks, "test", fp32_test, torch_test),
            "int8": {},
        }
        # per_row stores a table trained on a 4-bit grid (students' embedding_bits: 4) at 4 bits, others at 8
        word_bits = 4 if on_int4_grid(model.encoder.get_input_embeddings().weight.detach().numpy()) else 8
        # the fp32 fallback search runs in the first int8 mode; later modes keep the same nodes in fp32
        fallbacks: dict[str | None, tuple[list[str], str]] = {}  # the nodes taken out, and what they became
        searched_in: dict[str | None, Path] = {}  # the graph whose node names `fallbacks` holds
        first_mode = spec.quantization[0]
        for mode in spec.quantization if spec.int8 else []:
            precision = INT8_PRECISIONS[mode]
            int8_path = _graph_files(tmp, precision, model, spec.graphs)
            feeds = calibration_feeds(tasks, spec.calibration_examples, pad_id) if mode == "static" else None
            excluded, searches, graph, graph_ops = [], {}, "unfused", {}
            for (task, fp32_source), (_, target) in zip(_by_task(fp32_path), _by_task(int8_path), strict=True):
                graph_tasks = [t for t in tasks if task is None or t.info.name == task]
                source, found = fp32_source, fallbacks.get(task)
                if task in fusions and fusions[task].fused:
                    graph = "fused"
                    if mode == "static":  # QDQ has no fused Attention: the unfused graph, fused by the runtime
                        source, graph = unfused[task], "unfused (static QDQ)"
                    elif dynamic_source(task, fp32_source, dynamic_spec.int8_activations) != fp32_source:
                        source, fused_apart = per_token_sources[task]
                        graph = "fused, MultiHeadAttention (per-token int8)" if fused_apart.fused else \
                            f"unfused (per-token int8: {fused_apart.note})"
                        graph_ops[task or "model"] = fused_apart.ops
                if found and searched_in[task] != source:
                    found = (matching_nodes(searched_in[task], source, found[0]), found[1])
                chosen_all_int8 = mode == "dynamic" and all_int8
                kept, search = quantize_graph(source, target, mode, dynamic_spec if mode == "dynamic" else spec,
                                              preset, feeds, graph_tasks, pad_id, None if chosen_all_int8 else found)
                if chosen_all_int8:  # the modes after it take no node out either
                    fallbacks[task], searched_in[task] = ([], spec.int8_fallback), source
                excluded += kept
                if search is not None:
                    searches[task or "model"] = search.as_dict()
                    fallbacks[task], searched_in[task] = (search.nodes, search.fallback), source
                elif found is not None and not chosen_all_int8:
                    searches[task or "model"] = {"nodes": found[0], "fallback": found[1], "searched_in": first_mode}
            int8 = OnnxForward(int8_path, optimization_level=level)
            int8_dev = primary_scores(tasks, evaluate(int8, tasks, "dev", pad_id, desc=f"{mode} int8 dev",
                                                      batch_size=spec.check_batch_size))
            delta = {t: int8_dev[t] - torch_dev[t] for t in torch_dev}
            int8_test = split_predictions(int8, tasks, "test", pad_id, spec.check_batch_size)
            checks["int8"][mode] = {
                "files": [p.name for _, p in _by_task(int8_path)], "graph": graph,
                **({"fused_ops": graph_ops} if graph_ops else {}),
                **({"activations": dynamic_spec.int8_activations} if mode == "dynamic" else {}),
                **({"activations_auto": auto} if mode == "dynamic" and auto is not None else {}),
                "per_channel": spec.per_channel,
                "fp32_nodes": len(excluded), "embeddings": spec.int8_embeddings,
                **({"word_embedding_bits": word_bits} if spec.int8_embeddings == "per_row" else {}),
                **({"fallback": spec.int8_fallback, "fallback_search": searches} if searches else {}),
                **({"outlier_channels": spec.int8_outlier_channels}
                   if searches and spec.int8_fallback == "outliers" else {}),
                "reduce_range": preset["reduce_range"],
                "smoothing": applied_smoothing(dynamic_spec if mode == "dynamic" else spec, mode),
                "batch_size": spec.check_batch_size,
                "dev": int8_dev, "metric_delta": delta,
                "test_label_agreement_vs_fp32": label_agreement(tasks, "test", int8_test, fp32_test),
                "test_expected_agreement_vs_fp32": expected_agreement(tasks, "test", fp32_test, int8_test),
            }
            _check_int8_drop(model_dir, mode, delta, spec.max_int8_drop)
        for name in (*TOKENIZER_FILES, TASKS_FILE):
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        hf_dirs = {}
        if spec.hf_dirs:
            precision = INT8_PRECISIONS["dynamic" if "dynamic" in spec.quantization else "static"] if spec.int8 \
                else "fp32"
            hf_dirs = write_hf_dirs(tmp, model_dir, _graph_files(tmp, precision, model, spec.graphs), read_tasks(tmp))
            log.info("%s: Hugging Face directories (%s) in %s/", model_dir.name, precision, HF_DIR)
        refitted = [path for task, (path, _) in per_token_sources.items() if path != fp32_graphs[task]]
        for path in [*unfused.values(), *refitted]:
            path.unlink(missing_ok=True)
        if not spec.fp32:
            for _, path in _by_task(fp32_path):
                path.unlink()
        manifest = {
            "source_model": str(model_dir), "max_length": max_length, "positions": positions,
            "optimization_level": level,
            **({"fusion": {graph or "model": f.as_dict() for graph, f in fusions.items()}} if fusions else {}),
            "graphs": spec.graphs,
            "inputs": {"model_sha256": sha256_dir(model_dir), "export": spec.model_dump()},
            "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
            **({"hf_dirs": hf_dirs} if hf_dirs else {}),
            "versions": library_versions(), "cpu": {"model": cpu["cpu"], "isa": cpu["isa"], **preset},
            "checks": checks,
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


def _per_token_sources(name: str, model: MultiTaskModel, graphs: dict[str | None, Path],
                       unfused: dict[str | None, Path], fusions: dict[str | None, Fusion], spec: ExportSpec,
                       tasks: list[TaskData], pad_id: int) -> dict[str | None, tuple[Path, Fusion]]:
    """The graphs per-token int8 quantizes (see `per_token_graphs`), held to the fp32 parity tolerance against
    PyTorch like the fp32 model; where the refitted graphs miss it, the unfused copies."""
    sources = per_token_graphs(graphs, unfused, fusions, spec.int8_embeddings != "per_row")
    refitted = [task for task, (path, _) in sources.items() if path not in (graphs[task], unfused[task])]
    if not refitted:
        return sources
    paths = {task: path for task, (path, _) in sources.items()}
    forward = OnnxForward(paths.get(None, paths), optimization_level=spec.optimization_level)
    parity = fp32_parity(model, forward, tasks, pad_id)
    if parity > spec.parity_tolerance:
        note = f"MultiHeadAttention logits differ from PyTorch by {parity:.2e}"
        log.warning("%s: %s; per-token int8 quantizes the unfused graphs", name, note)
        for task in refitted:
            sources[task][0].unlink()
            sources[task] = (unfused[task], Fusion(False, {}, note))
    return sources


def _auto_activations(name: str, fp32_graphs: Path | dict[str, Path],
                      dynamic_source: Callable[[str | None, Path, str], Path], directory: Path,
                      model: MultiTaskModel, spec: ExportSpec, preset: dict[str, Any], tasks: list[TaskData],
                      pad_id: int, fp32: OnnxForward) -> dict[str, Any]:
    """`export.int8_activations: auto`: the first of AUTO_ACTIVATIONS (fastest first) whose dynamic int8 graph,
    with every weight product in int8 (keep_fp32 and the heads aside), reaches int8_min_agreement on every task's
    dev split at check_batch_size; where none does, the fastest scheme that no slower one beat by AUTO_MIN_GAIN,
    with the accuracy search. Returns the choice and what it rests on, for the manifest."""
    if spec.int8_min_agreement is None:
        log.info("%s: int8_activations auto: per_token (no int8_min_agreement to hold per_tensor to)", name)
        return {"chose": "per_token", "reached": False, "why": "no export.int8_min_agreement"}
    batch = spec.check_batch_size
    dev_fp32 = split_predictions(fp32, tasks, "dev", pad_id, batch)
    trial = _graph_files(directory, "int8", model, spec.graphs)
    trial = {t: p.with_name(f"{p.stem}.auto.onnx") for t, p in trial.items()} if isinstance(trial, dict) else \
        trial.with_name(f"{trial.stem}.auto.onnx")
    tried: dict[str, dict[str, float]] = {}
    for activations in AUTO_ACTIVATIONS:
        trial_spec = spec.model_copy(update={"int8_activations": activations, "int8_min_agreement": None})
        try:
            for (task, source), (_, target) in zip(_by_task(fp32_graphs), _by_task(trial), strict=True):
                graph_tasks = [t for t in tasks if task is None or t.info.name == task]
                quantize_graph(dynamic_source(task, source, activations), target, "dynamic", trial_spec, preset,
                               None, graph_tasks, pad_id)
            dev_int8 = split_predictions(OnnxForward(trial, optimization_level=spec.optimization_level), tasks,
                                         "dev", pad_id, batch)
        finally:
            for _, path in _by_task(trial):
                path.unlink(missing_ok=True)
        tried[activations] = agreement = label_agreement(tasks, "dev", dev_int8, dev_fp32) \
            if spec.int8_agreement == "labels" else expected_agreement(tasks, "dev", dev_fp32, dev_int8)
        reached = min(agreement.values()) >= spec.int8_min_agreement
        log.info("%s: int8_activations auto: %s with every product in int8 agrees with fp32 on %s of dev (%s), "
                 "%s %s", name, activations, ", ".join(f"{t} {a:.4f}" for t, a in agreement.items()),
                 spec.int8_agreement, "reaching" if reached else "below", spec.int8_min_agreement)
        if reached:
            break
    if not reached:
        worst = {scheme: min(shares.values()) for scheme, shares in tried.items()}
        best = max(worst.values())
        activations = next(scheme for scheme in AUTO_ACTIVATIONS if worst[scheme] > best - AUTO_MIN_GAIN)
        log.info("%s: int8_activations auto: %s with the accuracy search", name, activations)
    return {"chose": activations, "reached": reached, "dev_agreement_all_int8": tried,
            "measure": spec.int8_agreement, "target": spec.int8_min_agreement}


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
