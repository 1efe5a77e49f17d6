"""The recipe: one YAML file that describes a whole compression run, validated with pydantic."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distill.errors import DistillInputError
from distill.fileio import check_name

TaskType = Literal["sequence_classification", "token_classification", "multi_label_classification", "regression"]
SPLITS = ("train", "dev", "test")
# The metrics each task type can use as its primary metric; the first is the default.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "sequence_classification": ("accuracy", "macro_f1"),
    "token_classification": ("entity_f1",),
    "multi_label_classification": ("micro_f1", "macro_f1"),
    "regression": ("pearson", "spearman"),
}


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
    metric: Literal["accuracy", "macro_f1", "entity_f1", "micro_f1", "pearson", "spearman"] | None = Field(
        default=None, description="the primary metric; default by type (see TASK_METRICS)")
    weight: float = Field(default=1.0, gt=0, description="this task's share of the loss")
    label_separator: str = Field(
        default=",", min_length=1,
        description="multi_label_classification: separates the label names when a label cell is one string")

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
        allowed = TASK_METRICS[self.type]
        if self.metric is None:
            self.metric = allowed[0]
        if self.metric not in allowed:
            raise ValueError(f"metric {self.metric!r} does not fit task type {self.type!r}; use one of {allowed}")
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
    vocab_dropped: Literal["nearest", "unk"] = Field(
        default="nearest", description="a dropped piece reads the kept piece nearest to it in the teacher's "
                                       "embedding space (of the same kind: word start or ##continuation), or [UNK]")
    embedding_bits: Literal[4, 8] | None = Field(
        default=None, description="train the word-embedding table as 4- or 8-bit values with one scale per row "
                                  "(straight-through); the int8 export then stores it at that width with no loss "
                                  "of its own: 4 bits halve the table against int8")
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
        if self.lora is not None and self.prunes and self.pruning.schedule == "iterative":
            raise ValueError("lora and pruning.schedule: iterative do not combine (the adapters wrap the masked "
                             "layers); prune one_shot")
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


LOSS_NAMES = ("hard", "kd_kl", "kd_mse", "hidden_mse", "hidden_cosine", "attention", "relations", "embedding")


class LossWeights(Strict):
    """The distillation loss as a weighted sum: each name's weight (0 leaves that loss out)."""

    hard: float = Field(default=0, ge=0, description="gold-label cross-entropy (× the task weight)")
    kd_kl: float = Field(default=0, ge=0, description="T² · KL(teacher ‖ student) on logits (× the task weight)")
    kd_mse: float = Field(default=0, ge=0, description="MSE between raw logits (× the task weight)")
    hidden_mse: float = Field(default=0, ge=0, description="hidden-state MSE, summed over the mapped layers")
    hidden_cosine: float = Field(default=0, ge=0, description="1 − cosine of hidden states, summed over the map")
    attention: float = Field(default=0, ge=0, description="attention-distribution KL per head, over the map")
    relations: float = Field(default=0, ge=0, description="Q-Q/K-K/V-V self-attention relation KL, over the map")
    embedding: float = Field(default=0, ge=0, description="MSE between the embedding outputs (hidden state 0)")

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(LOSS_NAMES))
            if unknown:
                raise ValueError(f"unknown loss {unknown[0]!r}; losses are {', '.join(LOSS_NAMES)}")
        return data

    @model_validator(mode="after")
    def _some_loss(self) -> LossWeights:
        if not any(getattr(self, name) > 0 for name in LOSS_NAMES):
            raise ValueError("give at least one loss a positive weight")
        return self

    def active(self) -> dict[str, float]:
        """The losses with a positive weight."""
        return {name: getattr(self, name) for name in LOSS_NAMES if getattr(self, name) > 0}

    @property
    def needs_hidden(self) -> bool:
        return self.hidden_mse > 0 or self.hidden_cosine > 0

    @property
    def needs_qkv(self) -> bool:
        return self.attention > 0 or self.relations > 0


class TemperatureSchedule(Strict):
    """A temperature that moves linearly from `start` to `end` over each stage's training steps."""

    start: float = Field(gt=0)
    end: float = Field(gt=0)

    def at(self, fraction: float) -> float:
        return self.start + (self.end - self.start) * min(max(fraction, 0.0), 1.0)


class StageSpec(Strict):
    """One stage of a staged distillation (e.g. TinyBERT: intermediate layers first, then predictions)."""

    name: str
    epochs: float | None = Field(default=None, gt=0, description="epochs of this stage; default: "
                                                                  "distillation.epochs")
    losses: LossWeights

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "distillation.stages.name")


