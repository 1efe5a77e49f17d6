"""Reading an artifact directory's own files safely: manifest.json and tasks.json through a schema, each file
checked against the sha256 the exporter recorded, and every name kept inside the directory."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from distill.core.errors import DistillInputError
from distill.core.fileio import check_name, sha256_file
from distill.core.task_types import TaskType

MANIFEST_FILE = "manifest.json"
TASKS_FILE = "tasks.json"
HF_DIR = "hf"  # per-task directories Hugging Face tools load (export.hf_dirs)
SHA256 = r"^[0-9a-f]{64}$"


class ArtifactManifest(BaseModel):
    """What the runtime reads of manifest.json (the rest, provenance and checks, passes through)."""

    model_config = ConfigDict(extra="allow")

    max_length: int = Field(gt=0)
    optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    graphs: Literal["combined", "per_task"] = "combined"
    files: dict[str, str] = Field(description="file name -> sha256, as exported")
    checks: dict[str, Any] = {}
    hf_dirs: dict[str, dict[str, str]] = Field(default={}, description="task -> the files of hf/TASK/ and sha256")
    fusion: dict[str, dict[str, Any]] = Field(default={}, description="graph -> what onnxruntime's transformer "
                                                                      "optimizer fused (fused, ops, note)")

    @field_validator("files")
    @classmethod
    def _plain_names(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            check_name(name, "files")
            if not re.match(SHA256, str(digest)):
                raise ValueError(f"{name!r}: {digest!r} is not a sha256")
        return files

    @field_validator("hf_dirs")
    @classmethod
    def _plain_tasks(cls, dirs: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for task, files in dirs.items():
            check_name(task, "hf_dirs")
            cls._plain_names(files)
        return dirs


def activation_scales(int8_check: dict[str, Any]) -> str:
    """The activation scales of one int8 mode's checks: what the export recorded (`activations`), else per tensor
    (static int8 is calibrated per tensor, and dynamic int8 was per tensor before the exporter recorded it)."""
    return int8_check.get("activations") or "per_tensor"


def fallback_node_count(int8_check: dict[str, Any]) -> int:
    """The nodes the accuracy search kept out of int8, over every graph of one int8 mode's checks."""
    return sum(len(search.get("nodes", [])) for search in (int8_check.get("fallback_search") or {}).values())


class TaskEntry(BaseModel):
    """One task of tasks.json: its name is used in file names, so it must be a plain name."""

    model_config = ConfigDict(extra="allow")

    name: str
    type: TaskType
    labels: list[str]
    metric: str = "accuracy"

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        return check_name(name, "name")


class TaskList(BaseModel):
    model_config = ConfigDict(extra="allow")

    tasks: list[TaskEntry] = Field(min_length=1)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise DistillInputError(f"{path}: missing; {path.parent} is not a complete artifact (export it again)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DistillInputError(f"{path}: not valid JSON ({exc}); export the artifact again") from exc


def _validated(model: type[BaseModel], path: Path) -> Any:
    try:
        return model.model_validate(_read(path))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DistillInputError(f"{path}: {where}: {first['msg']} (export the artifact again)") from exc


def read_manifest(directory: Path) -> ArtifactManifest:
    """manifest.json of an artifact directory, checked against the schema; errors name the field."""
    return _validated(ArtifactManifest, Path(directory) / MANIFEST_FILE)


def read_tasks(directory: Path) -> list[dict[str, Any]]:
    """tasks.json of an artifact directory, checked: known task types, plain task names."""
    return [task.model_dump() for task in _validated(TaskList, Path(directory) / TASKS_FILE).tasks]


def verify_files(directory: Path, manifest: ArtifactManifest, names: Iterable[str]) -> None:
    """Compare each named file with the sha256 manifest.json records for it; ONNX files must be recorded,
    other files are checked where recorded (artifacts exported before the tokenizer was recorded)."""
    directory = Path(directory)
    for name in names:
        path = directory / name
        recorded = manifest.files.get(name)
        if recorded is None:
            if name.endswith(".onnx"):
                raise DistillInputError(f"{path}: not recorded in {MANIFEST_FILE}; the artifact was changed after "
                                        "export (export it again, or skip the check with --no-verify)")
            continue
        if not path.is_file():
            raise DistillInputError(f"{path}: missing; export the artifact again")
        if sha256_file(path) != recorded:
            raise DistillInputError(f"{path}: sha256 differs from {MANIFEST_FILE}: the file was changed after "
                                    "export (export it again, or skip the check with --no-verify if you "
                                    "changed it on purpose)")


def verify_artifact(directory: Path) -> ArtifactManifest:
    """An artifact's manifest, after every file it records was compared with its sha256."""
    manifest = read_manifest(directory)
    verify_files(directory, manifest, manifest.files)
    for task, files in manifest.hf_dirs.items():
        verify_files(Path(directory) / HF_DIR / task, manifest.model_copy(update={"files": files}), files)
    return manifest
