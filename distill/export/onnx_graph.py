"""The ONNX graph of a multi-task model: export from PyTorch, fp32 parity, and finding nodes by role."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from distill.data.batching import eval_batches, pad_batch
from distill.data.tasks import EncodedSplit, TaskData
from distill.model.multitask import MultiTaskModel
from distill.runtime import OnnxForward, output_name

PARITY_EXAMPLES = 256


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


def fp32_node_names(model_path: Path, patterns: list[str]) -> list[str]:
    """Names of the graph's nodes that match any of the regular expressions (searched, not anchored)."""
    import onnx

    if not patterns:
        return []
    compiled = [re.compile(p) for p in patterns]
    names = [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node]
    return [name for name in names if any(p.search(name) for p in compiled)]


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
