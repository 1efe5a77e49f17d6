"""Building the teacher cache (the teacher runner): one pass of the teacher over every split, into shards.

The teacher is a multi-task teacher directory, or one fine-tuned checkpoint per task (`teachers.per_task`).
Under `accelerate launch` or `torchrun` the shards are shared out: process r builds shards i with
i % world == r, and process 0 writes the one manifest once every shard is there.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig

from distill.core.errors import DistillError, DistillInputError
from distill.core.fileio import atomic_save_safetensors, atomic_write_json, read_json, sha256_file, sha256_json
from distill.core.processes import num_processes, process_device, process_index, wait_for_everyone
from distill.core.progress import progress
from distill.data.batching import eval_batches, pad_batch
from distill.data.tasks import EncodedSplit, TaskData
from distill.model.attention import capture_qkv
from distill.model.layer_numbers import normalise_attention_layers, normalise_layers
from distill.model.multitask import MultiTaskModel
from teachers.cache.key import cache_key_inputs, model_file_hashes
from teachers.cache.store import (
    MANIFEST,
    QKV_PARTS,
    TOP_K_MIN_CLASSES,
    cache_root,
    corrupt_shards,
    entry_size_bytes,
    hidden_name,
    manifest_shards,
    qkv_name,
    shard_name,
)
from teachers.per_task import check_per_task, label_order, load_task_checkpoint

log = logging.getLogger(__name__)
DTYPES = {"float16": torch.float16, "float32": torch.float32}
# A multi-task teacher directory, or task name -> that task's fine-tuned checkpoint directory.
Teacher = Path | str | Mapping[str, Path | str]


@dataclass
class CacheResult:
    """Where the cache entry is, and what building it did."""

    path: Path
    key: str
    hit: bool
    shards: int
    bytes: int
    examples: int
    examples_per_s: float | None

    @property
    def bytes_per_1000_examples(self) -> int:
        return round(self.bytes * 1000 / self.examples) if self.examples else 0

    def to_json(self) -> dict:
        return {"path": str(self.path), "key": self.key, "hit": self.hit, "shards": self.shards,
                "bytes": self.bytes, "examples": self.examples,
                "bytes_per_1000_examples": self.bytes_per_1000_examples, "examples_per_s": self.examples_per_s}


@dataclass
class _ShardJob:
    task: TaskData
    split: str
    index: int
    start: int
    count: int

    @property
    def file(self) -> str:
        return shard_name(self.task.info.name, self.split, self.index)


@dataclass
class _Contents:
    """What goes into every shard, and how the teacher is run to get it."""

    layers: list[int]
    attention: list[int]
    dtype: torch.dtype
    top_ks: dict[str, int | None]
    batch_size: int
    pad_id: int
    device: torch.device


class TaskTeacher:
    """One task's teacher as the runner drives it: logits in the task's label order, and hidden states."""

    def __init__(self, model: nn.Module, encoder: nn.Module, task: str, order: list[int] | None = None):
        self.model, self.encoder, self.task, self.order = model, encoder, task, order

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 hidden: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        if isinstance(self.model, MultiTaskModel):
            out = self.model(input_ids, attention_mask, task=self.task, output_hidden_states=hidden)
            return out.logits[self.task], out.hidden_states
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden,
                         return_dict=True)
        return out.logits[..., self.order], out.hidden_states if hidden else None


def _teacher_identity(teacher: Teacher, tasks: list[TaskData], trust_remote_code: bool) -> tuple[dict, AutoConfig]:
    """The teacher's part of the key and the config of its encoder (per-task teachers: checked first)."""
    if isinstance(teacher, Mapping):
        checkpoints = {name: Path(path) for name, path in teacher.items()}
        missing = [t.info.name for t in tasks if t.info.name not in checkpoints]
        if missing:
            raise DistillInputError(f"teacher.per_task: no checkpoint for task(s) {missing}")
        check_per_task(checkpoints, tasks, trust_remote_code)
        config = AutoConfig.from_pretrained(checkpoints[tasks[0].info.name], trust_remote_code=trust_remote_code)
        return {"per_task": {t.info.name: model_file_hashes(checkpoints[t.info.name]) for t in tasks}}, config
    directory = Path(teacher)
    if not (directory / "config.json").is_file():
        raise DistillInputError(f"{directory}: no teacher here (no config.json)")
    return model_file_hashes(directory), AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)


def load_teachers(teacher: Teacher, tasks: list[TaskData], trust_remote_code: bool = False) -> dict[str, TaskTeacher]:
    """The teacher of each task: the multi-task model, or each task's own checkpoint."""
    if isinstance(teacher, Mapping):
        out = {}
        for task in tasks:
            path = Path(teacher[task.info.name])
            model = load_task_checkpoint(path, task.info, trust_remote_code)
            out[task.info.name] = TaskTeacher(model, model.base_model, task.info.name,
                                              label_order(model.config, task.info, path))
        return out
    model = MultiTaskModel.load(Path(teacher), trust_remote_code)
    return {task.info.name: TaskTeacher(model, model.encoder, task.info.name) for task in tasks}


