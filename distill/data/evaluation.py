"""Scoring any model (PyTorch or ONNX) on a split through one forward function."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from distill.core.progress import progress
from distill.data.batching import eval_batches, pad_batch
from distill.data.metrics import score
from distill.data.tasks import EncodedSplit, TaskData

# (task, input_ids, attention_mask) -> logits [B, C] or [B, L, C]
ForwardFn = Callable[[str, np.ndarray, np.ndarray], np.ndarray]


def torch_forward(model: torch.nn.Module) -> ForwardFn:
    """A forward function over a MultiTaskModel in eval mode, without gradients."""

    def forward(task: str, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        model.eval()
        device = next(model.parameters()).device
        with torch.inference_mode():
            out = model(torch.from_numpy(input_ids).to(device), torch.from_numpy(attention_mask).to(device),
                        task=task)
        return out.logits[task].float().cpu().numpy()

    return forward


def predict(forward: ForwardFn, task: str, split: EncodedSplit, pad_id: int, batch_size: int = 64) -> list[np.ndarray]:
    """Per-example logits, trimmed to each example's real length for token tasks."""
    out: list[np.ndarray | None] = [None] * len(split)
    for indices in eval_batches(split, batch_size):
        batch = pad_batch(task, split, indices, pad_id)
        logits = forward(task, batch.input_ids, batch.attention_mask)
        for row, i in enumerate(indices):
            out[i] = logits[row] if logits.ndim == 2 else logits[row, : len(split.input_ids[i])]
    return out  # type: ignore[return-value]


def evaluate(forward: ForwardFn, tasks: list[TaskData], split: str, pad_id: int, desc: str = "eval",
             batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Every metric of every task on one split."""
    results = {}
    for task in progress(tasks, desc=desc, leave=False, unit="task"):
        encoded = task.encoded[split]
        logits = predict(forward, task.info.name, encoded, pad_id, batch_size)
        results[task.info.name] = score(task.info, encoded, logits)
    return results


def primary_scores(tasks: list[TaskData], metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each task's primary metric (the recipe's `metric`)."""
    return {t.info.name: metrics[t.info.name][t.info.metric] for t in tasks}
