"""One training loop for teachers and students, on top of accelerate (CPU, GPU, or several processes).

Per epoch the loop runs a batch plan (tasks mixed by the sampling strategy; a pure function of the seed and
the epoch, split evenly over the processes), sums `gradient_accumulation_steps` batches into each optimiser
step, evaluates on dev (the main process; the others receive the score, so all agree on early stopping) and
keeps the best model. Checkpoints (see distill.train.checkpoint) hold the epoch and the position in its plan, so
`resume` continues at the exact batch and ends with the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast, gather
from transformers import get_linear_schedule_with_warmup

from distill.core.errors import DistillError, DistillInputError
from distill.core.fileio import atomic_write_text
from distill.core.progress import progress
from distill.data.batching import Batch, Plan, pad_batch, slice_batches, training_batches
from distill.data.tasks import EncodedSplit
from distill.train.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_state,
    rng_state,
    save_checkpoint,
)
from distill.train.settings import (
    LoopState,
    TrainSettings,
    TrainSummary,
    cpu_autocast,
    is_out_of_memory,
    make_accelerator,
    make_optimizer,
    parameter_groups,
    seed_everything,
)
from distill.train.task_weighting import UncertaintyWeighting

log = logging.getLogger(__name__)
LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]


def train_loop(model: torch.nn.Module, train: dict[str, EncodedSplit], pad_id: int, loss_fn: LossFn,
               evaluate_fn: Callable[[torch.nn.Module], tuple[float, dict]],
               save_fn: Callable[[torch.nn.Module], None], settings: TrainSettings, log_path: Path,
               desc: str, checkpoint_dir: Path | None = None, resume: bool = False,
               on_epoch_start: Callable[[int, torch.nn.Module], None] | None = None) -> TrainSummary:
    """Train for `settings.epochs`, evaluate after each epoch, and save the best model (by dev score).

    `on_epoch_start(epoch, model)` runs before each epoch (1-based; also before a resumed one), e.g. to switch
    on fake quantization.

    `loss_fn` returns one batch's loss (before task weighting). With `checkpoint_dir`, checkpoints are written
    there (each epoch end, and every `checkpoint_every_steps`) and removed once training finishes; `resume`
    continues from the newest one. The JSON-lines log at `log_path` gets one record per epoch."""
    run = _Run(model, train, pad_id, loss_fn, settings, desc, checkpoint_dir)
    try:
        return run.train(evaluate_fn, save_fn, log_path, resume, on_epoch_start)
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        size, steps = settings.batch_size, settings.engine.gradient_accumulation_steps
        raise DistillError(
            f"{desc}: out of memory at {settings.batch_size_key} {size}; lower {settings.batch_size_key} and raise "
            f"training.gradient_accumulation_steps to keep the effective batch ({size} × {steps} examples per "
            f"step); {run.last_checkpoint_text()}") from exc
    finally:
        run.close()


class _Run:
    """The state of one training run: model, optimiser, schedule, loop position, checkpoints."""

    def __init__(self, model: torch.nn.Module, train: dict[str, EncodedSplit], pad_id: int, loss_fn: LossFn,
                 settings: TrainSettings, desc: str, checkpoint_dir: Path | None):
        engine = settings.engine
        self.train_data, self.pad_id, self.loss_fn = train, pad_id, loss_fn
        self.settings, self.engine, self.desc, self.checkpoint_dir = settings, engine, desc, checkpoint_dir
        seed_everything(settings.seed)
        self.accelerator = accelerator = make_accelerator(engine.mixed_precision)
        self.autocast = cpu_autocast(engine.mixed_precision) if accelerator.device.type == "cpu" else nullcontext
        self.main = accelerator.is_main_process
        self.weighting = UncertaintyWeighting(list(train)).to(accelerator.device) \
            if engine.uncertainty_weighting else None
        groups = parameter_groups(model, settings.head_learning_rate)
        if self.weighting is not None:
            groups.append({"params": list(self.weighting.parameters()), "weight_decay": 0.0})
        optimizer = make_optimizer(groups, settings.learning_rate)
        self.plan_length = len(self.epoch_plan(1))
        self.steps_per_epoch = math.ceil(self.plan_length / engine.gradient_accumulation_steps)
        self.total_steps = max(1, math.ceil(settings.epochs * self.steps_per_epoch))
        # not prepared: accelerate would step it once per process per optimiser step
        self.scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * self.total_steps),
                                                         self.total_steps)
        self.hook = None
        if accelerator.device.type != "cpu":
            self.hook = model.register_forward_pre_hook(_inputs_to(accelerator.device), with_kwargs=True)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.fingerprint = settings.fingerprint(accelerator.num_processes, train)
        self.state = LoopState()
        self.tensorboard: Any = None
        self.last_checkpoint: Path | None = None

    def epoch_plan(self, epoch: int) -> Plan:
        """This process's batches of `epoch` (the same on every run with the same seed): its slice of each
        batch of the plan made with the global batch size (batch_size × processes)."""
        sampling = self.engine.sampling
        processes = self.accelerator.num_processes
        plan = training_batches(self.train_data, self.settings.batch_size * processes, self.settings.seed + epoch,
                                sampling.strategy, sampling.temperature)
        return slice_batches(plan, self.accelerator.process_index, processes)

    def train(self, evaluate_fn: Callable[[torch.nn.Module], tuple[float, dict]],
              save_fn: Callable[[torch.nn.Module], None], log_path: Path, resume: bool,
              on_epoch_start: Callable[[int, torch.nn.Module], None] | None = None) -> TrainSummary:
        resumed_from = self.restore() if resume else None
        if resumed_from is None:
            self.clear_checkpoints()
        self.open_tensorboard(log_path)
        if self.main:  # the log holds this training's epochs: a resumed run rewrites the ones it restored
            atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in self.state.history))
        started = time.perf_counter() - self.state.seconds
        state, stopped = self.state, False
        with progress(total=self.total_steps, initial=state.step, desc=self.desc, unit="step",
                      disable=not self.main) as bar:
            while state.step < self.total_steps and not stopped:
                plan = self.epoch_plan(state.epoch)
                if on_epoch_start is not None:
                    on_epoch_start(state.epoch, self.accelerator.unwrap_model(self.model))
                self.model.train()
                while state.position < len(plan) and state.step < self.total_steps:
                    group = plan[state.position : state.position + self.engine.gradient_accumulation_steps]
                    loss = self.optimiser_step(group)
                    state.position += len(group)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", epoch=state.epoch, refresh=False)
                    every = self.engine.checkpoint_every_steps
                    if every and state.step % every == 0 and state.position < len(plan):
                        self.checkpoint(time.perf_counter() - started)
                stopped = self.end_epoch(evaluate_fn, save_fn, log_path, time.perf_counter() - started)
                if state.step < self.total_steps and not stopped:
                    self.checkpoint(time.perf_counter() - started)
        self.remove_checkpoints()
        best = state.best if state.best is not None else -math.inf
        return TrainSummary(best, state.best_epoch, state.history, time.perf_counter() - started, stopped,
                            str(resumed_from) if resumed_from else None)

    def optimiser_step(self, group: Plan) -> float:
        """Forward and backward over the group's batches (gradients summed), then one optimiser step."""
        accelerator, state = self.accelerator, self.state
        losses, bad = [], None
        for k, (task, indices) in enumerate(group):
            batch = pad_batch(task, self.train_data[task], indices, self.pad_id)
            # gradients are all-reduced across processes only on the group's last batch
            sync = nullcontext() if k == len(group) - 1 else accelerator.no_sync(self.model)
            with sync:
                with self.autocast():
                    loss = self.loss_fn(self.model, batch)
                value = loss.item()
                if not math.isfinite(value) and bad is None:
                    bad = (task, value)
                weighted = self.weighting(task, loss) if self.weighting is not None else loss
                accelerator.backward(weighted / len(group))
            losses.append(value)
        self.check_finite(bad)
        if self.weighting is not None and accelerator.num_processes > 1:
            weights = self.weighting.log_variances
            grad = weights.grad if weights.grad is not None else torch.zeros_like(weights)
            weights.grad = accelerator.reduce(grad, reduction="mean")
        accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        if not self.optimizer.step_was_skipped:  # fp16: a step with inf gradients is skipped, so is the schedule
            self.scheduler.step()
        self.optimizer.zero_grad()
        state.step += 1
        state.loss_sum += sum(losses)
        state.loss_batches += len(losses)
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("train/loss", sum(losses) / len(losses), state.step)
            self.tensorboard.add_scalar("train/learning_rate", self.scheduler.get_last_lr()[0], state.step)
        return sum(losses) / len(losses)

    def check_finite(self, bad: tuple[str, float] | None) -> None:
        """Stop every process when any process's loss was NaN or infinite (before the weights change)."""
        flag = torch.tensor([0.0 if bad is None else 1.0], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        if flag.item() == 0:
            return
        where = f"the loss became {bad[1]} at step {self.state.step + 1} (task {bad[0]})" if bad else \
            f"another process's loss became NaN or infinite at step {self.state.step + 1}"
        raise DistillError(f"{self.desc}: {where}; lower the learning rate (or use bf16 instead of fp16); the "
                           f"best model so far is kept, and {self.last_checkpoint_text()}")

    def end_epoch(self, evaluate_fn: Callable[[torch.nn.Module], tuple[float, dict]],
                  save_fn: Callable[[torch.nn.Module], None], log_path: Path, seconds: float) -> bool:
        """Evaluate, log, keep the best model, and move to the next epoch; returns True to stop early."""
        accelerator, state = self.accelerator, self.state
        model = accelerator.unwrap_model(self.model)
        score, metrics = evaluate_fn(model) if self.main else (0.0, {})
        if accelerator.num_processes > 1:  # the main process's score, so every process decides alike
            score = float(broadcast(torch.tensor([score], dtype=torch.float64, device=accelerator.device))[0])
        train_loss = torch.tensor([state.loss_sum / max(state.loss_batches, 1)], device=accelerator.device)
        if accelerator.num_processes > 1:
            train_loss = accelerator.reduce(train_loss, reduction="mean")
        record = {"epoch": state.epoch, "step": state.step, "train_loss": float(train_loss[0]), "dev_score": score,
                  "dev": metrics, "learning_rate": self.scheduler.get_last_lr()[0], "seconds": round(seconds, 2)}
        if self.weighting is not None:
            record["task_weights"] = self.weighting.weights()
        state.history.append(record)
        log.info("%s epoch %d: dev mean score %.4f", self.desc, state.epoch, score)
        if self.main:
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            self.log_tensorboard(record)
        if state.best is None or score > state.best:
            state.best, state.best_epoch, state.bad_epochs = score, state.epoch, 0
            if self.main:
                save_fn(model)
            accelerator.wait_for_everyone()
        else:
            state.bad_epochs += 1
        state.epoch, state.position, state.loss_sum, state.loss_batches = state.epoch + 1, 0, 0.0, 0
        patience = self.engine.early_stopping_patience
        if patience is not None and state.bad_epochs >= patience:
            log.info("%s: stopping early, no better dev score for %d epoch(s) (best %.4f at epoch %d)",
                     self.desc, state.bad_epochs, state.best, state.best_epoch)
            return True
        return False

    def checkpoint(self, seconds: float) -> None:
        """Save everything needed to continue from here (every process takes part; the main one writes)."""
        if self.checkpoint_dir is None:
            return
        self.state.seconds = seconds
        rows = gather({k: v.to(self.accelerator.device) for k, v in rng_state().items()})
        path = Path(self.checkpoint_dir) / checkpoint_name(self.state.step)
        if self.main:
            extra = {"scheduler": self.scheduler.state_dict(), "loop": asdict(self.state),
                     "fingerprint": self.fingerprint, "processes": self.accelerator.num_processes,
                     "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler else None}
            path = save_checkpoint(self.checkpoint_dir, self.state.step, self.modules(), self.optimizer, rows, extra)
            log.debug("%s: checkpoint %s", self.desc, path)
        self.last_checkpoint = path
        self.accelerator.wait_for_everyone()

    def modules(self) -> dict[str, torch.nn.Module]:
        modules = {"model": self.accelerator.unwrap_model(self.model)}
        if self.weighting is not None:
            modules["task_weighting"] = self.weighting
        return modules

    def restore(self) -> Path | None:
        """Continue from the newest checkpoint, if there is one; returns its path."""
        path = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        if path is None:
            log.info("%s: no checkpoint to resume from%s; starting from the beginning", self.desc,
                     f" in {self.checkpoint_dir}" if self.checkpoint_dir else "")
            return None
        saved = read_state(path)
        if saved["fingerprint"] != self.fingerprint:
            raise DistillInputError(
                f"{path}: this checkpoint was written with other training settings, data or number of processes "
                f"({saved['processes']}); run without --resume to start again")
        load_checkpoint(path, self.modules(), self.optimizer, self.accelerator.process_index, self.accelerator.device)
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.accelerator.scaler is not None and saved["scaler"]:
            self.accelerator.scaler.load_state_dict(saved["scaler"])
        self.state = LoopState(**saved["loop"])
        self.last_checkpoint = path
        log.info("%s: resuming from %s (epoch %d, batch %d, step %d)", self.desc, path, self.state.epoch,
                 self.state.position, self.state.step)
        return path

    def clear_checkpoints(self) -> None:
        """A fresh start: checkpoints of an earlier training must not be resumed later."""
        if self.main and self.checkpoint_dir is not None:
            for old in list_checkpoints(self.checkpoint_dir):
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def remove_checkpoints(self) -> None:
        """Training finished: its checkpoints are not needed any more (the best model is saved)."""
        self.accelerator.wait_for_everyone()
        if self.main and self.checkpoint_dir is not None:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # the run's checkpoints/ folder, once nothing else trains
                self.checkpoint_dir.parent.rmdir()

    def last_checkpoint_text(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is kept: {self.last_checkpoint} (continue with --resume)"

    def open_tensorboard(self, log_path: Path) -> None:
        if not self.engine.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise DistillError("training.tensorboard: the tensorboard package is not installed; "
                               "`pip install tensorboard`, or set training.tensorboard: false") from exc
        if self.main:
            directory = log_path.parent / "tensorboard" / log_path.stem
            self.tensorboard = SummaryWriter(log_dir=str(directory), purge_step=self.state.step or None)

    def log_tensorboard(self, record: dict) -> None:
        if self.tensorboard is None:
            return
        step = record["step"]
        self.tensorboard.add_scalar("dev/score", record["dev_score"], step)
        self.tensorboard.add_scalar("train/epoch_loss", record["train_loss"], step)
        for task, metrics in record["dev"].items():
            for name, value in metrics.items():
                self.tensorboard.add_scalar(f"dev/{task}/{name}", value, step)
        for task, weight in record.get("task_weights", {}).items():
            self.tensorboard.add_scalar(f"task_weight/{task}", weight, step)
        self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.hook is not None:
            self.hook.remove()


def _inputs_to(device: torch.device) -> Callable:
    """A forward pre-hook that moves tensor arguments to `device` (losses build their batches on the CPU)."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        move = lambda x: x.to(device) if isinstance(x, torch.Tensor) else x  # noqa: E731
        return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}

    return hook
