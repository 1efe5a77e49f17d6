"""distill: compress a fine-tuned multi-task transformer into compact students for edge deployment.

Names are imported lazily, so `import distill.runtime` stays free of torch and transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_recipe": "distill.recipe",
    "Recipe": "distill.recipe",
    "run_recipe": "distill.pipeline",
    "check_inputs": "distill.pipeline",
    "run_demo": "distill.api",
    "demo_recipe": "distill.api",
    "load_tasks": "distill.data.tasks",
    "fine_tune_teacher": "teachers.finetune",
    "build_cache": "teachers.cache.build",
    "TeacherCache": "teachers.cache.store",
    "train_student": "distill.distillation.distiller",
    "distil": "distill.distillation.distiller",
    "OnlineTeacher": "teachers.cache.online",
    "export_artifact": "distill.export.artifact",
    "run_benchmarks": "distill.bench.suite",
    "check_gate": "distill.bench.gate",
    "Predictor": "distill.runtime",
    "MultiTaskModel": "distill.model.multitask",
    "DistillError": "distill.core.errors",
    "DistillInputError": "distill.core.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
