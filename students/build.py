"""Building a student from a StudentSpec, and saving it as a plain Hugging Face model.

Order: pick the teacher layers; score heads and FFN neurons on the teacher (dev task loss; measured once per
teacher and data, see students.teacher_stats); copy the kept layers; prune the vocabulary; narrow the hidden
size; remove heads and FFN neurons; then the training-time parts (teacher-id input mapping, LoRA adapters,
the QAT epoch hook), which `save` strips again.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel

from distill.core.errors import DistillInputError
from distill.core.fileio import atomic_directory, sha256_json
from distill.core.int8_presets import configured_preset
from distill.data.evaluation import predict, torch_forward
from distill.data.metrics import mean_score, score
from distill.data.tasks import EncodedSplit, TaskData
from distill.model.encoder import anatomy, config_value, head_size, set_config_value
from distill.model.multitask import MultiTaskModel
from distill.recipe import Recipe, StudentSpec
from students.hidden import hidden_covariance, narrow_hidden, projection
from students.importance import Importance, score_importance
from students.layers import keep_layers, pick_layers, save_layer_map
from students.lora import add_lora, merged_encoder
from students.modules import plain_modules
from students.pretrained import pretrained_student
from students.pruning import IterativePruning, apply_masks, prune_ffn, prune_heads
from students.qat import QatSettings, qat_hook, snap_word_embeddings
from students.teacher_stats import TeacherStats
from students.vocab import (
    accept_teacher_ids,
    choose_vocab,
    coverage,
    prune_embeddings,
    write_student_tokenizer,
)
from students.vocab_map import VocabMap

log = logging.getLogger(__name__)
HIDDEN_STAT_EXAMPLES = 256
INELIGIBLE_SCORE = -1.0  # every metric is in [0, 1]


@dataclass
class StudentBuild:
    """A student ready for distillation: it reads teacher token ids; `save` writes the plain model."""

    model: MultiTaskModel
    teacher_layers: list[int]
    teacher_dir: Path
    vocab: VocabMap | None = None
    details: dict[str, Any] = field(default_factory=dict)
    epoch_hooks: list[Callable[[int, torch.nn.Module], None]] = field(default_factory=list)
    iterative: IterativePruning | None = None
    first_eligible_epoch: int = 1
    epoch: int = 0

    def on_epoch_start(self, epoch: int, model: torch.nn.Module) -> None:
        """train_loop's epoch hook: the iterative pruning round, then QAT switching on, when due."""
        self.epoch = epoch
        for hook in self.epoch_hooks:
            hook(epoch, model)

    def eligible(self, evaluate_fn: Callable[[torch.nn.Module], tuple[float, dict]]
                 ) -> Callable[[torch.nn.Module], tuple[float, dict]]:
        """`evaluate_fn` for train_loop, except that epochs before `first_eligible_epoch` (iterative pruning not
        at its target yet, or QAT not on yet) score INELIGIBLE_SCORE, below any metric, so the saved student
        has its final size and was trained with fake quantization; their real score stays in the metrics."""
        if self.first_eligible_epoch <= 1:
            return evaluate_fn

        def evaluate(model: torch.nn.Module) -> tuple[float, dict]:
            score, metrics = evaluate_fn(model)
            if self.epoch >= self.first_eligible_epoch:
                return score, metrics
            return INELIGIBLE_SCORE, {**metrics, "not_eligible": {"dev_score": score,
                                                                  "first_eligible_epoch": self.first_eligible_epoch}}

        return evaluate

    def plain_model(self, model: MultiTaskModel) -> MultiTaskModel:
        """A copy of the (trained) student as plain modules: no id mapping, no fake quant, adapters merged,
        gradually pruned units removed."""
        plain = copy.deepcopy(model)
        plain.encoder = merged_encoder(plain.encoder)
        if self.iterative is not None:
            self.details["removed_heads"] = apply_masks(plain)
        plain_modules(plain)
        return plain.cpu().eval()

    def save(self, model: MultiTaskModel, out_dir: Path, tokenizer: Any) -> None:
        """Write the student (encoder, heads, tasks.json, its tokenizer, student.json) atomically to `out_dir`."""
        plain = self.plain_model(model)
        details = {**self.details, "params": sum(p.numel() for p in plain.parameters())}
        if self.iterative is not None:
            details["pruning_rounds"] = self.iterative.history
        with atomic_directory(out_dir) as tmp:
            plain.save(tmp, None if self.vocab else tokenizer)
            if self.vocab is not None:
                write_student_tokenizer(self.teacher_dir, tmp, self.vocab)
            save_layer_map(tmp, self.teacher_layers, details)


