"""The teacher cache: per-task logits, hidden states and attention projections in fixed-size safetensors shards.

Layout of one entry, `<cache root>/teacher-cache/<key>/`:
  manifest.json                          key inputs, dtype, layers, shapes, counts, every shard's sha256
  <task>.<split>.<NNNNN>.safetensors     one shard of `shard_size` examples:
      offsets              [n+1]      int64, token offsets of the examples (rows of the token tensors)
      logits               [rows, C]  rows = examples (sequence tasks) or real tokens (token tasks); or, with top-k,
      logits.values        [rows, k]  the k largest logits and
      logits.indices       [rows, k]  their classes
      hidden.<l>           [tokens, H] hidden state l (0 = embeddings, 1 = first transformer layer)
      qkv.<l>.query|key|value [tokens, H] the query/key/value projections of transformer layer l
Only real tokens are stored, never padding. Attention probabilities are recomputed exactly from the cached
query and key (`distill.model.attention.attention_probs`), which is far smaller than storing L×L maps. Shards are
written atomically, so a killed build resumes from the last complete shard. Reads are memory-mapped, and
every shard's sha256 is checked against the manifest when an entry is opened.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import safe_open

from distill.core.errors import DistillError
from distill.core.fileio import cache_dir, read_json, sha256_file

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
QKV_PARTS = ("query", "key", "value")
# Top-k logits are kept only for label spaces larger than this; smaller ones are always stored whole.
TOP_K_MIN_CLASSES = 64
# Classes dropped by top-k come back this far below the row's smallest kept logit: softmax gives them
# less than e^-100 of the mass at any temperature up to 100.
TOP_K_GAP = 1e4


def cache_root() -> Path:
    """Where teacher cache entries live ($DISTILL_CACHE_DIR/teacher-cache)."""
    return cache_dir() / "teacher-cache"


def shard_name(task: str, split: str, index: int) -> str:
    return f"{task}.{split}.{index:05d}.safetensors"


def hidden_name(layer: int) -> str:
    return f"hidden.{layer}"


def qkv_name(layer: int, part: str) -> str:
    return f"qkv.{layer}.{part}"


@dataclass
class TeacherTargets:
    """Teacher outputs for one batch, padded to the batch's width."""

    logits: torch.Tensor
    hidden: dict[int, torch.Tensor]
    # hidden-state layer number (1 = first transformer layer) -> [query, key, value], each [B, width, H]
    qkv: dict[int, list[torch.Tensor]] = field(default_factory=dict)


class TeacherSource(Protocol):
    """Where a student's teacher outputs come from: the cache (`TeacherCache`) or a live teacher."""

    hidden_layers: list[int]

    def targets(self, task: str, split: str, indices: np.ndarray, width: int, token_level: bool,
                layers: list[int], qkv_layers: Sequence[int] = ()) -> TeacherTargets: ...


class _Shard:
    """One open (memory-mapped) shard file."""

    def __init__(self, path: Path):
        self.handle = safe_open(str(path), framework="pt")
        self.offsets = self.handle.get_tensor("offsets").numpy()

    def rows(self, name: str, start: int, end: int) -> torch.Tensor:
        return self.handle.get_slice(name)[start:end]


