"""The recipe's `distillation:`, `training:` and `cache:` sections: how students learn from the teacher."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from distill.recipe.common import StageName, Strict

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

    name: StageName
    epochs: float | None = Field(default=None, gt=0, description="epochs of this stage; default: "
                                                                  "distillation.epochs")
    losses: LossWeights


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
    temperature: Annotated[float, Field(gt=0)] | TemperatureSchedule = Field(
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
    head_learning_rate: float | None = Field(
        default=None, gt=0, description="the task heads' rate (copied from the teacher's, they must learn to read "
                                        "a much smaller encoder); null: learning_rate")
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
        default="no",
        description="autocast on GPU; bf16 also on a CPU with native bfloat16 (else fp32, with a log line)")
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