def check_student_shape(spec: StudentSpec, config: Any) -> None:
    """Refuse, before any work, a student the teacher (its `config`) cannot give: more layers, heads or FFN
    neurons than it has, or a hidden size that is not below its own and a multiple of its attention head size."""
    where = f"students.{spec.name}"
    if spec.init_from is not None:  # its layers are the init_from encoder's (students.pretrained checks them)
        return
    pick_layers(spec.layers, config_value(config, "layers"), spec.layer_strategy, f"{where}.layers")
    for key, size, what in (("heads", spec.heads, "{} attention heads per layer"), ("ffn", spec.ffn, "FFN width {}")):
        have = config_value(config, key, default=0)
        if size is not None and have and size > have:
            raise DistillInputError(f"{where}.{key}: {size} is more than the teacher's {what.format(have)}")
    if spec.hidden_size is not None:
        hidden, width = config_value(config, "hidden"), head_size(config)
        if spec.hidden_size >= hidden or spec.hidden_size % width:
            raise DistillInputError(f"{where}.hidden_size: {spec.hidden_size} must be below the teacher's hidden "
                                    f"size {hidden} and a multiple of its attention head size {width}")


def build_student(recipe: Recipe, spec: StudentSpec, tasks: list[TaskData], teacher_dir: Path,
                  tokenizer: Any) -> StudentBuild:
    """The student `spec` describes, initialised from the teacher in `teacher_dir` (or from `spec.init_from`, the
    teacher giving its tasks and vocabulary)."""
    where = f"students.{spec.name}"
    pad_id = int(tokenizer.pad_token_id or 0)
    teacher = MultiTaskModel.load(teacher_dir, recipe.teacher.trust_remote_code)
    check_student_shape(spec, teacher.encoder.config)
    if spec.prunes or spec.hidden_size is not None or (spec.lora is not None and spec.lora.target_modules is None
                                                        and spec.init_from is None):
        anatomy(teacher.encoder, where)  # what takes the encoder apart needs to know its family
    from_teacher = spec.init_from is None
    keep = pick_layers(spec.layers, teacher.num_layers, spec.layer_strategy, f"{where}.layers") if from_teacher else []
    details: dict[str, Any] = {"layer_strategy": spec.layer_strategy if isinstance(spec.layers, int) else None}
    random_init = spec.hidden_size is not None and spec.hidden_init == "random"
    iterative = spec.prunes and spec.pruning.schedule == "iterative"
    stats = TeacherStats(teacher_dir, tasks)
    importance = None
    if (spec.prunes and not iterative) or (spec.hidden_size is not None and not random_init):
        importance = _teacher_importance(stats, teacher, tasks, pad_id, spec.pruning.examples).select(keep)
    covariance = None
    if spec.hidden_size is not None and not random_init:
        covariance = _teacher_covariance(stats, teacher, tasks, pad_id)
    vocab = None
    if spec.vocab is not None:
        table = teacher.encoder.get_input_embeddings().weight
        vocab = choose_vocab(spec.vocab, tasks, tokenizer, table.shape[0], f"{where}.vocab",
                             table.detach() if spec.vocab_dropped == "nearest" else None)
        details["vocab"] = _vocab_details(spec, teacher, tasks, tokenizer, vocab, pad_id, stats)
    if not from_teacher:
        student, pretrained = pretrained_student(recipe, spec, teacher, tokenizer)
        details.update(pretrained)
    else:
        student = _random_student(teacher, keep, spec, vocab) if random_init else keep_layers(teacher, keep)
    del teacher
    if vocab is not None and not random_init:
        prune_embeddings(student, vocab)
    if spec.hidden_size is not None and not random_init:
        assert covariance is not None and importance is not None
        kept = narrow_hidden(student, spec.hidden_size, projection(covariance, spec.hidden_size, spec.hidden_init),
                             importance.heads, f"{where}.hidden_size")
        importance = Importance(torch.stack([row[k] for row, k in zip(importance.heads, kept, strict=True)]),
                                importance.ffn)
    gradual = _prune(student, spec, importance, tasks, pad_id, details)
    config = student.encoder.config
    details.update(hidden_size=config_value(config, "hidden"),
                   hidden_init=spec.hidden_init if spec.hidden_size else None,
                   attention_heads=spec.heads or config_value(config, "heads"),
                   ffn=spec.ffn or config_value(config, "ffn"), vocab_size=int(config.vocab_size))
    if vocab is not None:
        accept_teacher_ids(student, vocab)
    if spec.embedding_bits is not None:
        snap_word_embeddings(student, spec.embedding_bits)
        details["embedding_bits"] = spec.embedding_bits
    hooks = [gradual.on_epoch_start] if gradual is not None else []
    first_eligible = spec.pruning.rounds if gradual is not None else 1
    if spec.qat_epochs:
        settings = _qat_settings(recipe, spec)
        hooks.append(qat_hook(settings))
        first_eligible = max(first_eligible, settings.start_epoch)
        details["qat"] = {"epochs": spec.qat_epochs, "from_epoch": settings.start_epoch,
                          "reduce_range": settings.reduce_range, "per_channel": settings.per_channel,
                          "activations": settings.activations}
    if spec.lora is not None:
        add_lora(student, spec.lora)
        details["lora"] = spec.lora.model_dump()
    log.info("student %s: layers %s, %s", spec.name, keep, {k: v for k, v in details.items() if k != "vocab"})
    return StudentBuild(student, keep, Path(teacher_dir), vocab, details, hooks, gradual, first_eligible)


