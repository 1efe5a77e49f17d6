"""Turning encoded examples into padded batches, and mixing batches of several tasks."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from distill.data.tasks import IGNORE_INDEX, EncodedSplit


@dataclass
class Batch:
    """One padded batch of one task (numpy arrays; `indices` point into the split)."""

    task: str
    indices: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray


def pad_batch(task: str, split: EncodedSplit, indices: np.ndarray | list[int], pad_id: int) -> Batch:
    """Pad the chosen examples to the longest one.

    Labels by their kind: an int per example (class id), a float per example (regression target), a float
    vector per example (multi-hot, stacked to [B, C]), or an int vector per token (padded with -100)."""
    indices = np.asarray(indices, dtype=np.int64)
    rows = [split.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for k, row in enumerate(rows):
        input_ids[k, : len(row)] = row
        mask[k, : len(row)] = 1
    first = np.asarray(split.labels[indices[0]])
    if first.ndim == 0:
        dtype = np.float32 if first.dtype.kind == "f" else np.int64
        labels = np.asarray([split.labels[i] for i in indices], dtype=dtype)
    elif first.dtype.kind == "f":
        labels = np.stack([split.labels[i] for i in indices]).astype(np.float32)
    else:
        labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        for k, i in enumerate(indices):
            labels[k, : len(split.labels[i])] = split.labels[i]
    return Batch(task, indices, input_ids, mask, labels)


SAMPLING_STRATEGIES = ("proportional", "temperature", "round_robin")
Plan = list[tuple[str, np.ndarray]]


def training_batches(splits: dict[str, EncodedSplit], batch_size: int, seed: int, strategy: str = "proportional",
                     temperature: float = 2.0) -> Plan:
    """One epoch of single-task batches, mixed across tasks by `strategy`.

    proportional: every example of every task once, batches shuffled together. temperature: each batch's task
    drawn with probability ∝ n_task^(1/temperature). round_robin: the tasks in turn. The last two keep the
    proportional epoch's number of batches; a task's examples are reshuffled each time they run out."""
    rng = random.Random(seed)
    if strategy == "proportional":
        plan = []
        for task, split in splits.items():
            order = list(range(len(split)))
            rng.shuffle(order)
            plan += [(task, np.asarray(order[i : i + batch_size])) for i in range(0, len(order), batch_size)]
        rng.shuffle(plan)
        return plan
    names = [task for task, split in splits.items() if len(split)]
    count = sum(math.ceil(len(splits[task]) / batch_size) for task in names)
    if strategy == "temperature":
        weights = [len(splits[task]) ** (1.0 / temperature) for task in names]
        order = rng.choices(names, weights=weights, k=count)
    elif strategy == "round_robin":
        order = [names[i % len(names)] for i in range(count)]
    else:
        raise ValueError(f"unknown sampling strategy {strategy!r}; use one of {SAMPLING_STRATEGIES}")
    streams = {task: _batch_stream(len(splits[task]), batch_size, rng) for task in names}
    return [(task, next(streams[task])) for task in order]


def _batch_stream(size: int, batch_size: int, rng: random.Random) -> Iterator[np.ndarray]:
    """Endless batches of indices 0..size-1: a fresh shuffle each pass, the last batch of a pass may be short."""
    while True:
        order = list(range(size))
        rng.shuffle(order)
        for start in range(0, size, batch_size):
            yield np.asarray(order[start : start + batch_size])


def slice_batches(plan: Plan, process_index: int, num_processes: int) -> Plan:
    """This process's slice of every batch of a plan made with the global batch size: in each optimiser step
    all processes work on the same task and together on the very batch one process would take, so a step
    (and the task mix the optimiser sees) is the single-process step. A batch smaller than the number of
    processes gives the processes that would get nothing one of its examples again."""
    if num_processes == 1:
        return plan
    out = []
    for task, indices in plan:
        part = np.array_split(indices, num_processes)[process_index]
        if not len(part):
            part = indices[[process_index % len(indices)]]
        out.append((task, part))
    return out


def eval_batches(split: EncodedSplit, batch_size: int) -> Iterator[np.ndarray]:
    """Index batches sorted by length, so padding (and time) stays small."""
    order = np.argsort([len(ids) for ids in split.input_ids], kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
