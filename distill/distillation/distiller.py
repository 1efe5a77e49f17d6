"""The distiller: trains a student against gold labels and the teacher's outputs, stage by stage.

The teacher's outputs come from a `TeacherSource` (the cache, or the teacher run online); the loss is the
recipe's weighted sum (`distillation.losses`, or per stage). Only the last stage keeps its best dev epoch:
earlier stages (e.g. TinyBERT's intermediate-layer stage) just run their epochs and hand their weights on.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from distill.core.errors import DistillInputError
from distill.core.fileio import atomic_directory
from distill.core.processes import is_main_process, num_processes
from distill.data.batching import Batch, training_batches
from distill.data.evaluation import evaluate, primary_scores, torch_forward
from distill.data.metrics import mean_score
from distill.data.tasks import TaskData
from distill.distillation.layer_map import layer_pairs
from distill.distillation.projections import HiddenProjections, attached
from distill.distillation.transfer import TrainWithTransfer, student_train_splits
from distill.model.attention import capture_qkv
from distill.model.encoder import config_value, find_anatomy, head_size
from distill.model.multitask import MultiTaskModel
from distill.recipe import LossWeights, Recipe, StageSpec, StudentSpec, TemperatureSchedule
from distill.train.checkpoint import latest_checkpoint
from distill.train.loop import train_loop
from distill.train.losses import attention_transfer, hidden_cosine, hidden_mse, kd_mse, relation_kl, task_losses
from distill.train.settings import TrainSettings, TrainSummary, seed_everything
from students.build import StudentBuild, build_student
from students.layers import save_layer_map
from teachers.cache.store import TeacherSource, TeacherTargets

log = logging.getLogger(__name__)
LOGIT_LOSSES = ("hard", "kd_kl", "kd_mse")


def train_student(recipe: Recipe, tasks: list[TaskData], teacher_dir: Path, source: TeacherSource,
                  spec: StudentSpec, tokenizer, out_dir: Path, log_path: Path, checkpoint_dir: Path | None = None,
                  resume: bool = False) -> TrainSummary:
    """Build the student from the teacher's layers, distil it, and save the best (dev) student.

    Checkpoints go to `checkpoint_dir` (when given); `resume` continues from the newest one there."""
    seed_everything(recipe.training_seed)
    built = build_student(recipe, spec, tasks, teacher_dir, tokenizer)
    teacher_config = AutoConfig.from_pretrained(teacher_dir, trust_remote_code=recipe.teacher.trust_remote_code)
    return distil(built.model, teacher_config, recipe, tasks, source, tokenizer, out_dir, log_path, spec.name,
                  built.teacher_layers, checkpoint_dir, resume, built)


def distil(student: MultiTaskModel, teacher_config: PretrainedConfig, recipe: Recipe, tasks: list[TaskData],
           source: TeacherSource, tokenizer, out_dir: Path, log_path: Path, name: str,
           copied_from: list[int] | None = None, checkpoint_dir: Path | None = None,
           resume: bool = False, built: StudentBuild | None = None) -> TrainSummary:
    """Train `student` through the recipe's stages; save the best dev epoch of the last stage to `out_dir`.

    `copied_from` (the 0-based teacher layer each student layer was copied from) sets the `all` layer map and
    is saved as student.json; a student not built from the teacher's layers gets the uniform map. `built`
    (from `students.build.build_student`) adds its epoch hooks (QAT, iterative pruning), keeps epochs before
    they are done from being saved, and saves the plain model (vocabulary, adapters merged)."""
    config = recipe.distillation
    stages = config.stage_plan()
    _check_attention_loss(stages, teacher_config, student.encoder.config)
    pairs = layer_pairs(config.layer_map, student.num_layers, config_value(teacher_config, "layers"), copied_from)
    projected = {s for s, _ in pairs} if any(s.losses.needs_hidden for s in stages) else set()
    projected |= {0} if any(s.losses.embedding > 0 for s in stages) else set()
    projections = HiddenProjections(config_value(student.encoder.config, "hidden"),
                                    config_value(teacher_config, "hidden"), projected)
    heads = Heads(head_size(student.encoder.config), config_value(teacher_config, "heads"), config.relation_heads)
    pad_id = int(tokenizer.pad_token_id or 0)
    train, train_sizes = student_train_splits(tasks)
    if any(len(train[name]) > size for name, size in train_sizes.items()):
        source = TrainWithTransfer(source, train_sizes)
    log.info("student %s: layer pairs (student, teacher) %s, %d projection(s)", name, pairs, len(projections.maps))

    def evaluate_dev(model: torch.nn.Module) -> tuple[float, dict]:
        metrics = evaluate(torch_forward(model), tasks, "dev", pad_id, desc=f"{name} dev")
        return mean_score(primary_scores(tasks, metrics)), metrics

    def save(model: torch.nn.Module) -> None:
        if built is not None:
            built.save(model, out_dir, tokenizer)
            return
        with atomic_directory(out_dir) as tmp:
            model.save(tmp, tokenizer)
            if copied_from is not None:
                save_layer_map(tmp, copied_from)

    # QAT and iterative pruning belong to the last (or only) stage: their hooks, and the rule that epochs before
    # they are done cannot be the saved one, apply there
    last_evaluate = built.eligible(evaluate_dev) if built is not None else evaluate_dev
    last_hook = built.on_epoch_start if built is not None else None

    staged = len(stages) > 1
    checkpoint_dirs = [checkpoint_dir / stage.name if staged and checkpoint_dir else checkpoint_dir
                       for stage in stages]
    if staged and checkpoint_dir is not None and not resume and is_main_process():
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # no stage may later resume an older run's checkpoint
    first = _resume_stage(checkpoint_dirs) if resume else 0
    summaries: list[tuple[str, TrainSummary]] = []
    with attached(student, projections):
        for number, stage in enumerate(stages):
            if number < first:  # finished before the interruption: the later stage's checkpoint holds its result
                continue
            last = number == len(stages) - 1
            objective = StageObjective(stage.losses, config.temperature, pairs, projections, heads, source,
                                       student.encoder,
                                       {t.name: t.weight for t in recipe.tasks},
                                       {t.info.name: t.info.type for t in tasks},
                                       _total_steps(train, stage.epochs, config.batch_size, recipe.training_seed))
            _check_source_layers(source, objective.teacher_hidden)
            stage_log = log_path.with_name(f"{log_path.stem}.{stage.name}{log_path.suffix}") if staged else log_path

            def evaluate_fn(model: torch.nn.Module, stage: StageSpec = stage, objective: StageObjective = objective,
                            stage_log: Path = stage_log, last: bool = last) -> tuple[float, dict]:
                _write_log(stage_log, {"stage": stage.name, "losses": stage.losses.active(), **objective.epoch_means()})
                return (last_evaluate if last else evaluate_dev)(model)

            settings = replace(TrainSettings.from_recipe(recipe, "student"), epochs=stage.epochs)
            if not last:  # an intermediate stage's dev score says little: it runs all its epochs
                engine = settings.engine.model_copy(update={"early_stopping_patience": None})
                settings = replace(settings, engine=engine)
            desc = f"student {name}" + (f" ({stage.name})" if staged else "")
            # Earlier stages keep their last weights in memory for the next stage; only the last one saves.
            summary = train_loop(student, train, pad_id, objective, evaluate_fn, save if last else _keep_in_memory,
                                 settings, stage_log, desc, checkpoint_dirs[number], resume and number == first,
                                 on_epoch_start=last_hook if last else None)
            summaries.append((stage.name, summary))
    return _combine(summaries)


def _check_attention_loss(stages: list[StageSpec], teacher_config: PretrainedConfig,
                          student_config: PretrainedConfig) -> None:
    """The attention loss recomputes softmax(QKᵀ/√d) from the projections: refused where that is not the
    family's attention (relative-position scores or rotary embeddings come on top), the teacher's or, for a
    student started from another encoder, the student's."""
    if not any(s.losses.attention > 0 for s in stages):
        return
    for role, config in (("teacher", teacher_config), ("student", student_config)):
        family = find_anatomy(config)
        if family is not None and not family.attention_from_qk:
            raise DistillInputError(
                f"distillation.losses.attention: a {family.family} {role} adds relative-position or rotary terms "
                "to softmax(QKᵀ/√d), which the attention loss cannot recompute from the query and key; use "
                "relations (query/key/value relations) instead")


