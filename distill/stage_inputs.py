"""What each stage of `distill run` hashes: a stage whose inputs hash the same as last time is skipped.

Keep these stable: a changed dict reruns the stage (and every stage after it) on every existing run directory.
Options added after a stage existed are left out of its dict while they hold their default, for that reason.
"""

from __future__ import annotations

from pathlib import Path

from distill.core.fileio import sha256_dir, sha256_file, sha256_json
from distill.core.manifest import MANIFEST_FILE
from distill.data.tasks import TaskData, fingerprint
from distill.recipe import Recipe, StudentSpec


def teacher_hash_inputs(recipe: Recipe, source: Path | str, tasks: list[TaskData]) -> dict:
    """Fine-tuning a teacher from `source`: the teacher settings, its base, the data, the seed and task weights."""
    # per_task, and head_learning_rate while unset, are left out: the input hash of a base_model teacher stays
    # what it was before they existed
    unset = {"head_learning_rate"} if recipe.teacher.head_learning_rate is None else set()
    return {"teacher": recipe.teacher.model_dump(exclude={"per_task"} | unset), "base": str(source),
            "data": _labelled_data(tasks), "seed": recipe.seed, "weights": [t.weight for t in recipe.tasks],
            **_training_inputs(recipe)}


def per_task_hash_inputs(recipe: Recipe, checkpoints: dict[str, Path], tasks: list[TaskData]) -> dict:
    """Assembling the students' starting point from per-task checkpoints: their files, the data and the seed."""
    return {"per_task": {name: sha256_dir(path) for name, path in checkpoints.items()},
            "data": _labelled_data(tasks), "seed": recipe.seed}


def online_source_key(teacher_dir: Path, tasks: list[TaskData]) -> str:
    """What identifies the teacher outputs when the teacher runs online (in place of a cache key)."""
    return sha256_json({"online": sha256_dir(teacher_dir), "data": fingerprint(tasks)})


def student_hash_inputs(recipe: Recipe, spec: StudentSpec, source_key: str) -> dict:
    """Training one student: the teacher outputs it learns from, its settings, the distillation and the seed."""
    # QAT of the inputs simulates the export's activation scales; left out while they are per tensor, as they were
    # before per-token int8 existed (the hash stays as it was)
    scales = recipe.export.dynamic_int8_activations()
    activations = {"int8_activations": scales} if spec.qat_epochs and spec.qat_activations and \
        scales != "per_tensor" else {}
    return {"cache": source_key, "student": _student_settings(spec), "distillation": _distillation_inputs(recipe),
            "seed": recipe.seed, "weights": [t.weight for t in recipe.tasks], **_training_inputs(recipe),
            **activations}


def export_hash_inputs(recipe: Recipe, model_dir: Path, tasks: list[TaskData]) -> dict:
    """Exporting one model: its files, the export settings, and the data the checks and calibration read."""
    return {"model": sha256_dir(model_dir), "export": recipe.export.model_dump(), "max_length": recipe.max_length,
            "data": _labelled_data(tasks)}


def bench_hash_inputs(recipe: Recipe, artifacts: dict[str, Path], teacher_dir: Path, tasks: list[TaskData]) -> dict:
    """Benchmarking: every artifact (its manifest.json, which holds the sha256 of each of its files; the model card
    the bench writes beside them does not count), the teacher's files, the bench settings and the test data."""
    return {"artifacts": {name: sha256_file(path / MANIFEST_FILE) for name, path in artifacts.items()},
            "teacher": sha256_dir(teacher_dir), "bench": recipe.bench.model_dump(), "data": _labelled_data(tasks)}


def _labelled_data(tasks: list[TaskData]) -> str:
    """The data a stage reads when it never reads the transfer split (all but training students)."""
    return fingerprint(tasks, labelled_only=True)


def _student_settings(spec: StudentSpec) -> dict:
    """`vocab_dropped` only counts for a vocabulary-pruned student, `embedding_bits` and `init_from` only when set,
    and LoRA's default target modules are written as BERT's list they were (so adding those options did not change
    the hash, and retrain, other students)."""
    excluded = ({"vocab_dropped"} if spec.vocab is None else set()) | {
        name for name in ("embedding_bits", "init_from") if getattr(spec, name) is None}
    settings = spec.model_dump(exclude=excluded)
    if settings.get("lora") and settings["lora"]["target_modules"] is None:  # the default before families had one
        settings["lora"]["target_modules"] = ["query", "key", "value", "dense"]
    return settings


def _distillation_inputs(recipe: Recipe) -> dict:
    """The distillation settings; `sampling` and `head_learning_rate` only when set (the hashes of recipes written
    before they existed stay as they were)."""
    config = recipe.distillation
    return config.model_dump(exclude={name for name in ("sampling", "head_learning_rate")
                                      if getattr(config, name) is None})


def _training_inputs(recipe: Recipe) -> dict:
    """The training: settings that change a trained model (nothing when all are defaults, so the stage hashes of
    recipes without a training: section stay as they were)."""
    changed = recipe.training.model_dump(exclude_defaults=True, exclude={"tensorboard", "checkpoint_every_steps"})
    return {"training": changed} if changed else {}
