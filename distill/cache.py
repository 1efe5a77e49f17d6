"""The teacher cache: per-task logits and hidden states in fixed-size safetensors shards.

Layout of one entry, `<cache root>/teacher-cache/<key>/`:
  manifest.json                          key inputs, dtype, layers, shards with sha256 and counts
  <task>.<split>.<NNNNN>.safetensors     `logits` [rows, C] (rows = examples, or real tokens for token
                                         tasks), `offsets` [n+1] token offsets, `hidden.<layer>` [tokens, H]
Only real tokens are stored, never padding. Shards are written atomically, so a killed build resumes
from the last complete shard. Reads are memory-mapped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import safe_open

from distill.demo_assets import cache_dir
from distill.errors import DistillError
from distill.fileio import read_json, sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def cache_root() -> Path:
    """Where teacher cache entries live ($DISTILL_CACHE_DIR/teacher-cache)."""
    return cache_dir() / "teacher-cache"


def shard_name(task: str, split: str, index: int) -> str:
    return f"{task}.{split}.{index:05d}.safetensors"


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
                layers: list[int], qkv_layers: list[int] = ()) -> TeacherTargets: ...


class TeacherCache:
    """Read access to a complete cache entry (checksums verified on open)."""

    def __init__(self, path: Path, verify: bool = True):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise DistillError(f"{self.path}: no teacher cache here (no {MANIFEST}); run `distill cache` first")
        self.manifest: dict[str, Any] = read_json(manifest_path)
        if verify:
            bad = corrupt_shards(self.path, self.manifest)
            if bad:
                raise DistillError(f"teacher cache shard {bad[0]} is corrupt or truncated (sha256 mismatch); "
                                   "run `distill cache` again to rebuild it")
        self.shard_size = int(self.manifest["shard_size"])
        self.hidden_layers = [int(x) for x in self.manifest["hidden_layers"]]
        self._handles: dict[str, Any] = {}
        self._offsets: dict[str, np.ndarray] = {}

    def _shard(self, name: str) -> tuple[Any, np.ndarray]:
        if name not in self._handles:
            handle = safe_open(str(self.path / name), framework="pt")
            self._handles[name] = handle
            self._offsets[name] = handle.get_tensor("offsets").numpy()
        return self._handles[name], self._offsets[name]

    def targets(self, task: str, split: str, indices: np.ndarray, width: int, token_level: bool,
                layers: list[int]) -> TeacherTargets:
        """Teacher logits (and the chosen hidden layers) for these examples, padded to `width` tokens."""
        logits_rows, hidden_rows = [], {layer: [] for layer in layers}
        for i in np.asarray(indices).tolist():
            handle, offsets = self._shard(shard_name(task, split, i // self.shard_size))
            local = i % self.shard_size
            start, end = int(offsets[local]), int(offsets[local + 1])
            logits_rows.append(handle.get_slice("logits")[start:end] if token_level else
                               handle.get_slice("logits")[local : local + 1][0])
            for layer in layers:
                hidden_rows[layer].append(handle.get_slice(f"hidden.{layer}")[start:end])
        logits = _pad(logits_rows, width) if token_level else torch.stack(logits_rows)
        return TeacherTargets(logits.float(), {k: _pad(v, width).float() for k, v in hidden_rows.items()})

    def close(self) -> None:
        self._handles.clear()


def _pad(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros((len(rows), width, rows[0].shape[-1]), dtype=rows[0].dtype)
    for k, row in enumerate(rows):
        out[k, : row.shape[0]] = row
    return out


def corrupt_shards(path: Path, manifest: dict[str, Any]) -> list[str]:
    """Shard files that are missing or whose sha256 differs from the manifest."""
    bad = []
    for task in manifest["tasks"].values():
        for split in task.values():
            for shard in split["shards"]:
                file = Path(path) / shard["file"]
                if not file.is_file() or sha256_file(file) != shard["sha256"]:
                    bad.append(shard["file"])
    return bad



def entry_size_bytes(path: Path) -> int:
    """Bytes on disk of one cache entry."""
    return sum(p.stat().st_size for p in Path(path).glob("*") if p.is_file())
