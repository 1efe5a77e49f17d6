"""The distiller: trains a student against gold labels and the cached teacher outputs."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from distill.batching import Batch
from distill.cache import TeacherCache
from distill.data import TaskData
from distill.evaluation import evaluate, primary_scores, torch_forward
from distill.losses import cross_entropy, hidden_mse, kd_kl
from distill.metrics import mean_score
from distill.recipe import Recipe, StudentSpec
from distill.training import TrainSettings, TrainSummary, seed_everything, train_loop
from students.build import build_student

log = logging.getLogger(__name__)


def layer_pairs(keep: list[int], cached: list[int]) -> list[tuple[int, int]]:
    """(student hidden index, teacher hidden index) pairs for the teacher layers present in the cache."""
    pairs = [(0, 0)] if 0 in cached else []
    pairs += [(j + 1, t + 1) for j, t in enumerate(keep) if t + 1 in cached]
    return pairs


def train_student(recipe: Recipe, tasks: list[TaskData], teacher_dir: Path, cache: TeacherCache,
                  spec: StudentSpec, tokenizer, out_dir: Path, log_path: Path) -> TrainSummary:
    """Build the student from the teacher, distil it from the cache, and save the best (dev) student."""
    config = recipe.distillation
    seed_everything(recipe.seed)
    built = build_student(recipe, spec, tasks, teacher_dir, tokenizer)
    student, keep = built.model, built.teacher_layers
    pairs = layer_pairs(keep, cache.hidden_layers) if config.hidden_weight > 0 else []
    teacher_layers = [t for _, t in pairs]
    weights = {t.name: t.weight for t in recipe.tasks}
    token_level = {t.info.name: t.info.type == "token_classification" for t in tasks}
    pad_id = int(tokenizer.pad_token_id or 0)
    log.info("student %s: teacher layers %s, hidden pairs %s", spec.name, keep, pairs)

    def loss_fn(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        mask = torch.from_numpy(batch.attention_mask)
        out = model(torch.from_numpy(batch.input_ids), mask, task=batch.task, output_hidden_states=bool(pairs))
        targets = cache.targets(batch.task, "train", batch.indices, batch.input_ids.shape[1],
                                token_level[batch.task], teacher_layers)
        logits = out.logits[batch.task]
        kd_mask = mask if token_level[batch.task] else None
        loss = config.alpha * cross_entropy(logits, torch.from_numpy(batch.labels))
        loss = loss + (1 - config.alpha) * kd_kl(logits, targets.logits, config.temperature, kd_mask)
        loss = weights[batch.task] * loss
        for student_index, teacher_index in pairs:
            loss = loss + config.hidden_weight * hidden_mse(out.hidden_states[student_index],
                                                            targets.hidden[teacher_index], mask)
        return loss

    def evaluate_fn(model: torch.nn.Module) -> tuple[float, dict]:
        metrics = evaluate(torch_forward(model), tasks, "dev", pad_id, desc=f"{spec.name} dev")
        return mean_score(primary_scores(tasks, metrics)), metrics

    evaluate_fn = built.eligible(evaluate_fn)  # only final-size (iterative pruning), QAT-trained epochs are kept

    def save_fn(model: torch.nn.Module) -> None:
        built.save(model, out_dir, tokenizer)

    settings = TrainSettings(config.epochs, config.batch_size, config.learning_rate, config.warmup_ratio, recipe.seed)
    train = {t.info.name: t.encoded["train"] for t in tasks}
    return train_loop(student, train, pad_id, loss_fn, evaluate_fn, save_fn, settings, log_path,
                      f"student {spec.name}", on_epoch_start=built.on_epoch_start)
