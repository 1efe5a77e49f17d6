"""What a student trains on: each task's labelled train split followed by its transfer split (unlabelled
examples it learns from the teacher alone), and a teacher source that reads each example from its own split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from distill.data.tasks import EncodedSplit, TaskData
from distill.recipe.tasks import TRANSFER
from teachers.cache.store import TeacherSource, TeacherTargets


def student_train_splits(tasks: list[TaskData]) -> tuple[dict[str, EncodedSplit], dict[str, int]]:
    """Per task, train + transfer as one split (train first), and the number of train examples in it."""
    splits, labelled = {}, {}
    for task in tasks:
        train, transfer = task.encoded["train"], task.encoded.get(TRANSFER)
        labelled[task.info.name] = len(train)
        if transfer is None:
            splits[task.info.name] = train
            continue
        words = train.words + transfer.words if train.words is not None and transfer.words is not None else None
        splits[task.info.name] = EncodedSplit(train.input_ids + transfer.input_ids, train.labels + transfer.labels,
                                              words)
    return splits, labelled


class TrainWithTransfer:
    """A `TeacherSource` for `student_train_splits`: index i of a task's "train" split below its train size is a
    train example, above it transfer example i − size; every other split passes through."""

    def __init__(self, source: TeacherSource, train_sizes: dict[str, int]):
        self.source = source
        self.train_sizes = train_sizes

    @property
    def hidden_layers(self) -> list[int]:
        return self.source.hidden_layers

    def targets(self, task: str, split: str, indices: np.ndarray, width: int, token_level: bool,
                layers: list[int], qkv_layers: Sequence[int] = ()) -> TeacherTargets:
        indices = np.asarray(indices, dtype=np.int64)
        size = self.train_sizes.get(task)
        if split != "train" or size is None or (indices < size).all():
            return self.source.targets(task, split, indices, width, token_level, layers, qkv_layers)
        own = indices < size
        parts = [(np.flatnonzero(own), "train", indices[own]), (np.flatnonzero(~own), TRANSFER, indices[~own] - size)]
        parts = [(where, name, rows) for where, name, rows in parts if len(rows)]
        fetched = [self.source.targets(task, name, rows, width, token_level, layers, qkv_layers)
                   for _, name, rows in parts]
        # back to the batch's order: row k of the concatenation came from batch position order[k]
        order = torch.from_numpy(np.concatenate([where for where, _, _ in parts]))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))

        def merge(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(tensors)[inverse]

        return TeacherTargets(
            merge([t.logits for t in fetched]),
            {layer: merge([t.hidden[layer] for t in fetched]) for layer in fetched[0].hidden},
            {layer: [merge([t.qkv[layer][k] for t in fetched]) for k in range(len(fetched[0].qkv[layer]))]
             for layer in fetched[0].qkv})
