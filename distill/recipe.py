"""The recipe: one YAML file that describes a whole compression run, validated with pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distill.errors import DistillInputError
from distill.fileio import check_name

TaskType = Literal["sequence_classification", "token_classification"]
SPLITS = ("train", "dev", "test")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(Strict):
    """Where a task's examples come from: exactly one of `demo`, `files`, `hub`."""

    demo: Literal["rotten_tomatoes", "bbc_news", "wnut_ner"] | None = None
    files: str | dict[str, str] | None = None
    format: Literal["csv", "json", "parquet"] | None = None
    hub: str | None = None
    hub_config: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceSpec:
        given = [k for k in ("demo", "files", "hub") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of 'demo', 'files' or 'hub'")
        if isinstance(self.files, dict):
            unknown = set(self.files) - set(SPLITS)
            if unknown:
                raise ValueError(f"files: unknown split(s) {sorted(unknown)}; use train, dev, test")
        return self


class TaskSpec(Strict):
    """One task: its data, its fields and how it is scored."""

    name: str
    type: TaskType
    source: SourceSpec
    text_field: str = "text"
    label_field: str = "label"
    splits: dict[str, str] | None = Field(
        default=None, description="train/dev/test -> the source's split names (hub datasets)"
    )
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    limit: dict[str, int] | None = Field(default=None, description="at most this many examples per split")
    metric: Literal["accuracy", "macro_f1", "entity_f1"] | None = None
    weight: float = Field(default=1.0, gt=0, description="this task's share of the loss")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "tasks.name")

    @field_validator("split_ratios")
    @classmethod
    def _ratios(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r <= 0 for r in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError("three positive numbers that sum to 1 (train, dev, test)")
        return value

    @model_validator(mode="after")
    def _metric(self) -> TaskSpec:
        if self.metric is None:
            self.metric = "entity_f1" if self.type == "token_classification" else "accuracy"
        if (self.metric == "entity_f1") != (self.type == "token_classification"):
            raise ValueError(f"metric {self.metric!r} does not fit task type {self.type!r}")
        return self


class TeacherSpec(Strict):
    """The teacher: a base model to fine-tune, a fine-tuned multi-task teacher, or one checkpoint per task."""

    base_model: str | None = Field(default=None, description="path, hub id, or demo:all-MiniLM-L6-v2")
    path: str | None = Field(default=None, description="a fine-tuned teacher saved by distill")
    per_task: dict[str, str] | None = Field(
        default=None, description="task name -> a fine-tuned Hugging Face classification checkpoint (path or hub id)"
    )
    epochs: float = Field(default=3, gt=0)
    batch_size: int = Field(default=32, gt=0)
    learning_rate: float = Field(default=5e-5, gt=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSpec:
        if sum(x is not None for x in (self.base_model, self.path, self.per_task)) != 1:
            raise ValueError("give exactly one of 'base_model' (to fine-tune), 'path' (fine-tuned teacher) or "
                             "'per_task' (one fine-tuned checkpoint per task)")
        return self


class StudentSpec(Strict):
    """A student: which teacher layers it keeps."""

    name: str
    layers: int | list[int] = Field(description="how many teacher layers to keep, or their 0-based indices")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "students.name")

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int) and value < 1:
            raise ValueError("keep at least one layer")
        if isinstance(value, list) and (not value or len(set(value)) != len(value) or min(value) < 0):
            raise ValueError("a non-empty list of distinct, non-negative layer indices")
        return value


class DistillationSpec(Strict):
    """Loss weights and optimisation of the students."""

    alpha: float = Field(default=0.5, ge=0, le=1, description="weight of the gold-label loss vs KD")
    temperature: float = Field(default=2.0, gt=0)
    hidden_weight: float = Field(default=1.0, ge=0, description="beta: hidden-state MSE weight")
    hidden_layers: list[int] = Field(default=[-1], description="teacher layers cached for hidden losses")
    epochs: float = Field(default=3, gt=0)
    batch_size: int = Field(default=32, gt=0)
    learning_rate: float = Field(default=1e-4, gt=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)


