"""The teacher runner: one pass of the teacher over every split, stored in the teacher cache."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.batching import eval_batches, pad_batch
from distill.cache import FORMAT_VERSION, MANIFEST, cache_root, corrupt_shards, entry_size_bytes, shard_name
from distill.data import EncodedSplit, TaskData, fingerprint
from distill.errors import DistillInputError
from distill.fileio import atomic_save_safetensors, atomic_write_json, read_json, sha256_dir, sha256_file, sha256_json
from distill.progress import progress
from teachers.multitask import MultiTaskModel

log = logging.getLogger(__name__)
DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class CacheResult:
    """Where the cache entry is, and what building it did."""

    path: Path
    key: str
    hit: bool
    shards: int
    bytes: int
    examples_per_s: float | None

    def to_json(self) -> dict:
        return {"path": str(self.path), "key": self.key, "hit": self.hit, "shards": self.shards,
                "bytes": self.bytes, "examples_per_s": self.examples_per_s}


def normalise_layers(layers: list[int], num_layers: int) -> list[int]:
    """Hidden-state indices (0 = embeddings, num_layers = last layer); negative ones count from the end."""
    out = sorted({layer if layer >= 0 else num_layers + 1 + layer for layer in layers})
    if out and (out[0] < 0 or out[-1] > num_layers):
        raise DistillInputError(f"distillation.hidden_layers: {layers} is outside 0..{num_layers}")
    return out


def cache_key_inputs(teacher_dir: Path, tasks: list[TaskData], hidden_layers: list[int], dtype: str,
                     shard_size: int) -> dict:
    """Everything that changes the cache's content."""
    return {"format": FORMAT_VERSION, "teacher": sha256_dir(teacher_dir), "data": fingerprint(tasks),
            "hidden_layers": hidden_layers, "dtype": dtype, "shard_size": shard_size}


def build_cache(teacher_dir: Path, tasks: list[TaskData], hidden_layers: list[int], dtype: str = "float16",
                shard_size: int = 1024, batch_size: int = 64) -> CacheResult:
    """Fill (or reuse) the cache entry for this teacher and data; resumes from complete shards."""
    model = MultiTaskModel.load(teacher_dir)
    layers = normalise_layers(hidden_layers, model.num_layers)
    inputs = cache_key_inputs(teacher_dir, tasks, layers, dtype, shard_size)
    key = sha256_json(inputs)
    path = cache_root() / key
    manifest_path = path / MANIFEST
    if manifest_path.is_file():
        manifest = read_json(manifest_path)
        bad = corrupt_shards(path, manifest)
        if not bad:
            return CacheResult(path, key, True, _count(manifest), entry_size_bytes(path), None)
        log.warning("teacher cache: rebuilding %d corrupt shard(s): %s", len(bad), ", ".join(bad))
        for name in bad:
            (path / name).unlink(missing_ok=True)
        manifest_path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    pad_id = int(model.encoder.config.pad_token_id or 0)
    started, examples = time.perf_counter(), 0
    entries: dict[str, dict] = {}
    total = sum(len(split) for task in tasks for split in task.encoded.values())
    with progress(total=total, desc="teacher cache", unit="ex") as bar:
        for task in tasks:
            entries[task.info.name] = {}
            for split_name, split in task.encoded.items():
                shards = []
                for index, start in enumerate(range(0, len(split), shard_size)):
                    count = min(shard_size, len(split) - start)
                    file = path / shard_name(task.info.name, split_name, index)
                    if not file.is_file():
                        tensors = _run_shard(model, task, split, start, count, layers, DTYPES[dtype], pad_id)
                        atomic_save_safetensors(file, tensors)
                        examples += count
                    shards.append({"file": file.name, "sha256": sha256_file(file), "start": start, "count": count})
                    bar.update(count)
                entries[task.info.name][split_name] = {"examples": len(split), "shards": shards}
    seconds = time.perf_counter() - started
    manifest = {"key": key, "inputs": inputs, "dtype": dtype, "hidden_layers": layers, "shard_size": shard_size,
                "tasks": entries, "seconds": round(seconds, 3)}
    atomic_write_json(manifest_path, manifest)
    rate = examples / seconds if examples and seconds > 0 else None
    return CacheResult(path, key, False, _count(manifest), entry_size_bytes(path), rate)


def _count(manifest: dict) -> int:
    return sum(len(s["shards"]) for t in manifest["tasks"].values() for s in t.values())


def _run_shard(model: MultiTaskModel, task: TaskData, split: EncodedSplit, start: int, count: int,
               layers: list[int], dtype: torch.dtype, pad_id: int) -> dict[str, torch.Tensor]:
    """Teacher outputs for examples start..start+count, real tokens only, in example order."""
    name = task.info.name
    token_level = task.info.type == "token_classification"
    sub = EncodedSplit(split.input_ids[start : start + count], split.labels[start : start + count])
    logits: list[torch.Tensor | None] = [None] * count
    hidden: dict[int, list] = {layer: [None] * count for layer in layers}
    with torch.inference_mode():
        for indices in eval_batches(sub, 64):
            batch = pad_batch(name, sub, indices, pad_id)
            out = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask), task=name,
                        output_hidden_states=bool(layers))
            for row, i in enumerate(indices):
                length = len(sub.input_ids[i])
                task_logits = out.logits[name][row]
                logits[i] = task_logits[:length] if token_level else task_logits
                for layer in layers:
                    hidden[layer][i] = out.hidden_states[layer][row, :length]
    lengths = np.asarray([len(ids) for ids in sub.input_ids], dtype=np.int64)
    tensors = {
        "offsets": torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)])),
        "logits": (torch.cat(logits) if token_level else torch.stack(logits)).to(dtype),
    }
    for layer in layers:
        tensors[f"hidden.{layer}"] = torch.cat(hidden[layer]).to(dtype)
    return tensors

