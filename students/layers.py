"""Building a student from a teacher by keeping a subset of its transformer layers."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from distill.core.errors import DistillInputError
from distill.core.fileio import atomic_write_json, read_json
from distill.model.encoder import find_anatomy, layer_list_owner, rebuilt
from distill.model.multitask import MultiTaskModel

STUDENT_FILE = "student.json"


def pick_layers(spec: int | list[int], teacher_layers: int, strategy: str = "uniform",
                where: str = "students.layers", owner: str = "the teacher's") -> list[int]:
    """Teacher layer indices to keep: explicit, or `spec` of them chosen by `strategy`.

    uniform: spread evenly, ending at the last layer; top: the last `spec` layers; bottom: the first `spec`.
    `owner` names whose layers they are in an error (another encoder's, for a student started from one)."""
    if isinstance(spec, list):
        if max(spec) >= teacher_layers:
            raise DistillInputError(f"{where}: {spec} names a layer beyond {owner} {teacher_layers}")
        return sorted(spec)
    if spec > teacher_layers:
        raise DistillInputError(f"{where}: {spec} is more than {owner} {teacher_layers} layers")
    if strategy == "top":
        return list(range(teacher_layers - spec, teacher_layers))
    if strategy == "bottom":
        return list(range(spec))
    return [round((i + 1) * teacher_layers / spec) - 1 for i in range(spec)]


def keep_layers(teacher: MultiTaskModel, keep: list[int]) -> MultiTaskModel:
    """A copy of the teacher with only the `keep` layers, initialised from the teacher's weights."""
    student = copy.deepcopy(teacher)
    owner, attr = layer_list_owner(student.encoder)
    layers = getattr(owner, attr)
    setattr(owner, attr, nn.ModuleList([layers[i] for i in keep]))
    student.encoder.config.num_hidden_layers = len(keep)
    if find_anatomy(student.encoder.config) is not None:
        # the model AutoModel builds from the config: ModernBERT's first layer, say, has no attention norm
        student.encoder = rebuilt(student.encoder, drop_unexpected=True)
    return student


def save_layer_map(directory: Path, keep: list[int], details: dict | None = None) -> None:
    """Record which teacher layer each student layer came from (for hidden-state losses), and how it was built."""
    atomic_write_json(Path(directory) / STUDENT_FILE, {"teacher_layers": keep, **(details or {})})


def load_layer_map(directory: Path) -> list[int]:
    return list(read_json(Path(directory) / STUDENT_FILE)["teacher_layers"])
