"""Turning encoded examples into padded batches, and mixing batches of several tasks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from distill.data import IGNORE_INDEX, EncodedSplit


@dataclass
class Batch:
    """One padded batch of one task (numpy arrays; `indices` point into the split)."""

    task: str
    indices: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray


def pad_batch(task: str, split: EncodedSplit, indices: np.ndarray | list[int], pad_id: int) -> Batch:
    """Pad the chosen examples to the longest one; token labels are padded with -100."""
    indices = np.asarray(indices, dtype=np.int64)
    rows = [split.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for k, row in enumerate(rows):
        input_ids[k, : len(row)] = row
        mask[k, : len(row)] = 1
    first = split.labels[indices[0]]
    if np.ndim(first) == 0:
        labels = np.asarray([split.labels[i] for i in indices], dtype=np.int64)
    else:
        labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        for k, i in enumerate(indices):
            labels[k, : len(split.labels[i])] = split.labels[i]
    return Batch(task, indices, input_ids, mask, labels)


def training_batches(splits: dict[str, EncodedSplit], batch_size: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Every example of every task once, in single-task batches shuffled together (proportional sampling)."""
    rng = random.Random(seed)
    plan = []
    for task, split in splits.items():
        order = list(range(len(split)))
        rng.shuffle(order)
        plan += [(task, np.asarray(order[i : i + batch_size])) for i in range(0, len(order), batch_size)]
    rng.shuffle(plan)
    return plan


def eval_batches(split: EncodedSplit, batch_size: int) -> Iterator[np.ndarray]:
    """Index batches sorted by length, so padding (and time) stays small."""
    order = np.argsort([len(ids) for ids in split.input_ids], kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