def _prune(student: MultiTaskModel, spec: StudentSpec, importance: Importance | None, tasks: list[TaskData],
           pad_id: int, details: dict[str, Any]) -> IterativePruning | None:
    """Remove heads and FFN neurons now (one_shot), or set up the masks of iterative pruning (returned)."""
    where = f"students.{spec.name}"
    if not spec.prunes:
        return None
    if spec.pruning.schedule == "iterative":
        gradual = IterativePruning(tasks, pad_id, spec.pruning.examples, spec.pruning.rounds, spec.heads, spec.ffn)
        gradual.install(student, where)
        details["pruning"] = {"schedule": "iterative", "rounds": spec.pruning.rounds}
        return gradual
    assert importance is not None
    if spec.heads is not None:
        details["removed_heads"] = prune_heads(student, spec.heads, importance.heads, f"{where}.heads")
    if spec.ffn is not None:
        prune_ffn(student, spec.ffn, importance.ffn, f"{where}.ffn")
    return None


def _substitute(vocab: VocabMap, ids: np.ndarray) -> np.ndarray | int:
    """The teacher ids the student reads in place of `ids` (the kept substitutes, or [UNK])."""
    return vocab.teacher_unk if vocab.substitutes is None else vocab.substitutes[ids]


def _qat_settings(recipe: Recipe, spec: StudentSpec) -> QatSettings:
    """Fake quantization that matches the export: the same int8 preset (reduce_range) and per_channel choice."""
    export = recipe.export
    preset = configured_preset(export.isa)
    last_stage_epochs = recipe.distillation.stage_plan()[-1].epochs
    return QatSettings.last_epochs(spec.qat_epochs, last_stage_epochs, bool(preset["reduce_range"]),
                                   export.per_channel, export.dynamic_int8_activations() if spec.qat_activations
                                   else None, export.int8_embeddings)


