"""The edge runtime: run an exported artifact with onnxruntime, tokenizers and numpy only (no torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from distill.core.errors import DistillInputError
from distill.core.int8_presets import PER_TOKEN_ACTIVATIONS
from distill.core.manifest import ArtifactManifest, activation_scales, read_manifest, read_tasks, verify_files

MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "int8-static": "model.int8-static.onnx"}
INT8_PRECISIONS = {"dynamic": "int8", "static": "int8-static"}  # export.quantization mode -> the precision it writes
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
MULTI_LABEL_THRESHOLD = 0.5
DEFAULT_BATCH_SIZE = 16


def output_name(task: str) -> str:
    """The ONNX output that carries a task's logits."""
    return f"logits_{task}"


def task_file(precision: str, task: str) -> str:
    """The file of one task's graph in a per-task artifact: model.<task>.onnx, model.<task>.int8.onnx, ..."""
    return MODEL_FILES[precision].replace("model.", f"model.{task}.", 1)


def model_files(directory: Path, precision: str) -> dict[str, Path] | Path | None:
    """An artifact's ONNX file of one precision (one graph), or {task: file} (one graph per task), or None."""
    directory = Path(directory)
    if read_manifest(directory).graphs == "per_task":
        tasks = [t["name"] for t in read_tasks(directory)]
        files = {task: directory / task_file(precision, task) for task in tasks}
        return files if all(f.is_file() for f in files.values()) else None
    file = directory / MODEL_FILES[precision]
    return file if file.is_file() else None


def open_session(path: Path, threads: int | None = None, optimization_level: str = "all",
                 spinning: bool = True) -> Any:
    """An onnxruntime CPU session at the given graph optimisation level and a fixed thread count.

    `spinning=False` stops the intra-op threads from busy-waiting after a run: a little slower for a session
    used alone, but a session that sits idle beside others (a bench timing models in turn) no longer steals
    their cores."""
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization_level]
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors (InvalidProtobuf, Fail, NoSuchFile) share no useful base
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistillInputError(f"{path}: onnxruntime cannot load this model ({reason}); export it again") from exc