def build_cache(teacher: Teacher, tasks: list[TaskData], hidden_layers: Sequence[int], *,
                qkv_layers: Sequence[int] = (), dtype: str = "float16", shard_size: int = 1024, batch_size: int = 64,
                top_k: int | None = None, split_seed: int | None = None, max_length: int | None = None,
                truncation: str | None = None, trust_remote_code: bool = False,
                root: Path | None = None) -> CacheResult:
    """Fill (or reuse) the cache entry for this teacher and data; resumes from complete shards.

    `hidden_layers` are hidden-state indices (0 = embeddings, -1 = last), `qkv_layers` transformer layers
    (1 = first, -1 = last) whose query/key/value projections are kept. `top_k` keeps only the k largest
    logits of tasks with more than 64 labels. `split_seed`, `max_length` and `truncation` (the tokenizer's
    truncation side) describe how the data was made and are recorded in the key. `root` defaults to
    $DISTILL_CACHE_DIR/teacher-cache."""
    if dtype not in DTYPES:
        raise DistillInputError(f"cache.dtype: {dtype!r} is not one of {sorted(DTYPES)}")
    identity, config = _teacher_identity(teacher, tasks, trust_remote_code)
    layers = normalise_layers(hidden_layers, config.num_hidden_layers)
    attention = normalise_attention_layers(qkv_layers, config.num_hidden_layers)
    inputs = cache_key_inputs(identity, tasks, hidden_layers=layers, qkv_layers=attention, dtype=dtype,
                              shard_size=shard_size, top_k=top_k, split_seed=split_seed, max_length=max_length,
                              truncation=truncation)
    key = sha256_json(inputs)
    path = Path(root or cache_root()) / key
    manifest_path = path / MANIFEST
    rank, world = process_index(), num_processes()
    if rank == 0 and manifest_path.is_file():
        manifest = _readable_manifest(path)
        if manifest is not None:
            _drop_corrupt(path, manifest)
    wait_for_everyone()
    examples = sum(len(split) for task in tasks for split in task.encoded.values())
    if manifest_path.is_file():
        manifest = read_json(manifest_path)
        return CacheResult(path, key, True, manifest["shards"], entry_size_bytes(path), examples, None)

    path.mkdir(parents=True, exist_ok=True)
    top_ks = {t.info.name: _task_top_k(top_k, len(t.info.labels)) for t in tasks}
    contents = _Contents(layers, attention, DTYPES[dtype], top_ks, batch_size, int(config.pad_token_id or 0),
                         process_device())
    jobs = [_ShardJob(task, split_name, index, start, min(shard_size, len(split) - start))
            for task in tasks for split_name, split in task.encoded.items()
            for index, start in enumerate(range(0, len(split), shard_size))]
    todo = [i for i, job in enumerate(jobs) if not _complete(path / job.file, job.count)]
    wait_for_everyone()  # everyone has listed the missing shards before anyone writes one
    started = time.perf_counter()
    mine = [jobs[i] for i in todo if i % world == rank]
    if mine:
        _build_shards(load_teachers(teacher, tasks, trust_remote_code), mine, path, contents)
    wait_for_everyone()
    seconds = time.perf_counter() - started
    built = sum(jobs[i].count for i in todo)
    if rank == 0:
        manifest = {"format": inputs["format"], "key": key, "inputs": inputs, "dtype": dtype, "shard_size": shard_size,
                    "hidden_layers": layers, "qkv_layers": attention, "hidden_size": config.hidden_size,
                    "attention_heads": config.num_attention_heads,
                    "tasks": _task_entries(tasks, jobs, path, top_ks), "shards": len(jobs),
                    "examples": examples,
                    "build": {"processes": world, "examples_built": built, "seconds": round(seconds, 3)}}
        atomic_write_json(manifest_path, manifest)
    wait_for_everyone()
    rate = built / seconds if built and seconds > 0 else None
    log.info("teacher cache %s: %d of %d shards built in %.1fs", key[:12], len(todo), len(jobs), seconds)
    return CacheResult(path, key, False, len(jobs), entry_size_bytes(path), examples, rate)


def _build_shards(teachers: dict[str, TaskTeacher], jobs: list[_ShardJob], path: Path, contents: _Contents) -> None:
    for task_teacher in {id(t.model): t for t in teachers.values()}.values():
        task_teacher.model.to(contents.device)
    with progress(total=sum(job.count for job in jobs), desc="teacher cache", unit="ex") as bar:
        for job in jobs:
            atomic_save_safetensors(path / job.file, _run_shard(teachers[job.task.info.name], job, contents))
            bar.update(job.count)


def _task_top_k(top_k: int | None, classes: int) -> int | None:
    return top_k if top_k and classes > TOP_K_MIN_CLASSES and top_k < classes else None