def _resume_stage(checkpoint_dirs: list[Path | None]) -> int:
    """The stage to resume: the latest one with a checkpoint (checkpoints go once a stage finishes)."""
    for number in range(len(checkpoint_dirs) - 1, -1, -1):
        directory = checkpoint_dirs[number]
        if directory is not None and latest_checkpoint(directory) is not None:
            return number
    return 0


@dataclass
class Heads:
    """The student's head size, the teacher's head count, and the relation heads both are split into.

    A student layer's head count is its query width over the head size: heads pruned by `prune_heads` leave
    `config.num_attention_heads` as it was. Relation heads default to the teacher's head count, or to the
    greatest common divisor of both head counts when the student has other heads (pruned)."""

    student_head_size: int
    teacher: int
    relations: int | None

    def student(self, query: torch.Tensor) -> int:
        return int(query.shape[-1]) // self.student_head_size

    def relation_heads(self, query: torch.Tensor) -> int:
        return self.relations or math.gcd(self.teacher, self.student(query))


class StageObjective:
    """One stage's weighted loss, as `train_loop`'s loss function; keeps the mean of each term per epoch.

    Per batch of task t: w_t · [hard · CE + kd_kl · T² KL + kd_mse · MSE(logits)] + Σ over the layer pairs of
    hidden_mse · MSE + hidden_cosine · (1 − cos) + attention · KL(attention) + relations · KL(relations),
    + embedding · MSE(hidden state 0). Student hidden states go through the width projections."""

    def __init__(self, weights: LossWeights, temperature: float | TemperatureSchedule, pairs: list[tuple[int, int]],
                 projections: HiddenProjections, heads: Heads, source: TeacherSource,
                 student_encoder: torch.nn.Module, task_weights: dict[str, float], task_types: dict[str, str],
                 total_steps: int):
        self.weights = weights.active()
        self.temperature = temperature
        self.hidden_pairs = pairs if weights.needs_hidden else []
        self.qkv_pairs = pairs if weights.needs_qkv else []
        self.embedding = weights.embedding > 0
        self.teacher_hidden = sorted({t for _, t in self.hidden_pairs} | ({0} if self.embedding else set()))
        self.teacher_qkv = sorted({t for _, t in self.qkv_pairs})
        self.projections, self.heads, self.source = projections, heads, source
        self.student_encoder = student_encoder
        self.task_weights, self.task_types = task_weights, task_types
        self.token_level = {task: kind == "token_classification" for task, kind in task_types.items()}
        self.total_steps = total_steps
        self.step = 0
        self._sums: dict[str, float] = defaultdict(float)
        self._batches = 0

    def current_temperature(self) -> float:
        if isinstance(self.temperature, TemperatureSchedule):
            return self.temperature.at(self.step / max(self.total_steps - 1, 1))
        return self.temperature

    def __call__(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        device = next(model.parameters()).device
        mask = torch.from_numpy(batch.attention_mask).to(device)
        task, width = batch.task, batch.input_ids.shape[1]
        with capture_qkv(self.student_encoder, [s for s, _ in self.qkv_pairs]) as student_qkv:
            out = model(torch.from_numpy(batch.input_ids).to(device), mask, task=task,
                        output_hidden_states=bool(self.teacher_hidden))
        extra = {"qkv_layers": self.teacher_qkv} if self.teacher_qkv else {}
        targets = _to_device(self.source.targets(task, "train", batch.indices, width, self.token_level[task],
                                                 self.teacher_hidden, **extra), device)
        terms = self._terms(out.logits[task], out.hidden_states, student_qkv, targets,
                            torch.from_numpy(batch.labels).to(device), mask, self.task_types[task])
        total = sum(self.weights[name] * (self.task_weights[task] if name in LOGIT_LOSSES else 1.0) * value
                    for name, value in terms.items())
        for name, value in terms.items():
            self._sums[name] += value.item()
        self._batches += 1
        self.step += 1
        return total

    def _terms(self, logits: torch.Tensor, hidden: tuple[torch.Tensor, ...] | None,
               student_qkv: dict[int, list[torch.Tensor]], targets: TeacherTargets, labels: torch.Tensor,
               mask: torch.Tensor, task_type: str) -> dict[str, torch.Tensor]:
        """Each active loss, unweighted. `hard` and `kd_kl` follow the task type (see `task_losses`)."""
        kd_mask = mask if task_type == "token_classification" else None
        project = self.projections
        terms = {}
        if "hard" in self.weights or "kd_kl" in self.weights:
            gold, kd = task_losses(task_type, logits, labels, targets.logits, self.current_temperature(), kd_mask)
            if "hard" in self.weights:
                terms["hard"] = gold
            if "kd_kl" in self.weights:
                terms["kd_kl"] = kd
        if "kd_mse" in self.weights:
            terms["kd_mse"] = kd_mse(logits, targets.logits, kd_mask)
        if "hidden_mse" in self.weights:
            terms["hidden_mse"] = sum(hidden_mse(project(s, hidden[s]), targets.hidden[t], mask)
                                      for s, t in self.hidden_pairs)
        if "hidden_cosine" in self.weights:
            terms["hidden_cosine"] = sum(hidden_cosine(project(s, hidden[s]), targets.hidden[t], mask)
                                         for s, t in self.hidden_pairs)
        if self.embedding:
            terms["embedding"] = hidden_mse(project(0, hidden[0]), targets.hidden[0], mask)
        if "attention" in self.weights:
            terms["attention"] = sum(
                attention_transfer(student_qkv[s][0], student_qkv[s][1], targets.qkv[t][0], targets.qkv[t][1],
                                   self.heads.student(student_qkv[s][0]), self.heads.teacher, mask)
                for s, t in self.qkv_pairs)
        if "relations" in self.weights:
            terms["relations"] = sum(
                relation_kl(student_qkv[s], targets.qkv[t], self.heads.relation_heads(student_qkv[s][0]), mask)
                for s, t in self.qkv_pairs)
        return terms

    def epoch_means(self) -> dict:
        """The mean of each loss term since the last call (and the temperature now), then start over."""
        means = {name: total / max(self._batches, 1) for name, total in self._sums.items()}
        self._sums.clear()
        self._batches = 0
        return {"loss_terms": means, "temperature": self.current_temperature()}


def _to_device(targets: TeacherTargets, device: torch.device) -> TeacherTargets:
    return TeacherTargets(targets.logits.to(device), {k: v.to(device) for k, v in targets.hidden.items()},
                          {k: [x.to(device) for x in v] for k, v in targets.qkv.items()})


def _check_source_layers(source: TeacherSource, needed: list[int]) -> None:
    missing = sorted(set(needed) - set(source.hidden_layers))
    if missing:
        raise DistillInputError(f"the teacher source has hidden layers {source.hidden_layers} but the losses need "
                                f"{missing} too; build the cache with them (`distill cache` does it from the recipe)")


def _total_steps(train: dict, epochs: float, batch_size: int, seed: int) -> int:
    """The batches one process runs in one stage (the temperature schedule advances once per batch): every
    process takes a slice of every batch of the plan made at the global batch size (see `_Run.epoch_plan`)."""
    per_epoch = len(training_batches(train, batch_size * num_processes(), seed))
    return max(1, math.ceil(epochs * per_epoch))


def _keep_in_memory(model: torch.nn.Module) -> None:
    """An earlier stage's `save`: its weights stay in the model, which the next stage trains further."""


def _write_log(path: Path, record: dict) -> None:
    if not is_main_process():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _combine(summaries: list[tuple[str, TrainSummary]]) -> TrainSummary:
    """One summary over all stages: the last stage's best epoch, every stage's history (tagged), total time."""
    history = [{"stage": name, **record} for name, summary in summaries for record in summary.history]
    last = summaries[-1][1]
    return TrainSummary(last.best_score, last.best_epoch, history, sum(s.seconds for _, s in summaries))
