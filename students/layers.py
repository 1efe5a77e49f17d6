"""Building a student from a teacher by keeping a subset of its transformer layers."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from distill.errors import DistillInputError
from distill.fileio import atomic_write_json, read_json
from teachers.multitask import MultiTaskModel

STUDENT_FILE = "student.json"


def pick_layers(spec: int | list[int], teacher_layers: int, strategy: str = "uniform") -> list[int]:
    """Teacher layer indices to keep: explicit, or `spec` of them chosen by `strategy`.

    uniform: spread evenly, ending at the last layer; top: the last `spec` layers; bottom: the first `spec`."""
    if isinstance(spec, list):
        if max(spec) >= teacher_layers:
            raise DistillInputError(f"students.layers: {spec} names a layer beyond the teacher's {teacher_layers}")
        return sorted(spec)
    if spec > teacher_layers:
        raise DistillInputError(f"students.layers: {spec} is more than the teacher's {teacher_layers} layers")
    if strategy == "top":
        return list(range(teacher_layers - spec, teacher_layers))
    if strategy == "bottom":
        return list(range(spec))
    return [round((i + 1) * teacher_layers / spec) - 1 for i in range(spec)]


def layer_list(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer layers."""
    owner, attr = _layer_list(encoder)
    return getattr(owner, attr)


def _layer_list(encoder: nn.Module) -> tuple[nn.Module, str]:
    for path in ("encoder.layer", "transformer.layer", "layers", "h"):
        owner: nn.Module | None = encoder
        parts = path.split(".")
        for part in parts[:-1]:
            owner = getattr(owner, part, None)
        if owner is not None and isinstance(getattr(owner, parts[-1], None), nn.ModuleList):
            return owner, parts[-1]
    raise DistillInputError(f"cannot find the layer list of a {type(encoder).__name__} encoder")


def keep_layers(teacher: MultiTaskModel, keep: list[int]) -> MultiTaskModel:
    """A copy of the teacher with only the `keep` layers, initialised from the teacher's weights."""
    student = copy.deepcopy(teacher)
    owner, attr = _layer_list(student.encoder)
    layers = getattr(owner, attr)
    setattr(owner, attr, nn.ModuleList([layers[i] for i in keep]))
    student.encoder.config.num_hidden_layers = len(keep)
    return student


def save_layer_map(directory: Path, keep: list[int], details: dict | None = None) -> None:
    """Record which teacher layer each student layer came from (for hidden-state losses), and how it was built."""
    atomic_write_json(Path(directory) / STUDENT_FILE, {"teacher_layers": keep, **(details or {})})


def load_layer_map(directory: Path) -> list[int]:
    return list(read_json(Path(directory) / STUDENT_FILE)["teacher_layers"])