class TeacherCache:
    """Read access to a complete cache entry (checksums verified on open)."""

    def __init__(self, path: Path, verify: bool = True):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise DistillError(f"{self.path}: no teacher cache here (no {MANIFEST}); run `distill cache` first")
        self.manifest: dict[str, Any] = read_json(manifest_path)
        if self.manifest.get("format") != FORMAT_VERSION:
            raise DistillError(f"{manifest_path}: cache format {self.manifest.get('format')}, this distill reads "
                               f"{FORMAT_VERSION}; run `distill cache` again")
        if verify:
            bad = corrupt_shards(self.path, self.manifest)
            if bad:
                raise DistillError(f"teacher cache shard {self.path / bad[0]} is missing, corrupt or truncated "
                                   "(sha256 differs from manifest.json); run `distill cache` with the teacher to "
                                   "rebuild it")
        self.shard_size = int(self.manifest["shard_size"])
        self.hidden_layers = [int(x) for x in self.manifest["hidden_layers"]]
        self.qkv_layers = [int(x) for x in self.manifest["qkv_layers"]]
        self.attention_heads = int(self.manifest["attention_heads"])
        self._shards: dict[str, _Shard] = {}

    def _shard(self, task: str, split: str, index: int) -> _Shard:
        name = shard_name(task, split, index)
        if name not in self._shards:
            self._shards[name] = _Shard(self.path / name)
        return self._shards[name]

    def _check(self, task: str, split: str, layers: Sequence[int], qkv_layers: Sequence[int]) -> dict:
        entry = self.manifest["tasks"].get(task)
        if entry is None or split not in entry["splits"]:
            raise DistillError(f"teacher cache {self.path} holds no {task}/{split}")
        for wanted, cached, key in ((layers, self.hidden_layers, "distillation.hidden_layers"),
                                    (qkv_layers, self.qkv_layers, "cache.attention_layers")):
            missing = sorted(set(wanted) - set(cached))
            if missing:
                raise DistillError(f"teacher cache {self.path} has no layer(s) {missing} (it has {cached}); "
                                   f"add them to {key}")
        return entry

    def targets(self, task: str, split: str, indices: np.ndarray, width: int, token_level: bool,
                layers: list[int], qkv_layers: Sequence[int] = ()) -> TeacherTargets:
        """Teacher logits, the chosen hidden layers and query/key/value projections, padded to `width` tokens.

        Top-k entries come back as dense logits (see `dense_logits`)."""
        entry = self._check(task, split, layers, qkv_layers)
        top_k = entry["top_k"]
        logits_rows: list[torch.Tensor] = []
        hidden_rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        qkv_rows: dict[int, list[list[torch.Tensor]]] = {layer: [[], [], []] for layer in qkv_layers}
        for i in np.asarray(indices).tolist():
            shard = self._shard(task, split, i // self.shard_size)
            local = i % self.shard_size
            start, end = int(shard.offsets[local]), int(shard.offsets[local + 1])
            first, last = (start, end) if token_level else (local, local + 1)
            if top_k:
                logits_rows.append(dense_logits(shard.rows("logits.values", first, last).float(),
                                                shard.rows("logits.indices", first, last).long(), entry["classes"]))
            else:
                logits_rows.append(shard.rows("logits", first, last).float())
            for layer in layers:
                hidden_rows[layer].append(shard.rows(hidden_name(layer), start, end))
            for layer in qkv_layers:
                for slot, part in enumerate(QKV_PARTS):
                    qkv_rows[layer][slot].append(shard.rows(qkv_name(layer, part), start, end))
        logits = _pad(logits_rows, width) if token_level else torch.cat(logits_rows)
        return TeacherTargets(logits, {k: _pad(v, width) for k, v in hidden_rows.items()},
                              {k: [_pad(rows, width) for rows in v] for k, v in qkv_rows.items()})

    def close(self) -> None:
        self._shards.clear()


def dense_logits(values: torch.Tensor, indices: torch.Tensor, classes: int) -> torch.Tensor:
    """Top-k logits back to [rows, classes]: each dropped class gets the row's smallest kept logit minus
    TOP_K_GAP, so its softmax probability is ~0 and the kept classes share all the mass."""
    fill = values.min(-1, keepdim=True).values - TOP_K_GAP
    dense = fill.expand(values.shape[0], classes).clone()
    return dense.scatter_(-1, indices, values)


def _pad(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros((len(rows), width, rows[0].shape[-1]), dtype=torch.float32)
    for k, row in enumerate(rows):
        out[k, : row.shape[0]] = row
    return out


def manifest_shards(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every shard record of a manifest."""
    for task in manifest["tasks"].values():
        for split in task["splits"].values():
            for shard in split["shards"]:
                name = str(shard["file"])
                if Path(name).name != name or name in {".", ".."} or "\\" in name:  # never a path out of the entry
                    raise DistillError(f"teacher cache manifest: shard file {name!r} is not a file name")
                yield shard


def corrupt_shards(path: Path, manifest: dict[str, Any]) -> list[str]:
    """Shard files that are missing or whose sha256 differs from the manifest."""
    return [shard["file"] for shard in manifest_shards(manifest)
            if not (Path(path) / shard["file"]).is_file() or sha256_file(Path(path) / shard["file"]) != shard["sha256"]]


def entry_size_bytes(path: Path) -> int:
    """Bytes on disk of one cache entry."""
    return sum(p.stat().st_size for p in Path(path).glob("*") if p.is_file())
