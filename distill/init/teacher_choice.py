"""Choosing the recipe's teacher section from --model: per-task checkpoints, one fine-tuned checkpoint used as
is, or a base model that distill fine-tunes; and the config the students are sized from."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.core.errors import DistillInputError
from distill.init.arguments import split_assignment
from distill.init.data_guess import TaskGuess, read_sample
from distill.recipe.loader import HUB_ID

log = logging.getLogger(__name__)

HEADED_SUFFIX = {"sequence_classification": "ForSequenceClassification",
                 "token_classification": "ForTokenClassification"}
# What the students are sized from when a hub model's config cannot be read (BERT-base).
ASSUMED_SHAPE = {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072,
                 "vocab_size": 30522}


@dataclass
class TeacherChoice:
    """The recipe's teacher section, why it was chosen, and the config the students are sized from."""

    section: dict[str, Any]
    note: str
    config: Any
    readable: bool = True  # False: a hub model whose config could not be read (the shape is assumed)


def _read_config(model: str, where: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise DistillInputError(f"{where}: {model}: no readable config.json: {exc}".replace("\n", " ")) from exc


def _local_model(value: str, where: str) -> Path | None:
    """An existing model directory, None for a hub id; a path that is not there is an error."""
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DistillInputError(f"{where}: {path} is a file; give a model directory or a hub id")
        return path
    if value.startswith((".", "/", "~")) or value.count("/") > 1 or not HUB_ID.match(value):
        raise DistillInputError(f"{where}: {value} not found (a model directory or a hub id)")
    return None


def _headed_for(config: Any, task_type: str) -> bool:
    """Whether a config is a fine-tuned checkpoint with a head for tasks of `task_type`."""
    suffix = HEADED_SUFFIX.get(task_type)
    return bool(suffix) and any(a.endswith(suffix) for a in getattr(config, "architectures", None) or [])


def _architecture(config: Any) -> str:
    names = getattr(config, "architectures", None) or []
    return names[0] if names else f"{getattr(config, 'model_type', 'unknown')} model (no architectures)"


def _labels_match(config: Any, labels: set[str]) -> bool:
    """Whether the checkpoint's id2label names the data's labels (as the per-task teacher matches them)."""
    names = [str(config.id2label[i]) for i in range(len(config.id2label))]
    return any({fold(n) for n in names} == {fold(n) for n in labels} and len({fold(n) for n in names}) == len(names)
               for fold in (str, str.lower))


def _task_labels(task: TaskGuess) -> set[str]:
    """The label names of a classification task's train data (every row, as `distill run` will see them)."""
    path = task.files.get("train", task.files.get("all"))
    assert path is not None
    values = read_sample(path, rows=None)[task.label_field]
    flat = [v for row in values if row is not None for v in (row if isinstance(row, list) else [row])]
    return {str(v) for v in flat}


def choose_teacher(models: list[str], tasks: list[TaskGuess], base_dir: Path) -> TeacherChoice:
    """The teacher section: per-task checkpoints as given, one fine-tuned checkpoint for its one task, or a
    base model that distill fine-tunes."""
    if any(split_assignment(m)[0] is not None for m in models):
        return _per_task_teacher(models, tasks, base_dir)
    if len(models) != 1:
        raise DistillInputError("--model: give one model, or one TASK=DIR per task")
    value = models[0]
    local = _local_model(value, "--model")
    if local is None:
        return _hub_teacher(value, tasks)
    config = _read_config(str(local), "--model")
    written = _relative(local, base_dir)
    task = tasks[0]
    if len(tasks) == 1 and _headed_for(config, task.type):
        if _labels_match(config, _task_labels(task)):
            return TeacherChoice({"per_task": {task.name: written}},
                                 f"a fine-tuned {_architecture(config)} whose labels are the data's: used as is",
                                 config)
        return TeacherChoice({"base_model": written},
                             f"a fine-tuned {_architecture(config)}, but its id2label names other labels than the "
                             f"data's: distill fine-tunes its encoder (to keep the head, give config.json the "
                             f"data's label names and write per_task: {{{task.name}: {written}}})", config)
    why = (f"a fine-tuned {_architecture(config)}; these tasks need one multi-task teacher"
           if any(a.endswith(("ForSequenceClassification", "ForTokenClassification"))
                  for a in getattr(config, "architectures", None) or [])
           else f"an encoder without a task head ({_architecture(config)})")
    return TeacherChoice({"base_model": written}, f"{why}: distill fine-tunes it on the tasks first", config)


def _per_task_teacher(models: list[str], tasks: list[TaskGuess], base_dir: Path) -> TeacherChoice:
    names = [t.name for t in tasks]
    given = {}
    for value in models:
        name, location = split_assignment(value)
        if name is None:
            raise DistillInputError(f"--model: {value!r}: with per-task checkpoints, give every one as TASK=DIR")
        if name not in names:
            raise DistillInputError(f"--model: no task {name!r} in --data (tasks: {', '.join(names)})")
        local = _local_model(location, f"--model {name}")
        given[name] = _relative(local, base_dir) if local is not None else location
    missing = [n for n in names if n not in given]
    if missing:
        raise DistillInputError(f"--model: no checkpoint for task(s) {', '.join(missing)}; give TASK=DIR for each")
    first = models[0].partition("=")[2]
    config = _read_config(first, "--model")
    return TeacherChoice({"per_task": {n: given[n] for n in names}},
                         "one fine-tuned checkpoint per task, as given", config)


def _hub_teacher(model: str, tasks: list[TaskGuess]) -> TeacherChoice:
    """A hub id: its config when it can be read (cached or online), else BERT-base's shape assumed."""
    from transformers import AutoConfig, BertConfig

    try:
        config = AutoConfig.from_pretrained(model)
    except Exception as exc:  # offline, unknown id, no access: the recipe is still written
        log.debug("could not read the config of %s: %s", model, exc)
        return TeacherChoice({"base_model": model},
                             "a hub id whose config could not be read here: the students are sized for BERT-base "
                             "(12 layers, hidden 768, FFN 3072, 30,522 word pieces); run `distill check` where the "
                             "model can be read, and resize them to it", BertConfig(**ASSUMED_SHAPE), readable=False)
    if len(tasks) == 1 and _headed_for(config, tasks[0].type) and _labels_match(config, _task_labels(tasks[0])):
        return TeacherChoice({"per_task": {tasks[0].name: model}},
                             f"a fine-tuned {_architecture(config)} on the hub whose labels are the data's: used as is",
                             config)
    return TeacherChoice({"base_model": model}, f"a hub model ({_architecture(config)}): distill fine-tunes it on "
                                                "the tasks first", config)


def _relative(path: Path, base_dir: Path) -> str:
    """`path` as the recipe writes it: relative to the recipe's directory, starting with ./ or ../"""
    relative = os.path.relpath(path.resolve(), base_dir.resolve())
    return relative if relative.startswith("..") else f"./{relative}"