class SamplingSpec(Strict):
    """How one epoch mixes batches of several tasks."""

    strategy: Literal["proportional", "temperature", "round_robin"] = Field(
        default="proportional",
        description="proportional: every example once per epoch; temperature: task i drawn with probability "
                    "∝ n_i^(1/temperature); round_robin: the tasks in turn (the last two keep the epoch's length)")
    temperature: float = Field(default=2.0, gt=0, description="T of the temperature strategy (1 = proportional)")


class DistillationSpec(Strict):
    """Loss weights and optimisation of the students."""

    alpha: float = Field(default=0.5, ge=0, le=1, description="weight of the gold-label loss vs KD")
    temperature: float | TemperatureSchedule = Field(
        default=2.0, description="KD softmax temperature T, or {start, end}: linear over each stage's steps")
    hidden_weight: float = Field(default=1.0, ge=0, description="beta: hidden-state MSE weight")
    hidden_layers: list[int] = Field(default=[-1], description="teacher hidden states to cache besides those the "
                                                                "losses need (0 = embeddings, -1 = last layer)")
    losses: LossWeights | None = Field(
        default=None, description="the loss as named weights; default {hard: alpha, kd_kl: 1 - alpha, "
                                  "hidden_mse: hidden_weight}")
    layer_map: Literal["last", "all"] | dict[int, int] = Field(
        default="all", description="student hidden layer -> teacher hidden layer for the layer losses: all "
                                   "(uniform: each student layer to the teacher layer it came from), last (last "
                                   "to last) or {student: teacher} (1-based, negative counts from the end)")
    relation_heads: int | None = Field(default=None, gt=0, description="relation heads; default: teacher's heads")
    stages: list[StageSpec] | None = Field(
        default=None, description="train in stages, each with its own epochs and losses (the last keeps the "
                                  "best dev epoch)")
    teacher_source: Literal["cache", "online"] = Field(
        default="cache", description="teacher outputs from the cache, or from the teacher run on every batch")
    sampling: SamplingSpec | None = Field(
        default=None, description="how the students' epochs mix the tasks; default: training.sampling (which the "
                                  "teacher uses)")
    epochs: float = Field(default=3, gt=0)
    batch_size: int = Field(default=32, gt=0)
    learning_rate: float = Field(default=1e-4, gt=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)

    @model_validator(mode="after")
    def _one_way_to_weigh(self) -> DistillationSpec:
        legacy = sorted({"alpha", "hidden_weight"} & self.model_fields_set)
        if self.losses is not None and legacy:
            raise ValueError(f"give either losses or {'/'.join(legacy)} (losses replaces them)")
        if self.stages is not None:
            clashing = sorted({"alpha", "hidden_weight", "losses"} & self.model_fields_set)
            if clashing:
                raise ValueError(f"stages set their own losses; remove {', '.join(clashing)}")
            names = [s.name for s in self.stages]
            if not names:
                raise ValueError("stages: give at least one stage, or leave stages out")
            if len(set(names)) != len(names):
                raise ValueError(f"stages: duplicate stage name(s) {sorted({n for n in names if names.count(n) > 1})}")
        return self

    def stage_plan(self) -> list[StageSpec]:
        """The stages to train, in order; without `stages`, one stage named `distill`."""
        if self.stages is not None:
            return [s.model_copy(update={"epochs": s.epochs or self.epochs}) for s in self.stages]
        losses = self.losses or LossWeights(hard=self.alpha, kd_kl=1 - self.alpha, hidden_mse=self.hidden_weight)
        return [StageSpec(name="distill", epochs=self.epochs, losses=losses)]


