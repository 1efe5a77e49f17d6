"""One training loop for teachers and students, on top of accelerate (CPU, GPU, or several processes)."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from transformers import get_linear_schedule_with_warmup

from distill.batching import Batch, pad_batch, training_batches
from distill.data import EncodedSplit
from distill.errors import DistillError
from distill.progress import progress

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    epochs: float
    batch_size: int
    learning_rate: float
    warmup_ratio: float
    seed: int


@dataclass
class TrainSummary:
    best_score: float
    best_epoch: int
    history: list[dict]
    seconds: float


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_loop(model: torch.nn.Module, train: dict[str, EncodedSplit], pad_id: int,
               loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor],
               evaluate_fn: Callable[[torch.nn.Module], tuple[float, dict]],
               save_fn: Callable[[torch.nn.Module], None], settings: TrainSettings, log_path: Path,
               desc: str, on_epoch_start: Callable[[int, torch.nn.Module], None] | None = None) -> TrainSummary:
    """Train for `settings.epochs`, evaluate after each epoch, and save the best model (by dev score).

    `on_epoch_start(epoch, model)` runs before each epoch (1-based), e.g. to switch on fake quantization."""
    seed_everything(settings.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    steps_per_epoch = len(training_batches(train, settings.batch_size, settings.seed))
    total_steps = max(1, math.ceil(settings.epochs * steps_per_epoch / accelerator.num_processes))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    history: list[dict] = []
    best, best_epoch, step = -math.inf, 0, 0
    started = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log_file, progress(total=total_steps, desc=desc, unit="step",
                                                                 disable=not accelerator.is_main_process) as bar:
        epoch = 0
        while step < total_steps:
            epoch += 1
            plan = training_batches(train, settings.batch_size, settings.seed + epoch)
            plan = plan[accelerator.process_index :: accelerator.num_processes]
            if on_epoch_start is not None:
                on_epoch_start(epoch, accelerator.unwrap_model(model))
            model.train()
            running = 0.0
            for task, indices in plan:
                if step >= total_steps:
                    break
                batch = pad_batch(task, train[task], indices, pad_id)
                loss = loss_fn(model, batch)
                if not torch.isfinite(loss):
                    raise DistillError(f"{desc}: the loss became {loss.item()} at step {step + 1} (task {task}); "
                                       "lower the learning rate; the last good model is kept")
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                step += 1
                running += loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch, refresh=False)
            score, metrics = evaluate_fn(accelerator.unwrap_model(model))
            record = {"epoch": epoch, "step": step, "train_loss": running / max(len(plan), 1), "dev_score": score,
                      "dev": metrics, "seconds": round(time.perf_counter() - started, 2)}
            history.append(record)
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            log.info("%s epoch %d: dev mean score %.4f", desc, epoch, score)
            if score > best and accelerator.is_main_process:
                best, best_epoch = score, epoch
                save_fn(accelerator.unwrap_model(model))
    return TrainSummary(best, best_epoch, history, time.perf_counter() - started)
