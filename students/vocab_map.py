"""A vocabulary-pruned student's map from teacher token ids to its own (numpy only): what the exporter's checks,
the calibration and the benchmarks read to feed teacher-tokenised data to such a student."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from distill.core.errors import DistillInputError
from distill.core.fileio import read_json
from distill.data.tasks import EncodedSplit, TaskData

VOCAB_FILE = "vocab_map.json"


@dataclass
class VocabMap:
    """Which teacher ids a student keeps (ascending); the student id of `kept[i]` is i. A dropped id reads
    the kept piece `substitutes[id]` (a teacher id), or [UNK] without substitutes."""

    kept: np.ndarray
    teacher_size: int
    teacher_unk: int
    substitutes: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.kept)

    @cached_property
    def id_map(self) -> np.ndarray:
        """teacher id -> student id, for every teacher id."""
        if self.substitutes is not None:
            return np.searchsorted(self.kept, self.substitutes).astype(np.int64)
        ids = np.full(self.teacher_size, int(np.searchsorted(self.kept, self.teacher_unk)), dtype=np.int64)
        ids[self.kept] = np.arange(len(self.kept))
        return ids

    def to_student(self, ids: np.ndarray) -> np.ndarray:
        return self.id_map[ids]

    def to_json(self) -> dict[str, Any]:
        data = {"teacher_size": self.teacher_size, "teacher_unk": self.teacher_unk,
                "kept_teacher_ids": self.kept.tolist()}
        if self.substitutes is not None:
            data["substitute_teacher_ids"] = self.substitutes.tolist()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VocabMap:
        substitutes = data.get("substitute_teacher_ids")
        vocab = cls(np.asarray(data["kept_teacher_ids"], dtype=np.int64), int(data["teacher_size"]),
                    int(data["teacher_unk"]), None if substitutes is None else np.asarray(substitutes, np.int64))
        if vocab.substitutes is not None and (len(vocab.substitutes) != vocab.teacher_size
                                              or not np.isin(vocab.substitutes, vocab.kept).all()):
            raise DistillInputError("vocab_map.json: substitute_teacher_ids must name a kept piece for every id")
        return vocab


def remap_tasks(tasks: list[TaskData], vocab: VocabMap) -> list[TaskData]:
    """The same examples with student token ids (for the exporter's checks and the benchmarks)."""
    out = []
    for task in tasks:
        encoded = {name: EncodedSplit([vocab.to_student(ids) for ids in split.input_ids], split.labels, split.words)
                   for name, split in task.encoded.items()}
        out.append(TaskData(task.info, task.splits, encoded))
    return out


def load_vocab_map(model_dir: Path) -> VocabMap | None:
    """The vocabulary map saved with a vocab-pruned student, or None for a student with the teacher's vocab."""
    path = Path(model_dir) / VOCAB_FILE
    return VocabMap.from_json(read_json(path)) if path.is_file() else None


def student_inputs(model_dir: Path, tasks: list[TaskData], pad_id: int) -> tuple[list[TaskData], int]:
    """Tasks and pad id as the model in `model_dir` reads them (teacher-tokenised data remapped if needed)."""
    vocab = load_vocab_map(model_dir)
    if vocab is None:
        return tasks, pad_id
    return remap_tasks(tasks, vocab), int(vocab.id_map[pad_id])