class CacheSpec(Strict):
    """How the teacher cache stores the teacher's outputs (every key here is part of the cache key)."""

    dtype: Literal["float16", "float32"] = Field(default="float16", description="precision of the cached tensors")
    shard_size: int = Field(default=1024, gt=0, description="examples per shard file")
    attention_layers: list[int] = Field(
        default=[], description="teacher layers whose query/key/value projections are cached (1 = first, -1 = last)"
    )
    top_k: int | None = Field(
        default=None, gt=0, description="for tasks with more than 64 labels, keep only the k largest logits"
    )
    batch_size: int = Field(default=64, gt=0, description="examples per teacher forward pass (not in the key)")

    @field_validator("attention_layers")
    @classmethod
    def _attention_layers(cls, value: list[int]) -> list[int]:
        if 0 in value or len(set(value)) != len(value):
            raise ValueError("distinct transformer layer numbers: 1 = first, -1 = last (0, the embeddings, "
                             "has no attention)")
        return value


class ExportSpec(Strict):
    """What the exporter writes and how strictly it checks it."""

    fp32: bool = True
    int8: bool = True
    quantization: list[Literal["dynamic", "static"]] = Field(
        default=["dynamic"], description="int8 modes: dynamic (weights only) and/or static (calibrated, QDQ)")
    per_channel: bool = False
    calibration_examples: int = Field(default=256, gt=0, description="dev examples per task for static int8")
    isa: Literal["auto", "avx2", "avx512", "vnni", "generic"] = "auto"
    optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    opset: int = Field(default=17, ge=14)
    parity_tolerance: float = Field(default=1e-4, gt=0)
    max_int8_drop: float | None = Field(default=None, ge=0, description="fail when int8 loses more dev score")

    @field_validator("quantization")
    @classmethod
    def _modes(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("a non-empty list of distinct modes: dynamic, static")
        return value


class BenchSpec(Strict):
    batch_sizes: list[int] = Field(default=[1, 8])
    seq_len: int = Field(default=128, gt=0)
    other_seq_lens: list[int] = Field(default=[], description="more sequence lengths timed at batch 1")
    repeats: int = Field(default=50, gt=0)
    warmup: int = Field(default=10, ge=0)
    threads: int | None = Field(default=None, gt=0)

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, value: list[int]) -> list[int]:
        if not value or any(b < 1 for b in value):
            raise ValueError("a non-empty list of positive batch sizes")
        return value


class Recipe(Strict):
    """A whole run: tasks, teacher, students, distillation, export and benchmark settings."""

    seed: int = 13
    max_length: int = Field(default=128, gt=8)
    tasks: list[TaskSpec] = Field(min_length=1)
    teacher: TeacherSpec
    students: list[StudentSpec] = Field(min_length=1)
    distillation: DistillationSpec = DistillationSpec()
    cache: CacheSpec = CacheSpec()
    export: ExportSpec = ExportSpec()
    bench: BenchSpec = BenchSpec()
    base_dir: Path = Field(default=Path("."), exclude=True, description="where relative paths start")

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
        return self

    def resolve(self, path: str) -> str:
        """A recipe path made absolute against the recipe's directory; hub ids pass through."""
        candidate = (self.base_dir / path).expanduser()
        return str(candidate.resolve()) if candidate.exists() or path.startswith((".", "/", "~")) else path


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in; lists of named items merge by `name`."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = deep_merge(old, value)
        elif isinstance(old, list) and isinstance(value, list) and all(isinstance(v, dict) and "name" in v
                                                                       for v in value):
            by_name = {v["name"]: v for v in value}
            merged[key] = [deep_merge(item, by_name.get(item.get("name"), {})) for item in old]
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
        return Recipe.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise DistillInputError(f"{origin}: {where}: {message}") from exc


def load_recipe(path: str | Path, overrides: list[str | Path] = ()) -> Recipe:
    """Load and validate a recipe YAML file, with optional override files merged on top."""
    path = Path(path)
    data = _read_yaml(path)
    for extra in overrides:
        data = deep_merge(data, _read_yaml(Path(extra)))
    return parse_recipe(data, path.resolve().parent, origin=str(path))
