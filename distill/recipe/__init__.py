"""The recipe: one YAML file that describes a whole compression run, validated with pydantic.

One module per section (tasks, models, distillation, outputs) and the loader; every name is re-exported here.
"""

from distill.recipe.common import Strict
from distill.recipe.distillation import (
    LOSS_NAMES,
    CacheSpec,
    DistillationSpec,
    LossWeights,
    SamplingSpec,
    StageSpec,
    TemperatureSchedule,
    TrainingSpec,
)
from distill.recipe.loader import Recipe, deep_merge, load_recipe, parse_recipe
from distill.recipe.models import LoraSpec, PruningSpec, StudentSpec, TeacherSpec
from distill.recipe.outputs import BenchSpec, ExportSpec
from distill.recipe.tasks import SPLITS, TASK_METRICS, SourceSpec, TaskSpec, TaskType

__all__ = [
    "LOSS_NAMES", "SPLITS", "TASK_METRICS", "BenchSpec", "CacheSpec", "DistillationSpec", "ExportSpec", "LoraSpec",
    "LossWeights", "PruningSpec", "Recipe", "SamplingSpec", "SourceSpec", "StageSpec", "Strict", "StudentSpec",
    "TaskSpec", "TaskType", "TeacherSpec", "TemperatureSchedule", "TrainingSpec", "deep_merge", "load_recipe",
    "parse_recipe",
]
