"""Atomic writes, content hashes, path checks, and where distill keeps its caches."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from distill.core.errors import DistillInputError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write text atomically (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically, indented and with sorted-stable key order as given."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_save_safetensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Save torch tensors as safetensors atomically."""
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """sha256 of a JSON-serialisable object in canonical form."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def sha256_files(paths: Iterable[Path], root: Path) -> str:
    """One sha256 over several files, their names relative to `root` included."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(Path(path).relative_to(root)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def sha256_dir(root: Path) -> str:
    """sha256 over every file below `root` (names and contents)."""
    root = Path(root)
    return sha256_files((p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")), root)


def cache_dir() -> Path:
    """The cache root: $DISTILL_CACHE_DIR, or ~/.cache/distill."""
    return Path(os.environ.get("DISTILL_CACHE_DIR") or Path.home() / ".cache" / "distill").expanduser()


@contextlib.contextmanager
def cache_dir_set_to(directory: Path) -> Iterator[None]:
    """The cache root (`cache_dir`) pointed at `directory` for the block, as it was afterwards."""
    before = os.environ.get("DISTILL_CACHE_DIR")
    os.environ["DISTILL_CACHE_DIR"] = str(directory)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DISTILL_CACHE_DIR", None)
        else:
            os.environ["DISTILL_CACHE_DIR"] = before


def check_name(name: str, what: str) -> str:
    """Refuse a name that could not be used safely as one directory level inside the output directory."""
    if not SAFE_NAME.match(name) or name in {".", ".."}:
        raise DistillInputError(
            f"{what}: {name!r} is not a valid name (letters, digits, '_', '.', '-'; at most 64 characters)"
        )
    return name


def inside(root: Path, relative: str | Path) -> Path:
    """Resolve `relative` below `root`, refusing any path that would escape it."""
    root = Path(root).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise DistillInputError(f"path {str(relative)!r} escapes the output directory {root}")
    return target


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `target` only once the block finishes without error.

    Leftovers of an earlier write of `target` that was killed (-9, power) before it could clean up are removed
    first: one writer per target is assumed, as in every stage."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*target.parent.glob(f".{glob.escape(target.name)}.*.tmp"), target.with_name(f".{target.name}.old")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    tmp.chmod(0o777 & ~_UMASK)
    try:
        yield tmp
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
