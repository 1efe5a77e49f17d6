"""A teacher source that runs the teacher on every batch instead of reading the cache.

For inputs that change every epoch (augmentation, re-sampling), where a cache built once would be stale.
It returns exactly what `TeacherCache.targets` returns: float32 tensors padded with zeros to the batch width.
"""

from __future__ import annotations

import numpy as np
import torch

from distill.data.batching import pad_batch
from distill.data.tasks import TaskData
from distill.model.attention import capture_qkv
from distill.model.multitask import MultiTaskModel
from teachers.cache.store import TeacherTargets


class OnlineTeacher:
    """`TeacherSource` over a live teacher: one inference-mode forward pass per batch."""

    def __init__(self, teacher: MultiTaskModel, tasks: list[TaskData], pad_id: int,
                 device: torch.device | str = "cpu"):
        self.teacher = teacher.eval().to(device)
        self.device = torch.device(device)
        self.splits = {(t.info.name, name): split for t in tasks for name, split in t.encoded.items()}
        self.pad_id = pad_id
        self.hidden_layers = list(range(teacher.num_layers + 1))

    def targets(self, task: str, split: str, indices: np.ndarray, width: int, token_level: bool,
                layers: list[int], qkv_layers: list[int] = ()) -> TeacherTargets:
        """Teacher logits, hidden states `layers` and query/key/value of `qkv_layers`, padded to `width`."""
        batch = pad_batch(task, self.splits[(task, split)], indices, self.pad_id)
        extra = width - batch.input_ids.shape[1]
        input_ids = torch.from_numpy(np.pad(batch.input_ids, ((0, 0), (0, extra)), constant_values=self.pad_id))
        mask = torch.from_numpy(np.pad(batch.attention_mask, ((0, 0), (0, extra))))
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode(), capture_qkv(self.teacher.encoder, list(qkv_layers)) as captured:
            out = self.teacher(input_ids, mask, task=task, output_hidden_states=bool(layers))
        # Padding is zeroed like the cache's; the products also turn inference tensors into normal ones.
        real = mask[..., None].float()
        logits = out.logits[task].float()
        logits = logits * real if token_level else logits.clone()
        hidden = {layer: out.hidden_states[layer].float() * real for layer in layers}
        qkv = {layer: [states.float() * real for states in captured[layer]] for layer in qkv_layers}
        return TeacherTargets(logits, hidden, qkv)
