"""Fine-tuning a multi-task teacher from a base encoder on batches mixed from all tasks."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModel

from distill.core.fileio import atomic_directory
from distill.data.batching import Batch
from distill.data.evaluation import evaluate, primary_scores, torch_forward
from distill.data.metrics import mean_score
from distill.data.tasks import TaskData
from distill.model.multitask import MultiTaskModel
from distill.recipe import Recipe
from distill.train.loop import train_loop
from distill.train.losses import task_losses
from distill.train.settings import TrainSettings, TrainSummary, seed_everything

log = logging.getLogger(__name__)


def fine_tune_teacher(recipe: Recipe, tasks: list[TaskData], base_model: str, tokenizer, out_dir: Path,
                      log_path: Path, checkpoint_dir: Path | None = None, resume: bool = False) -> TrainSummary:
    """Fine-tune `base_model` with one head per task and save the best (dev) teacher to `out_dir`.

    Checkpoints go to `checkpoint_dir` (when given); `resume` continues from the newest one there."""
    spec = recipe.teacher
    seed_everything(recipe.training_seed)
    encoder = AutoModel.from_pretrained(base_model, trust_remote_code=spec.trust_remote_code)
    model = MultiTaskModel(encoder, [t.info for t in tasks])
    weights = {t.name: t.weight for t in recipe.tasks}
    types = {t.info.name: t.info.type for t in tasks}
    pad_id = int(tokenizer.pad_token_id or 0)

    def loss_fn(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        out = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask), task=batch.task)
        gold, _ = task_losses(types[batch.task], out.logits[batch.task], torch.from_numpy(batch.labels))
        return weights[batch.task] * gold

    def evaluate_fn(model: torch.nn.Module) -> tuple[float, dict]:
        metrics = evaluate(torch_forward(model), tasks, "dev", pad_id, desc="teacher dev")
        return mean_score(primary_scores(tasks, metrics)), metrics

    def save_fn(model: torch.nn.Module) -> None:
        with atomic_directory(out_dir) as tmp:
            model.save(tmp, tokenizer)

    settings = TrainSettings.from_recipe(recipe, "teacher")
    train = {t.info.name: t.encoded["train"] for t in tasks}
    return train_loop(model, train, pad_id, loss_fn, evaluate_fn, save_fn, settings, log_path, "teacher",
                      checkpoint_dir, resume)