def _readable_manifest(path: Path) -> dict | None:
    """The entry's manifest; an unreadable one (not JSON, or without its shard list) takes the entry with it:
    without the recorded checksums no shard of it can be trusted, so the build starts it again."""
    try:
        manifest = read_json(path / MANIFEST)
        list(manifest_shards(manifest))
        return manifest
    except (ValueError, KeyError, TypeError, AttributeError, DistillError) as exc:  # JSONDecodeError: ValueError
        log.warning("teacher cache: %s is unreadable (%s); building the entry again", path / MANIFEST, exc)
        shutil.rmtree(path)
        return None


def _drop_corrupt(path: Path, manifest: dict) -> None:
    """Remove shards that fail their checksum, and the manifest with them, so the build makes them again."""
    bad = corrupt_shards(path, manifest)
    if bad:
        log.warning("teacher cache: rebuilding %d missing or corrupt shard(s): %s", len(bad), ", ".join(bad))
        for name in bad:
            (path / name).unlink(missing_ok=True)
        (path / MANIFEST).unlink()


def _complete(file: Path, count: int) -> bool:
    """A shard left by an earlier (killed) build is reused only when it reads back whole."""
    if not file.is_file():
        return False
    try:
        with safe_open(str(file), framework="pt") as shard:
            return shard.get_slice("offsets").get_shape() == [count + 1]
    except (SafetensorError, OSError):
        log.warning("teacher cache: %s is unreadable; building it again", file)
        return False


def _task_entries(tasks: list[TaskData], jobs: list[_ShardJob], path: Path, top_ks: dict[str, int | None]) -> dict:
    entries = {t.info.name: {"type": t.info.type, "classes": len(t.info.labels), "top_k": top_ks[t.info.name],
                             "splits": {name: {"examples": len(split), "shards": []}
                                        for name, split in t.encoded.items()}} for t in tasks}
    for job in jobs:
        split = job.task.encoded[job.split]
        record = entries[job.task.info.name]["splits"][job.split]
        tokens = int(sum(len(ids) for ids in split.input_ids[job.start : job.start + job.count]))
        record["shards"].append({"file": job.file, "sha256": sha256_file(path / job.file),
                                 "bytes": (path / job.file).stat().st_size, "start": job.start, "count": job.count,
                                 "tokens": tokens})
    return entries


def _run_shard(teacher: TaskTeacher, job: _ShardJob, contents: _Contents) -> dict[str, torch.Tensor]:
    """Teacher outputs for one shard's examples, real tokens only, in example order."""
    name = job.task.info.name
    layers, attention, dtype, device = contents.layers, contents.attention, contents.dtype, contents.device
    top_k = contents.top_ks[name]
    token_level = job.task.info.type == "token_classification"
    split = job.task.encoded[job.split]
    sub = EncodedSplit(split.input_ids[job.start : job.start + job.count],
                       split.labels[job.start : job.start + job.count])
    logits: list = [None] * job.count
    hidden: dict[int, list] = {layer: [None] * job.count for layer in layers}
    qkv: dict[int, list[list]] = {layer: [[None] * job.count for _ in QKV_PARTS] for layer in attention}
    with torch.inference_mode(), capture_qkv(teacher.encoder, attention) as captured:
        for indices in eval_batches(sub, contents.batch_size):
            batch = pad_batch(name, sub, indices, contents.pad_id)
            task_logits, states = teacher(torch.from_numpy(batch.input_ids).to(device),
                                          torch.from_numpy(batch.attention_mask).to(device), bool(layers))
            for row, i in enumerate(indices):
                length = len(sub.input_ids[i])
                logits[i] = task_logits[row, :length] if token_level else task_logits[row : row + 1]
                for layer in layers:
                    hidden[layer][i] = states[layer][row, :length]
                for layer in attention:
                    for slot in range(len(QKV_PARTS)):
                        qkv[layer][slot][i] = captured[layer][slot][row, :length]
    lengths = np.asarray([len(ids) for ids in sub.input_ids], dtype=np.int64)
    tensors = {"offsets": torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]))}
    all_logits = torch.cat(logits).float()
    if top_k:
        values, indices = all_logits.topk(top_k, dim=-1)
        index_type = torch.int16 if all_logits.shape[-1] <= torch.iinfo(torch.int16).max else torch.int32
        tensors["logits.values"], tensors["logits.indices"] = values.to(dtype), indices.to(index_type)
    else:
        tensors["logits"] = all_logits.to(dtype)
    for layer in layers:
        tensors[hidden_name(layer)] = torch.cat(hidden[layer]).to(dtype)
    for layer in attention:
        for slot, part in enumerate(QKV_PARTS):
            tensors[qkv_name(layer, part)] = torch.cat(qkv[layer][slot]).to(dtype)
    return {k: v.cpu() for k, v in tensors.items()}

