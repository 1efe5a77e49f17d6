"""The starter recipe as YAML text, with a comment on every guessed value saying from what."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import yaml

from distill.init.data_guess import TaskGuess
from distill.init.student_plan import StudentPlan, _layers
from distill.init.teacher_choice import TeacherChoice, _relative
from distill.model.encoder import config_sizes, config_value, usable_positions

MAX_LENGTH = 128


def _flow(value: Any) -> str:
    """One YAML value on one line (flow style), quoted where YAML needs it."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True).strip() \
        .removesuffix("...").strip()


def _files_value(files: dict[str, Path], base_dir: Path) -> str | dict[str, str]:
    if set(files) == {"all"}:
        return _relative(files["all"], base_dir)
    return {split: _relative(path, base_dir) for split, path in files.items()}


def _files_note(files: dict[str, Path]) -> str:
    if set(files) == {"all"}:
        return "one file: split 80/10/10 into train/dev/test (split_ratios)"
    missing = [s for s in ("dev", "test") if s not in files]
    return f"{', '.join(missing)} carved from train (split_ratios)" if missing else "train, dev and test files"


def _task_lines(task: TaskGuess, base_dir: Path) -> list[tuple[str, str]]:
    lines = [(f"  - name: {_flow(task.name)}", ""),
             (f"    type: {task.type}", task.notes["type"]),
             (f"    source: {_flow({'files': _files_value(task.files, base_dir)})}", _files_note(task.files)),
             (f"    text_field: {_flow(task.text_field)}", task.notes["text_field"]),
             (f"    label_field: {_flow(task.label_field)}", task.notes["label_field"])]
    if task.label_separator is not None:
        lines.append((f"    label_separator: {_flow(task.label_separator)}", "separates the label names in a cell"))
    return lines


def _teacher_lines(teacher: TeacherChoice) -> list[tuple[str, str]]:
    if "per_task" in teacher.section:
        lines = [("  per_task:", teacher.note)]
        lines += [(f"    {_flow(name)}: {_flow(path)}", "") for name, path in teacher.section["per_task"].items()]
        return lines
    return [(f"  base_model: {_flow(teacher.section['base_model'])}", teacher.note),
            ("  epochs: 3", "fine-tuning the teacher (stage teacher)"),
            ("  batch_size: 32", ""),
            ("  learning_rate: 5.0e-05", "")]


def _shape(config: Any) -> str:
    """The teacher's sizes in words: 12 layers, hidden 768, 12 heads, FFN 3072, 30,522 word pieces."""
    size = config_sizes(config)
    return (f"{_layers(size['layers'])}, hidden {size['hidden']}, {size['heads']} heads, FFN {size['ffn']}, "
            f"{size['vocab']:,} word pieces")


# a teacher this wide is base-size: a smaller pretrained start (init_from) is worth a line in the sweep
BASE_HIDDEN = 768
STARTED_STUDENT_HINT = [
    "  # A base-size teacher's layers keep little of its pretraining once narrowed: a student started from a",
    "  # smaller pretrained encoder whose tokenizer is of the teacher's kind often keeps more (docs/students.md,",
    "  # step 8; `distill check` says whether the tokenizers match), e.g. for BERT-uncased word pieces:",
    "  # - {name: p3, layers: 3, init_from: sentence-transformers/all-MiniLM-L6-v2}",
]


def _student_lines(students: list[StudentPlan], teacher: TeacherChoice) -> list[tuple[str, str]]:
    assumed = "assumed " if not teacher.readable else ""
    lines = [("students:", f"a sweep sized from the teacher ({assumed}{_shape(teacher.config)})")]
    for plan in students:
        lines.append((f"  - name: {_flow(plan.name)}", plan.note))
        lines += [(f"    {key}: {_flow(value)}", "") for key, value in plan.spec.items()]
    if config_value(teacher.config, "hidden", default=0) >= BASE_HIDDEN:
        lines += [(text, "") for text in STARTED_STUDENT_HINT]
    return lines


def max_length_for(config: Any) -> tuple[int, str]:
    """128 tokens, or fewer when the teacher has fewer positions (RoBERTa's first ones are reserved); and why."""
    positions = usable_positions(config)
    if not positions:
        return MAX_LENGTH, "tokens per example; longer texts are truncated"
    if positions >= MAX_LENGTH:
        return MAX_LENGTH, f"tokens per example; longer texts are truncated (the teacher takes up to {positions})"
    return max(9, positions), f"tokens per example: all the teacher's {positions} positions"


def _commented(body: list[tuple[str, str]], line_limit: int = 110) -> list[str]:
    """Each line with its note: beside it in one column, or on a comment line above it when too long."""
    width = min(44, max(len(text) for text, note in body if note))
    lines = []
    for text, note in body:
        beside = f"{text.ljust(width)}  # {note}"
        if not note:
            lines.append(text)
        elif len(beside) <= line_limit:
            lines.append(beside)
        else:
            indent = " " * (len(text) - len(text.lstrip(" ")))
            lines += [f"{indent}# {part}" for part in textwrap.wrap(note, line_limit - len(indent) - 2,
                                                                      break_on_hyphens=False)]
            lines.append(text)
    return lines


def render_recipe(tasks: list[TaskGuess], teacher: TeacherChoice, students: list[StudentPlan], base_dir: Path,
                  out: Path, command: str) -> str:
    """The recipe as commented YAML text."""
    header = [
        f"# Starter recipe written by `{command}`.",
        "# Values guessed from the data and the model carry a comment saying from what: check them. Relative paths",
        "# start at this file's directory. Then:",
        f"#   distill check {out}",
        f"#   distill run {out} --out runs/mine",
    ]
    max_length, why = max_length_for(teacher.config)
    body: list[tuple[str, str]] = [("seed: 13", "draws the train/dev/test split and seeds training"),
                                   (f"max_length: {max_length}", why), ("tasks:", "")]
    for task in tasks:
        body += _task_lines(task, base_dir)
    body += [("teacher:", ""), *_teacher_lines(teacher), *_student_lines(students, teacher)]
    body += [("distillation:", "the students learn from the teacher's outputs (schema defaults)"),
             ("  epochs: 3", ""), ("  batch_size: 32", ""), ("  learning_rate: 1.0e-04", ""),
             ("export:", "ONNX fp32 and dynamic int8 for the teacher and every student"),
             ("  fp32: true", ""), ("  int8: true", ""), ("  quantization: [dynamic]", ""),
             ("bench:", "latency at max_length tokens, size and score of every artifact"),
             ("  batch_sizes: [1, 8]", "")]
    return "\n".join(header + _commented(body)) + "\n"
