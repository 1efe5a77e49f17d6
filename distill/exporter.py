"""The exporter: ONNX fp32 and dynamic int8 artifacts, checked against PyTorch and the task metrics."""

from __future__ import annotations

import logging
import platform
import shutil
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.batching import eval_batches, pad_batch
from distill.data import EncodedSplit, TaskData
from distill.errors import DistillError
from distill.evaluation import evaluate, primary_scores, torch_forward
from distill.fileio import atomic_directory, atomic_write_json, sha256_dir, sha256_file
from distill.recipe import ExportSpec
from distill.runtime import MODEL_FILES, OnnxForward, output_name
from teachers.multitask import TASKS_FILE, MultiTaskModel

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
PARITY_EXAMPLES = 256


class _AllHeads(torch.nn.Module):
    """The model as ONNX sees it: (input_ids, attention_mask) -> one logits tensor per task."""

    def __init__(self, model: MultiTaskModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(input_ids, attention_mask).logits.values())


def export_onnx(model: MultiTaskModel, path: Path, opset: int) -> None:
    """Write one ONNX graph with every task head as a named output and dynamic batch/sequence axes."""
    names = [output_name(t) for t in model.heads]
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "sequence"},
                                       "attention_mask": {0: "batch", 1: "sequence"}}
    for task, name in zip(model.heads, names, strict=True):
        token_level = model.tasks[task].type == "token_classification"
        axes[name] = {0: "batch", 1: "sequence"} if token_level else {0: "batch"}
    sample = torch.ones((2, 16), dtype=torch.long)
    mask = torch.ones_like(sample)
    mask[1, 8:] = 0  # a padded row, so tracing keeps the attention-mask path of the graph
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_AllHeads(model).eval(), (sample, mask), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=names, dynamic_axes=axes,
                          opset_version=opset, dynamo=False)


def quantize_int8(fp32_path: Path, int8_path: Path) -> None:
    """Dynamic int8 quantisation of the weights (onnxruntime), after its pre-processing pass."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = int8_path.with_name("prepared.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(int8_path), weight_type=QuantType.QInt8)
    prepared.unlink()


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


def export_artifact(model_dir: Path, out_dir: Path, tasks: list[TaskData], spec: ExportSpec, max_length: int,
                    pad_id: int) -> dict[str, Any]:
    """Export `model_dir` to an artifact directory (ONNX files, tokenizer, tasks.json, manifest.json)."""
    model = MultiTaskModel.load(model_dir)
    with atomic_directory(out_dir) as tmp:
        fp32_path = tmp / MODEL_FILES["fp32"]
        export_onnx(model, fp32_path, spec.opset)
        fp32 = OnnxForward(fp32_path)
        parity = fp32_parity(model, fp32, tasks, pad_id)
        log.info("%s: ONNX fp32 max abs logit difference vs PyTorch %.2e", model_dir.name, parity)
        if parity > spec.parity_tolerance:
            raise DistillError(f"export of {model_dir}: ONNX fp32 differs from PyTorch by {parity:.2e} "
                               f"(> export.parity_tolerance {spec.parity_tolerance:.0e})")
        checks: dict[str, Any] = {"fp32_max_abs_diff": parity, "parity_tolerance": spec.parity_tolerance,
                                  "parity_examples_per_task": PARITY_EXAMPLES}
        torch_dev = primary_scores(tasks, evaluate(torch_forward(model), tasks, "dev", pad_id, desc="torch dev"))
        checks["dev_torch_fp32"] = torch_dev
        if spec.int8:
            int8_path = tmp / MODEL_FILES["int8"]
            quantize_int8(fp32_path, int8_path)
            int8_dev = primary_scores(tasks, evaluate(OnnxForward(int8_path), tasks, "dev", pad_id, desc="int8 dev"))
            checks["dev_onnx_int8"] = int8_dev
            checks["int8_metric_delta"] = {t: int8_dev[t] - torch_dev[t] for t in torch_dev}
        if not spec.fp32:
            fp32_path.unlink()
        for name in (*TOKENIZER_FILES, TASKS_FILE):
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        manifest = {
            "source_model": str(model_dir), "max_length": max_length,
            "inputs": {"model_sha256": sha256_dir(model_dir)},
            "files": {p.name: sha256_file(p) for p in sorted(tmp.glob("*.onnx"))},
            "versions": library_versions(), "checks": checks,
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest
