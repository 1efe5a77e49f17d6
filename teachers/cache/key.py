"""The key of a teacher cache entry: everything that changes the cached content, kept readable in manifest.json."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from distill.core.fileio import sha256_file
from distill.core.tokenizer import is_tokenizer_file
from distill.data.tasks import IGNORE_INDEX, EncodedSplit, TaskData
from teachers.cache.store import FORMAT_VERSION


def model_file_hashes(directory: Path) -> dict[str, dict[str, str]]:
    """sha256 of every file of a model directory: tokenizer files apart from the rest (weights, config, heads)."""
    directory = Path(directory)
    out: dict[str, dict[str, str]] = {"model": {}, "tokenizer": {}}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        kind = "tokenizer" if is_tokenizer_file(path) else "model"
        out[kind][str(relative)] = sha256_file(path)
    return out


def split_digest(split: EncodedSplit) -> dict:
    """Size and sha256 of one tokenised split (token ids and label ids, in order)."""
    digest = hashlib.sha256()
    for ids, labels in zip(split.input_ids, split.labels, strict=True):
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(b"|")
        values = np.asarray(labels)
        if values.dtype.kind == "f":  # a transfer example's missing label (NaN) hashes like an ignored one
            values = np.where(np.isnan(values), IGNORE_INDEX, values)
        # class ids, multi-hot rows and whole-number targets as int64 (the keys they always had); regression
        # targets with their fractions
        whole = values.dtype.kind != "f" or np.array_equal(values, np.round(values))
        digest.update(values.astype(np.int64).tobytes() if whole else b"f" + values.astype(np.float64).tobytes())
        digest.update(b";")
    return {"examples": len(split), "tokens": int(sum(len(ids) for ids in split.input_ids)),
            "sha256": digest.hexdigest()}


def data_inputs(task: TaskData) -> dict:
    """A task's data: the sha256 of each source file (null for demo and hub sources) and of each tokenised split."""
    origins = sorted({split.origin for split in task.splits.values()})
    return {"sources": {o: sha256_file(Path(o)) if Path(o).is_file() else None for o in origins},
            "splits": {name: split_digest(split) for name, split in task.encoded.items()}}


def cache_key_inputs(teacher: dict, tasks: list[TaskData], *, hidden_layers: list[int], qkv_layers: list[int],
                     dtype: str, shard_size: int, top_k: int | None, split_seed: int | None,
                     max_length: int | None, truncation: str | None) -> dict:
    """Everything that changes the cache's content; its canonical sha256 is the key."""
    return {
        "format": FORMAT_VERSION,
        "teacher": teacher,
        "tasks": [task.info.to_json() for task in tasks],
        "data": {task.info.name: data_inputs(task) for task in tasks},
        "split_seed": split_seed,
        "max_length": max_length,
        "truncation": truncation,
        "hidden_layers": hidden_layers,
        "qkv_layers": qkv_layers,
        "dtype": dtype,
        "top_k": top_k,
        "shard_size": shard_size,
    }
