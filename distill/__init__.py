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
    "run_demo": "distill.api",
    "demo_recipe": "distill.api",
    "load_tasks": "distill.data",
    "fine_tune_teacher": "teachers.finetune",
    "build_cache": "teachers.runner",
    "TeacherCache": "distill.cache",
    "train_student": "distill.distiller",
    "distil": "distill.distiller",
    "OnlineTeacher": "distill.online_teacher",
    "export_artifact": "distill.exporter",
    "run_benchmarks": "benchmarks.suite",
    "check_gate": "distill.gate",
    "Predictor": "distill.runtime",
    "MultiTaskModel": "teachers.multitask",
    "DistillError": "distill.errors",
    "DistillInputError": "distill.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