def _random_student(teacher: MultiTaskModel, keep: list[int], spec: StudentSpec,
                    vocab: VocabMap | None) -> MultiTaskModel:
    """A freshly initialised student of the narrow shape (distillation is its only teacher)."""
    config = copy.deepcopy(teacher.encoder.config)
    hidden = config_value(config, "hidden")
    set_config_value(config, "ffn", config_value(config, "ffn") * spec.hidden_size // hidden)
    set_config_value(config, "heads", spec.hidden_size // head_size(config))
    set_config_value(config, "hidden", spec.hidden_size)
    set_config_value(config, "layers", len(keep))
    if vocab is not None:
        config.vocab_size = vocab.size
        if getattr(config, "pad_token_id", None) is not None:
            config.pad_token_id = int(vocab.id_map[config.pad_token_id])
    return MultiTaskModel(AutoModel.from_config(config), list(teacher.tasks.values()))


def _teacher_importance(stats: TeacherStats, teacher: MultiTaskModel, tasks: list[TaskData], pad_id: int,
                        examples: int) -> Importance:
    """The teacher's head and FFN importance on `examples` dev examples per task (measured once per teacher)."""
    def measure() -> dict[str, torch.Tensor]:
        log.info("scoring the teacher's heads and FFN neurons on dev data")
        scores = score_importance(teacher, tasks, pad_id, examples)
        return {"heads": scores.heads, "ffn": scores.ffn}

    stored = stats.tensors("importance", {"examples": examples}, measure)
    return Importance(stored["heads"], stored["ffn"])


def _teacher_covariance(stats: TeacherStats, teacher: MultiTaskModel, tasks: list[TaskData],
                        pad_id: int) -> torch.Tensor:
    """The covariance of the teacher's hidden states on train examples (measured once per teacher)."""
    def measure() -> dict[str, torch.Tensor]:
        return {"covariance": hidden_covariance(teacher, tasks, pad_id, HIDDEN_STAT_EXAMPLES)}

    return stats.tensors("hidden-covariance", {"examples": HIDDEN_STAT_EXAMPLES}, measure)["covariance"]


def _vocab_details(spec: StudentSpec, teacher: MultiTaskModel, tasks: list[TaskData], tokenizer: Any,
                   vocab: VocabMap, pad_id: int, stats: TeacherStats) -> dict[str, Any]:
    """Size, coverage per split, and the teacher's dev score with and without the dropped pieces (as [UNK])."""
    specials = sorted({int(i) for i in tokenizer.all_special_ids})
    effect = stats.json("vocab-effect", {"vocab": sha256_json(vocab.to_json())},
                        lambda: _teacher_vocab_effect(teacher, tasks, vocab, pad_id))
    return {"choice": spec.vocab, "size": vocab.size, "teacher_size": vocab.teacher_size,
            "coverage": coverage(vocab, tasks, specials), **effect}


def _teacher_vocab_effect(teacher: MultiTaskModel, tasks: list[TaskData], vocab: VocabMap,
                          pad_id: int) -> dict[str, Any]:
    """The teacher on dev as is, and with every dropped piece replaced by [UNK] (only affected examples rerun)."""
    dropped = np.ones(vocab.teacher_size, dtype=bool)
    dropped[vocab.kept] = False
    forward = torch_forward(teacher)
    full, kept, affected_total, total = {}, {}, 0, 0
    for task in tasks:
        name, dev = task.info.name, task.encoded["dev"]
        logits = predict(forward, name, dev, pad_id)
        affected = [i for i, ids in enumerate(dev.input_ids) if dropped[ids].any()]
        logits_kept = list(logits)
        if affected:
            unked = [np.where(dropped[dev.input_ids[i]], _substitute(vocab, dev.input_ids[i]), dev.input_ids[i])
                     for i in affected]
            rerun = predict(forward, name, EncodedSplit(unked, [dev.labels[i] for i in affected]), pad_id)
            for i, value in zip(affected, rerun, strict=True):
                logits_kept[i] = value
        full[name] = score(task.info, dev, logits)[task.info.metric]
        kept[name] = score(task.info, dev, logits_kept)[task.info.metric]
        affected_total, total = affected_total + len(affected), total + len(dev)
    return {"dev_examples_with_dropped_pieces": affected_total / max(total, 1),
            "teacher_dev_score": {"full_vocab": mean_score(full), "student_vocab": mean_score(kept),
                                  "per_task_full_vocab": full, "per_task_student_vocab": kept}}