class OnnxForward:
    """A forward function (task, input_ids, attention_mask) -> logits over one ONNX file (every task's output),
    or over {task: file}, one graph per task."""

    def __init__(self, path: Path | dict[str, Path], threads: int | None = None, optimization_level: str = "all",
                 spinning: bool = True):
        if isinstance(path, dict):
            self.sessions = {task: open_session(p, threads, optimization_level, spinning)
                             for task, p in path.items()}
            self.session = None
            self.output_tasks = list(self.sessions)
        else:
            self.session = open_session(path, threads, optimization_level, spinning)
            self.output_tasks = [o.name.removeprefix("logits_") for o in self.session.get_outputs()]

    def __call__(self, task: str, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        session = self.session or self.sessions[task]
        return session.run([output_name(task)], feeds)[0]

    def run_all(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> list[np.ndarray]:
        """Every task's logits, in the artifact's task order."""
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        if self.session is not None:
            return self.session.run(None, feeds)
        return [session.run(None, feeds)[0] for session in self.sessions.values()]


def checked_batch_size(manifest: ArtifactManifest, precision: str) -> int:
    """The default batch size: for dynamic int8 with one activation scale per tensor, the one the exporter
    checked it at (its scales span the batch, so its labels depend on it); 16 for fp32, static int8 (fixed
    scales), per-token dynamic int8 (each token its own scale) and manifests written before the exporter
    recorded it."""
    if precision != "int8":
        return DEFAULT_BATCH_SIZE
    int8 = manifest.checks.get("int8")
    dynamic = int8.get("dynamic") if isinstance(int8, dict) else None
    size = dynamic.get("batch_size", DEFAULT_BATCH_SIZE) if isinstance(dynamic, dict) else DEFAULT_BATCH_SIZE
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DistillInputError(f"manifest.json: checks.int8.dynamic.batch_size: {size!r} is not a positive "
                                "integer (export the artifact again)")
    return DEFAULT_BATCH_SIZE if isinstance(dynamic, dict) and activation_scales(dynamic) in PER_TOKEN_ACTIVATIONS \
        else size


class Predictor:
    """Per-task predictions for raw texts from an artifact directory (label + score, or entity spans).

    `batch_size` defaults to 16, or for a dynamic int8 model with one activation scale per tensor
    (`export.int8_activations: per_tensor`, or auto's choice: `checks.int8.dynamic.activations`) to the batch
    size the export checked it at (`checks.int8.dynamic.batch_size`, 1 unless `export.check_batch_size` says
    otherwise; see `checked_batch_size`).

    Before anything runs, manifest.json and tasks.json are read through their schemas and the files used
    (graphs, tokenizer, tasks) are compared with the sha256 the exporter recorded; `verify=False` skips the
    comparison, for an artifact changed on purpose. Every problem is a `DistillInputError` (a ValueError)."""

    def __init__(self, artifact_dir: str | Path, precision: str = "int8", threads: int | None = None,
                 batch_size: int | None = None, tasks: list[str] | None = None, verify: bool = True):
        from tokenizers import Tokenizer

        if batch_size is not None and batch_size < 1:
            raise DistillInputError(f"batch_size must be at least 1, not {batch_size}")
        directory = Path(artifact_dir)
        manifest = read_manifest(directory)
        self.tasks = read_tasks(directory)
        if tasks is not None:
            unknown = sorted(set(tasks) - {t["name"] for t in self.tasks})
            if unknown:
                raise DistillInputError(f"{directory}: no task(s) {unknown}; it has "
                                        f"{[t['name'] for t in self.tasks]}")
            self.tasks = [t for t in self.tasks if t["name"] in tasks]
        self.max_length = manifest.max_length
        files = model_files(directory, precision) if precision in MODEL_FILES else None
        if files is None:
            have = [p for p in MODEL_FILES if model_files(directory, p) is not None]
            raise DistillInputError(f"{directory}: no {precision!r} model here; this artifact has {have}")
        if isinstance(files, dict):
            files = {t["name"]: files[t["name"]] for t in self.tasks}
        graphs = list(files.values()) if isinstance(files, dict) else [files]
        if verify:
            verify_files(directory, manifest, [*(p.name for p in graphs), "tokenizer.json", "tasks.json"])
        try:
            self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as exc:  # the tokenizers library raises plain Exceptions for unreadable files
            raise DistillInputError(f"{directory / 'tokenizer.json'}: not a tokenizer ({exc}); export the "
                                    "artifact again") from exc
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.forward = OnnxForward(files, threads, manifest.optimization_level)
        self.batch_size = batch_size if batch_size is not None else checked_batch_size(manifest, precision)

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """For each text, per task: {"label", "score"} (classification), [{"label", "start", "end", "text",
        "score"}] (token tagging), [{"label", "score"}] with every label scored above 0.5 (multi-label), or
        {"value"} (regression)."""
        for k, text in enumerate(texts):
            if not isinstance(text, str):
                raise DistillInputError(f"text {k + 1}: {type(text).__name__}, not a string")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise DistillInputError(f"text {k + 1}: not valid UTF-8 (byte {exc.start}); give UTF-8 text") from exc
        encodings = self.tokenizer.encode_batch(list(texts))
        # batches of similar lengths: less padding, which is time, and which dynamic int8 would fold into the
        # activation scale of every text in the batch
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        results: list[dict[str, Any]] = [{} for _ in texts]
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, i in enumerate(chunk):
                ids[row, : len(encodings[i].ids)] = encodings[i].ids
                mask[row, : len(encodings[i].ids)] = 1
            outputs = dict(zip(self.forward.output_tasks, self.forward.run_all(ids, mask), strict=True))
            for row, i in enumerate(chunk):
                for task in self.tasks:
                    results[i][task["name"]] = _task_prediction(task, outputs[task["name"]][row], texts[i],
                                                                encodings[i])
        return results


def _task_prediction(task: dict[str, Any], logits: np.ndarray, text: str, enc: Any) -> Any:
    """One task's prediction for one text, from its logits row."""
    if task["type"] == "regression":
        return {"value": float(np.ravel(logits)[0])}
    if task["type"] == "multi_label_classification":
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        chosen = sorted((i for i in range(len(probs)) if probs[i] > MULTI_LABEL_THRESHOLD), key=lambda i: -probs[i])
        return [{"label": task["labels"][i], "score": float(probs[i])} for i in chosen]
    probs = _softmax(logits)
    if task["type"] == "sequence_classification":
        best = int(np.argmax(probs))
        return {"label": task["labels"][best], "score": float(probs[best])}
    return _entities(text, enc, probs[: len(enc.ids)], task["labels"])


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _entities(text: str, enc: Any, probs: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """BIO spans over words (first sub-token decides), with character offsets into `text`."""
    spans: list[dict[str, Any]] = []
    previous_word = None
    for position, word in enumerate(enc.word_ids):
        if word is None or word == previous_word:
            continue
        previous_word = word
        best = int(np.argmax(probs[position]))
        tag, score = labels[best], float(probs[position, best])
        start, end = enc.offsets[position]
        end = max(e for (s, e), w in zip(enc.offsets, enc.word_ids, strict=True) if w == word)
        kind = tag[2:]
        if tag.startswith("B-") or (tag.startswith("I-") and (not spans or spans[-1]["label"] != kind
                                                              or spans[-1]["closed"])):
            spans.append({"label": kind, "start": start, "end": end, "scores": [score], "closed": False})
        elif tag.startswith("I-"):
            spans[-1]["end"] = end
            spans[-1]["scores"].append(score)
        elif spans:
            spans[-1]["closed"] = True
    return [{"label": s["label"], "start": s["start"], "end": s["end"], "text": text[s["start"] : s["end"]],
             "score": float(np.mean(s["scores"]))} for s in spans]
