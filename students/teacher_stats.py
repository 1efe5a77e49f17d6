"""Teacher statistics that student builds start from, computed once per teacher and data.

Head / FFN importance, the hidden-state covariance and the vocabulary's effect on the teacher depend only on the
teacher, the tasks' data and a few settings, not on the student. On a base-size teacher each takes from half a
minute to two, and every student of a sweep asked for them again; they are kept under the cache directory
($DISTILL_CACHE_DIR/teacher-stats), named by the sha256 of everything they depend on, so a sweep — and a later
run that adds a student — computes each once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from distill.core.fileio import (
    atomic_save_safetensors,
    atomic_write_json,
    cache_dir,
    read_json,
    sha256_dir,
    sha256_files,
    sha256_json,
)
from distill.data.tasks import TaskData, fingerprint

log = logging.getLogger(__name__)
STATS_VERSION = 1


def stats_dir() -> Path:
    """Where the statistics live: $DISTILL_CACHE_DIR/teacher-stats."""
    return cache_dir() / "teacher-stats"


def _measuring_code() -> str:
    """sha256 of the modules that measure the statistics: a changed measurement is never read from an old file."""
    here = Path(__file__).parent
    return sha256_files([here / "importance.py", here / "hidden.py", here / "build.py"], here)


class TeacherStats:
    """The statistics of one teacher on one set of tasks: each looked up by what it depends on, else computed
    and stored."""

    def __init__(self, teacher_dir: Path, tasks: list[TaskData]):
        self._teacher_dir, self._tasks = Path(teacher_dir), tasks

    @cached_property
    def _identity(self) -> dict[str, Any]:
        # hashed on first use: a student that needs no statistics does not read the teacher's weights twice
        return {"version": STATS_VERSION, "code": _measuring_code(), "teacher": sha256_dir(self._teacher_dir),
                "data": fingerprint(self._tasks, labelled_only=True)}

    def _path(self, kind: str, settings: dict[str, Any], suffix: str) -> tuple[Path, str]:
        key = sha256_json({**self._identity, "kind": kind, **settings})
        return stats_dir() / f"{kind}-{key[:40]}{suffix}", key

    def tensors(self, kind: str, settings: dict[str, Any],
                compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Tensors named `kind` for `settings`: read back when stored under the same key, else computed and
        stored (atomically, with the key in the file's metadata)."""
        path, key = self._path(kind, settings, ".safetensors")
        stored = _read_tensors(path, key)
        if stored is not None:
            log.info("teacher %s: read from %s", kind, path)
            return stored
        values = compute()
        _store(path, lambda: atomic_save_safetensors(
            path, {name: value.detach().cpu().contiguous() for name, value in values.items()}, metadata={"key": key}))
        return values

    def json(self, kind: str, settings: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """A JSON object named `kind` for `settings`, like `tensors`."""
        path, key = self._path(kind, settings, ".json")
        try:
            stored = read_json(path) if path.is_file() else None
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, dict) and stored.get("key") == key and isinstance(stored.get("value"), dict):
            log.info("teacher %s: read from %s", kind, path)
            return stored["value"]
        value = compute()
        _store(path, lambda: atomic_write_json(path, {"key": key, "value": value}))
        return value


def _store(path: Path, write: Callable[[], None]) -> None:
    """Keep the statistics for the next student; a cache directory that cannot be written only costs time."""
    try:
        write()
    except OSError as exc:
        log.warning("could not keep the teacher statistics in %s (%s); the next student measures them again",
                    path, exc)


def _read_tensors(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The tensors of `path` when it holds the statistics of `key` (a damaged or foreign file reads as absent)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("key") != key:
                return None
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, SafetensorError, ValueError):
        return None