class TrainingSpec(Strict):
    """The training engine, shared by the teacher fine-tuning and every student."""

    sampling: SamplingSpec = SamplingSpec()
    uncertainty_weighting: bool = Field(
        default=False, description="learn a log-variance s_t per task: loss = exp(-s_t)·L_t + s_t (Kendall et al.)")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="batches summed into one optimiser step")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        default="no", description="autocast on GPU (ignored on CPU, with a log line)")
    checkpoint_every_steps: int | None = Field(
        default=None, gt=0, description="also checkpoint every N optimiser steps (there is one at each epoch end)")
    early_stopping_patience: int | None = Field(
        default=None, gt=0, description="stop after this many epochs without a better dev score")
    tensorboard: bool = Field(default=False, description="also write TensorBoard event files under logs/tensorboard")
    seed: int | None = Field(
        default=None, description="seeds initialisation, dropout and the batch order (default: the recipe's seed, "
                                  "which also draws the splits); change it to see what another seed moves")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        return "no" if value is False else value  # YAML reads a bare `no` as false


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
    graphs: Literal["combined", "per_task"] = Field(
        default="combined", description="one graph with every task's logits as a named output, or one graph per task")
    quantization: list[Literal["dynamic", "static"]] = Field(
        default=["dynamic"], description="int8 modes: dynamic (weights only) and/or static (calibrated, QDQ)")
    per_channel: bool = False
    keep_fp32: list[str] = Field(
        default=[], description="regular expressions over ONNX node names; matching nodes stay fp32 in int8 models "
                                "(e.g. 'layer\\.\\d+/output/dense' keeps every FFN output projection in fp32)")
    int8_embeddings: Literal["per_row", "per_tensor", "fp32"] = Field(
        default="per_row", description="embedding tables in int8 models: int8 with one scale per row, "
                                       "onnxruntime's one scale per table, or kept fp32")
    int8_heads: bool = Field(
        default=False, description="quantize the task heads (the last Linear before each output) too; by default "
                                   "they stay fp32: a few KB, and their rounding would land on the logits directly")
    int8_min_agreement: float | None = Field(
        default=None, gt=0, le=1, description="take the weight MatMuls with the most int8 noise out of the int8 "
                                              "scheme, one at a time, until int8 and fp32 agree on this share of "
                                              "every task's dev labels (off when unset); searched in the first "
                                              "quantization mode, the other modes take the same nodes out")
    int8_agreement: Literal["expected", "labels"] = Field(
        default="expected", description="what int8_min_agreement bounds on dev: expected (each dev example's int8 "
                                        "shift of its fp32 margin applied to every dev margin: the expected share "
                                        "of agreeing labels, with far less sampling noise where int8 flips a few "
                                        "in a thousand; see distill.agreement) or labels (agreeing labels counted)")
    int8_fallback: Literal["outliers", "block_int8", "fp32"] = Field(
        default="outliers", description="what those MatMuls become: int8 with their int8_outlier_channels largest "
                                        "input channels in fp32 (LLM.int8-style split), 8-bit weights and "
                                        "activations quantized per block of 128 (onnxruntime MatMulNBits), or fp32")
    int8_outlier_channels: int = Field(
        default=8, ge=1, description="input channels per MatMul, the largest on a dev sample, that int8_fallback: "
                                     "outliers computes in fp32")
    int8_max_fallback_nodes: int = Field(default=8, ge=0, description="most MatMuls int8_min_agreement may take out")
    int8_smoothing: float | None = Field(
        default=0.7, ge=0, le=1, description="SmoothQuant migration strength alpha: before int8, each MatMul input is "
                                             "divided per channel by s = max|x|^alpha / max|w|^(1-alpha) and the "
                                             "weight rows multiplied by it (same fp32 function, flatter activations "
                                             "for the one int8 scale per tensor); null turns it off")
    check_batch_size: int = Field(
        default=1, gt=0, description="examples per forward pass in the int8 checks and the fallback search: 1 runs "
                                     "each example alone, as an edge device does; dynamic int8 scales its "
                                     "activations over the whole batch (padding included), so a larger batch "
                                     "changes some int8 labels with the company an example keeps")
    calibration_examples: int = Field(default=256, gt=0, description="dev examples per task for static int8")
    isa: Literal["auto", "avx2", "avx512", "vnni", "generic"] = "auto"
    positions: Literal["max_length", "all"] = Field(
        default="max_length", description="position-embedding rows the ONNX graphs keep: max_length (the runtime "
                                          "truncates inputs there; MiniLM's 512-row table becomes 128 rows, 0.6 MB "
                                          "less) or all of the model's")
    optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    opset: int = Field(default=17, ge=14)
    parity_tolerance: float = Field(default=1e-4, gt=0)
    max_int8_drop: float | None = Field(default=None, ge=0, description="fail when int8 loses more dev score")

    @field_validator("keep_fp32")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from exc
        return value

    @field_validator("quantization")
    @classmethod
    def _modes(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("a non-empty list of distinct modes: dynamic, static")
        return value


class BenchSpec(Strict):
    batch_sizes: list[int] = Field(default=[1, 8])
    seq_len: int | None = Field(default=None, gt=0, description="tokens per input when timing (default: max_length)")
    other_seq_lens: list[int] = Field(default=[], description="more sequence lengths timed at batch 1")
    repeats: int = Field(default=50, gt=0, description="timed calls per model and input shape")
    rounds: int = Field(default=5, gt=0, description="the timed calls are spread over this many rounds, "
                        "models taking turns, so a slow spell of a shared machine hits all models alike")
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
    training: TrainingSpec = TrainingSpec()
    cache: CacheSpec = CacheSpec()
    export: ExportSpec = ExportSpec()
    bench: BenchSpec = BenchSpec()
    base_dir: Path = Field(default=Path("."), exclude=True, description="where relative paths start")

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
