"""The whole recipe (`Recipe`) and reading it from YAML, with errors that name the key."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from distill.core.errors import DistillInputError
from distill.recipe.common import Strict
from distill.recipe.distillation import CacheSpec, DistillationSpec, TrainingSpec
from distill.recipe.models import StudentSpec, TeacherSpec
from distill.recipe.outputs import BenchSpec, ExportSpec
from distill.recipe.tasks import TaskSpec


class Recipe(Strict):
    """A whole run: tasks, teacher, students, distillation, export and benchmark settings."""

    seed: int = 13
    max_length: int = Field(default=128, gt=8)
    tasks: list[TaskSpec] = Field(min_length=1)
    teacher: TeacherSpec
    students: list[StudentSpec] = Field(min_length=1)
    distillation: DistillationSpec = DistillationSpec()
    training: TrainingSpec = TrainingSpec()
    cache: CacheSpec = CacheSpec()
    export: ExportSpec = ExportSpec()
    bench: BenchSpec = BenchSpec()
    _base_dir: Path = PrivateAttr(default=Path("."))

    @property
    def base_dir(self) -> Path:
        """Where relative paths start: the recipe file's directory."""
        return self._base_dir

    @property
    def training_seed(self) -> int:
        """The seed of initialisation, dropout and batch order (training.seed, else the recipe's seed)."""
        return self.seed if self.training.seed is None else self.training.seed

    @model_validator(mode="after")
    def _unique(self) -> Recipe:
        for what, names in (("tasks", [t.name for t in self.tasks]), ("students", [s.name for s in self.students])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what}: duplicate name(s) {dupes}")
        per_task = self.teacher.per_task
        if per_task is not None and set(per_task) != {t.name for t in self.tasks}:
            raise ValueError(f"teacher.per_task: name one checkpoint for each task {[t.name for t in self.tasks]}; "
                             f"got {sorted(per_task)}")
        if per_task is not None:
            other = [t.name for t in self.tasks if t.type not in ("sequence_classification", "token_classification")]
            if other:
                raise ValueError(f"teacher.per_task: per-task checkpoints serve sequence and token classification "
                                 f"tasks; {other} need a multi-task teacher (base_model or path)")
        if self.bench.seq_len is None:
            self.bench = self.bench.model_copy(update={"seq_len": self.max_length})
        if self.export.positions == "max_length":
            longer = [n for n in [self.bench.seq_len, *self.bench.other_seq_lens] if n > self.max_length]
            if longer:
                raise ValueError(f"bench: sequence length(s) {longer} exceed max_length {self.max_length}, and "
                                 "export.positions: max_length keeps only that many position rows; shorten them "
                                 "or set export.positions: all")
        # QAT and iterative pruning run in the last (or only) stage
        epochs = math.ceil(self.distillation.stage_plan()[-1].epochs)
        for student in self.students:
            if student.qat_epochs > epochs:
                raise ValueError(f"students.{student.name}.qat_epochs: {student.qat_epochs} is more than the "
                                 f"{epochs} distillation epoch(s) of the last stage")
            if student.embedding_bits is not None and self.export.int8_embeddings != "per_row":
                raise ValueError(f"students.{student.name}.embedding_bits: the export stores snapped tables only "
                                 f"with export.int8_embeddings: per_row (not {self.export.int8_embeddings})")
            if student.prunes and student.pruning.schedule == "iterative" and student.pruning.rounds > epochs:
                raise ValueError(f"students.{student.name}.pruning.rounds: {student.pruning.rounds} is more than "
                                 f"the {epochs} distillation epoch(s) of the last stage")
        return self

    def resolve(self, path: str, key: str, hub: bool = True) -> str:
        """The recipe value `key` as an absolute path against the recipe's directory, or, with `hub`, a hub id
        passed through. A value that looks like a path but is not there is an error naming both places looked:
        a relative path never falls back to the current directory."""
        candidate = (self.base_dir / path).expanduser()
        if candidate.exists():
            return str(candidate.resolve())
        looks_like_path = (not hub or path.startswith((".", "/", "~", "\\")) or path.count("/") > 1
                           or Path(path).suffix.lower() in DATA_SUFFIXES or not HUB_ID.match(path))
        beside_cwd = Path(path).expanduser().resolve()
        if looks_like_path or (beside_cwd.exists() and beside_cwd != candidate.resolve()):
            elsewhere = (f"; it exists at {beside_cwd}, but relative paths start at the recipe's directory: "
                         "write the path from there, or an absolute one") if beside_cwd.exists() else ""
            where = path if Path(path).expanduser().is_absolute() else f"{path!r} at {candidate.resolve()}"
            raise DistillInputError(f"{key}: {where} not found{elsewhere}")
        return path


DATA_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt", ".safetensors", ".bin", ".onnx"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in; lists of named items merge by `name`, and an item `{name: X, drop: true}`
    removes X."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = deep_merge(old, value)
        elif (isinstance(old, list) and isinstance(value, list) and value
              and all(isinstance(v, dict) and "name" in v for v in value)):
            by_name = {v["name"]: v for v in value}
            merged[key] = [deep_merge(item, by_name.get(item.get("name"), {})) for item in old
                           if by_name.get(item.get("name"), {}).get("drop") is not True]
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DistillInputError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DistillInputError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(data, dict):
        raise DistillInputError(f"{path}: a recipe is a YAML mapping with tasks, teacher and students")
    return data


def parse_recipe(data: dict[str, Any], base_dir: Path, origin: str = "recipe") -> Recipe:
    """Validate a recipe mapping; errors name the offending key."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise DistillInputError(f"{origin}: {where}: {message}") from exc
    recipe._base_dir = Path(base_dir)
    return recipe


def load_recipe(path: str | Path, overrides: list[str | Path] = ()) -> Recipe:
    """Load and validate a recipe YAML file, with optional override files merged on top."""
    path = Path(path)
    data = _read_yaml(path)
    for extra in overrides:
        data = deep_merge(data, _read_yaml(Path(extra)))
    return parse_recipe(data, path.resolve().parent, origin=str(path))
