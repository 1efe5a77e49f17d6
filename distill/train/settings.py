"""What a training run is set to do, where it is, and what it reports; the accelerate and optimiser set-up."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs

from distill.core.fileio import sha256_json
from distill.core.hardware import native_bf16
from distill.data.tasks import EncodedSplit
from distill.recipe import Recipe, TrainingSpec

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    epochs: float
    batch_size: int
    learning_rate: float
    warmup_ratio: float
    seed: int
    engine: TrainingSpec = field(default_factory=TrainingSpec)
    batch_size_key: str = "batch_size"  # the recipe key an out-of-memory error tells the user to lower
    head_learning_rate: float | None = None  # the task heads' (parameters under `heads.`), when not learning_rate

    @classmethod
    def from_recipe(cls, recipe: Recipe, role: Literal["teacher", "student"]) -> TrainSettings:
        """The teacher's (teacher:) or the students' (distillation:) optimisation, with the recipe's training:
        (the students' task mixing from distillation.sampling when set)."""
        spec = recipe.teacher if role == "teacher" else recipe.distillation
        key = "teacher.batch_size" if role == "teacher" else "distillation.batch_size"
        engine = recipe.training
        if role == "student" and recipe.distillation.sampling is not None:
            engine = engine.model_copy(update={"sampling": recipe.distillation.sampling})
        return cls(spec.epochs, spec.batch_size, spec.learning_rate, spec.warmup_ratio, recipe.training_seed,
                   engine, key, spec.head_learning_rate)

    def fingerprint(self, num_processes: int, train: dict[str, EncodedSplit]) -> str:
        """What a checkpoint must match to be resumed (settings that only change logging are left out)."""
        settings = {**asdict(self), "engine": self.engine.model_dump(exclude={"tensorboard",
                                                                              "checkpoint_every_steps"})}
        if self.head_learning_rate is None:  # checkpoints written before the option existed still resume
            del settings["head_learning_rate"]
        return sha256_json({"settings": settings, "processes": num_processes,
                            "examples": {task: len(split) for task, split in train.items()}})


@dataclass
class TrainSummary:
    best_score: float
    best_epoch: int
    history: list[dict]
    seconds: float
    stopped_early: bool = False
    resumed_from: str | None = None


@dataclass
class LoopState:
    """Where training is; saved in every checkpoint."""

    epoch: int = 1  # the epoch being run, from 1
    position: int = 0  # the next batch of this epoch's per-process plan
    step: int = 0  # optimiser steps done
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best
    loss_sum: float = 0.0  # over this epoch's batches so far
    loss_batches: int = 0
    seconds: float = 0.0  # training time before this process started (a resumed run)
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator(mixed_precision: str) -> Accelerator:
    """An Accelerator on the GPU when there is one (as distill.core.processes), with its mixed precision there;
    on CPU it runs fp32 and `cpu_autocast` covers the training step."""
    cpu = not torch.cuda.is_available()
    # each batch uses one task's head only, so DDP must expect parameters without gradients
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=cpu, mixed_precision="no" if cpu else mixed_precision, kwargs_handlers=[ddp])


def cpu_autocast(mixed_precision: str) -> Callable[[], AbstractContextManager]:
    """What wraps a training step on CPU: bfloat16 autocast for `bf16` where the CPU multiplies bfloat16 in
    hardware (AVX-512 BF16, AMX, Arm BF16: about twice as fast as fp32 for an encoder), otherwise fp32 with a
    log line (emulated bfloat16 is slower than fp32; CPUs have no fast fp16). The weights, the optimiser and
    evaluation stay fp32."""
    if mixed_precision == "bf16" and native_bf16():
        log.info("training.mixed_precision bf16: training steps autocast to bfloat16 on this CPU (native bf16); "
                 "weights and evaluation stay fp32")
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    if mixed_precision != "no":
        why = "it has no native bfloat16" if mixed_precision == "bf16" else "use bf16 on a CPU with native bfloat16"
        log.info("training.mixed_precision %s is ignored on this CPU (%s); training in fp32", mixed_precision, why)
    return nullcontext


def parameter_groups(model: torch.nn.Module, head_learning_rate: float | None) -> list[dict[str, Any]]:
    """The trainable parameters as optimiser groups: one, or the task heads (`heads.` in a MultiTaskModel) apart
    at `head_learning_rate`."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if head_learning_rate is None:
        return [{"params": [p for _, p in named]}]
    heads = [p for name, p in named if name.startswith("heads.")]
    if not heads:
        raise ValueError("head_learning_rate is set but the model has no task heads (parameters under heads.)")
    return [{"params": [p for name, p in named if not name.startswith("heads.")]},
            {"params": heads, "lr": head_learning_rate}]


def make_optimizer(groups: list[dict[str, Any]], learning_rate: float) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel (one pass over every parameter: ~5x faster steps than the per-tensor
    loop on CPU, measured on a 6M-parameter student) where the parameters' device and dtype allow it."""
    try:
        return torch.optim.AdamW(groups, lr=learning_rate, fused=True)
    except RuntimeError:
        return torch.optim.AdamW(groups, lr=learning_rate)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA or CPU allocation failure."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
