"""The recipe's `tasks:` section: each task's data, fields and metric."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from distill.core.task_types import TaskType
from distill.recipe.common import Strict, TaskName

SPLITS = ("train", "dev", "test")
# Unlabelled examples the students learn from the teacher alone (the teacher never trains on them).
TRANSFER = "transfer"
# The metrics each task type can use as its primary metric; the first is the default.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "sequence_classification": ("accuracy", "macro_f1"),
    "token_classification": ("entity_f1",),
    "multi_label_classification": ("micro_f1", "macro_f1"),
    "regression": ("pearson", "spearman"),
}


def check_split_names(names: dict, prefix: str) -> None:
    """Refuse a split name other than train, dev, test and transfer (as keys of files, splits or limit)."""
    unknown = sorted(set(names) - {*SPLITS, TRANSFER})
    if unknown:
        raise ValueError(f"{prefix}unknown split(s) {unknown}; use train, dev, test, transfer")


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
            check_split_names(self.files, "files: ")
            if TRANSFER in self.files and len(self.files) == 1:
                raise ValueError("files: a transfer file needs labelled data beside it (a train file at least)")
        return self


class TaskSpec(Strict):
    """One task: its data, its fields and how it is scored."""

    name: TaskName
    type: TaskType
    source: SourceSpec
    text_field: str = "text"
    label_field: str = "label"
    splits: dict[str, str] | None = Field(
        default=None, description="train/dev/test -> the source's split names (hub datasets)"
    )
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    limit: dict[str, int] | None = Field(
        default=None, description="at most this many examples per split; transfer: see TRANSFER")
    metric: Literal["accuracy", "macro_f1", "entity_f1", "micro_f1", "pearson", "spearman"] | None = Field(
        default=None, description="the primary metric; default by type (see TASK_METRICS)")
    weight: float = Field(default=1.0, gt=0, description="this task's share of the loss")
    label_separator: str = Field(
        default=",", min_length=1,
        description="multi_label_classification: separates the label names when a label cell is one string")

    @field_validator("split_ratios")
    @classmethod
    def _ratios(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r <= 0 for r in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError("three positive numbers that sum to 1 (train, dev, test)")
        return value

    @field_validator("splits", "limit")
    @classmethod
    def _split_names(cls, value: dict | None) -> dict | None:
        check_split_names(value or {}, "")
        return value

    @field_validator("limit")
    @classmethod
    def _positive_limits(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for name, count in (value or {}).items():
            if count < (0 if name == TRANSFER else 1):  # transfer: 0 turns an inherited transfer split off
                raise ValueError(f"{name}: {count}; a limit is at least 1" + (" (transfer: 0 for none)"
                                                                              if name == TRANSFER else ""))
        return value

    @model_validator(mode="after")
    def _metric(self) -> TaskSpec:
        allowed = TASK_METRICS[self.type]
        if self.metric is None:
            self.metric = allowed[0]
        if self.metric not in allowed:
            raise ValueError(f"metric {self.metric!r} does not fit task type {self.type!r}; use one of {allowed}")
        return self
