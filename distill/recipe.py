"""The recipe: one YAML file that describes a whole compression run, validated with pydantic."""

from __future__ import annotations

import math
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
    """The teacher: a base model to fine-tune, or an already fine-tuned multi-task teacher directory."""

    base_model: str | None = Field(default=None, description="path, hub id, or demo:all-MiniLM-L6-v2")
    path: str | None = Field(default=None, description="a fine-tuned teacher saved by distill")
    epochs: float = Field(default=3, gt=0)
    batch_size: int = Field(default=32, gt=0)
    learning_rate: float = Field(default=5e-5, gt=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSpec:
        if (self.base_model is None) == (self.path is None):
            raise ValueError("give exactly one of 'base_model' (to fine-tune) or 'path' (fine-tuned teacher)")
        return self


class PruningSpec(Strict):
    """How heads and FFN neurons are ranked before they are removed."""

    examples: int = Field(default=256, gt=0, description="dev examples per task for the importance scores")
    schedule: Literal["one_shot", "iterative"] = Field(
        default="one_shot", description="one_shot: prune the teacher copy once before distilling; iterative: "
        "prune → distil → prune, a step at the start of each of the first `rounds` epochs, re-scoring the student")
    rounds: int = Field(default=2, ge=1, description="iterative only: pruning steps (the last reaches the target)")


class LoraSpec(Strict):
    """Train low-rank adapters (peft) instead of the encoder's weights; merged into the weights before saving."""

    r: int = Field(default=8, gt=0, description="adapter rank")
    alpha: float = Field(default=16, gt=0, description="adapter scale numerator (scale = alpha / r)")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] = Field(default=["query", "key", "value", "dense"],
                                      description="names of the Linear modules that get adapters")
    base_bits: Literal[8, 4] | None = Field(
        default=None, description="hold the frozen base weights in bitsandbytes int8 or nf4 (QLoRA style)")


class StudentSpec(Strict):
    """A student: which teacher layers it keeps and how it is narrowed, pruned, quantized or adapted."""

    name: str
    layers: int | list[int] = Field(description="how many teacher layers to keep, or their 0-based indices")
    layer_strategy: Literal["uniform", "top", "bottom"] = Field(
        default="uniform", description="with a layer count: uniform (spread, ending at the last), top or bottom")
    heads: int | None = Field(default=None, gt=0, description="attention heads kept per layer (by importance)")
    ffn: int | None = Field(default=None, gt=0, description="FFN neurons kept per layer (by importance)")
    hidden_size: int | None = Field(default=None, gt=0, description="a narrower hidden size than the teacher's")
    hidden_init: Literal["variance", "pca", "random"] = Field(
        default="variance", description="narrow hidden init: top-variance dimensions, PCA projection, or random")
    vocab: Literal["corpus"] | int | None = Field(
        default=None, description="keep the word pieces seen in the train split (corpus) or the N most frequent")
    pruning: PruningSpec = PruningSpec()
    qat_epochs: int = Field(default=0, ge=0, description="fake-quantize int8 during the last N epochs")
    qat_activations: bool = Field(default=False, description="QAT also fake-quantizes Linear inputs (uint8)")
    lora: LoraSpec | None = Field(default=None, description="train LoRA adapters, merged before saving")

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

    @field_validator("vocab")
    @classmethod
    def _vocab(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, int) and value < 8:
            raise ValueError("keep at least 8 word pieces (or 'corpus')")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> StudentSpec:
        if isinstance(self.layers, list) and "layer_strategy" in self.model_fields_set:
            raise ValueError("layer_strategy applies to a layer count, not to a list of layer indices")
        if "hidden_init" in self.model_fields_set and self.hidden_size is None:
            raise ValueError("hidden_init needs hidden_size")
        if self.lora is not None and self.qat_epochs:
            raise ValueError("qat_epochs and lora do not combine: QAT needs the full weights being trained")
        if self.pruning.schedule == "iterative" and not self.prunes:
            raise ValueError("pruning.schedule iterative needs heads or ffn to prune")
        if self.hidden_init == "random" and self.hidden_size is not None and (self.heads or self.ffn):
            raise ValueError("a random narrow student has no importance scores to prune by; "
                             "leave heads and ffn out, or use hidden_init variance or pca")
        return self

    @property
    def prunes(self) -> bool:
        """Whether heads or FFN neurons are removed by importance."""
        return self.heads is not None or self.ffn is not None


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
    export: ExportSpec = ExportSpec()
    bench: BenchSpec = BenchSpec()
    base_dir: Path = Field(default=Path("."), exclude=True, description="where relative paths start")

    @model_validator(mode="after")
    def _unique(self) -> Recipe:
        for what, names in (("tasks", [t.name for t in self.tasks]), ("students", [s.name for s in self.students])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what}: duplicate name(s) {dupes}")
        epochs = math.ceil(self.distillation.epochs)
        for student in self.students:
            if student.qat_epochs > epochs:
                raise ValueError(f"students.{student.name}.qat_epochs: {student.qat_epochs} is more than the "
                                 f"{epochs} distillation epoch(s)")
            if student.prunes and student.pruning.schedule == "iterative" and student.pruning.rounds > epochs:
                raise ValueError(f"students.{student.name}.pruning.rounds: {student.pruning.rounds} is more than "
                                 f"the {epochs} distillation epoch(s)")
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
