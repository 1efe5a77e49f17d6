"""`distill init`: a commented starter recipe from a model and data files, task types guessed from the data.

The recipe is rendered as YAML text with a comment on every guessed value, validated by the recipe loader and
checked like `distill check` (teacher, tokenizer, students' shapes, data) before it is written.
"""

from __future__ import annotations

import logging
import math
import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill.core.errors import DistillInputError
from distill.core.fileio import atomic_write_text
from distill.model.encoder import config_value, find_anatomy
from distill.recipe import Recipe, StudentSpec, parse_recipe
from distill.recipe.loader import HUB_ID

log = logging.getLogger(__name__)

SAMPLE_ROWS = 1000
MAX_CLASSES = 100
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SPLIT_FILE_STEMS = {"train": ("train",), "dev": ("validation", "dev", "valid", "val"), "test": ("test",)}
TEXT_NAMES = ("text", "sentence", "review", "content", "tokens", "words", "document", "body", "question", "query",
              "utterance", "comment", "tweet")
LABEL_NAMES = ("label", "labels", "ner_tags", "tags", "target", "targets", "score", "class", "category", "y")
ID_NAMES = ("id", "idx", "index", "guid", "uid")
TASK_TYPES = ("sequence_classification", "token_classification", "multi_label_classification", "regression")
MULTI_LABEL_SEPARATORS = (",", "|", ";")
HEADED_SUFFIX = {"sequence_classification": "ForSequenceClassification",
                 "token_classification": "ForTokenClassification"}
# What the students are sized from when a hub model's config cannot be read (BERT-base).
ASSUMED_SHAPE = {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072,
                 "vocab_size": 30522}
MAX_LENGTH = 128
POSITION_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert")  # position ids start after the padding id
VOCAB_STUDENT_MIN_VOCAB = 15000
VOCAB_STUDENT_SIZE = 12000


class CannotGuess(Exception):
    """The data does not say what a task's type or fields are (the caller adds the file and the flag)."""


@dataclass
class TaskGuess:
    """One task as the recipe will state it, with a note on how each guessed value was found."""

    name: str
    files: dict[str, Path]
    type: str
    text_field: str
    label_field: str
    label_separator: str | None = None
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class TeacherChoice:
    """The recipe's teacher section, why it was chosen, and the config the students are sized from."""

    section: dict[str, Any]
    note: str
    config: Any
    readable: bool = True  # False: a hub model whose config could not be read (the shape is assumed)


@dataclass
class StudentPlan:
    name: str
    spec: dict[str, Any]
    note: str


@dataclass
class InitOptions:
    """What `distill init` was given on the command line."""

    models: list[str]
    data: list[str]
    out: Path = Path("recipe.yaml")
    force: bool = False
    text_fields: list[str] = field(default_factory=list)
    label_fields: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the arguments


def split_assignment(value: str) -> tuple[str | None, str]:
    """`TASK=VALUE` as (TASK, VALUE); a value without a task name before '=' as (None, value)."""
    name, sep, rest = value.partition("=")
    if sep and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) and rest:
        return name, rest
    return None, value


def task_name_from(path: Path) -> str:
    """A valid task name from a file stem or directory name (letters, digits, '_', '.', '-')."""
    stem = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).lstrip("_.-")[:64].rstrip(".-")
    return name or "task"


def data_files(path: Path) -> dict[str, Path]:
    """A task's files: one file as {"all": FILE}, or a directory's train/dev/test files by their names."""
    if path.is_dir():
        found = {}
        for split, stems in SPLIT_FILE_STEMS.items():
            for candidate in sorted(path.iterdir()):
                if candidate.stem.lower() in stems and candidate.suffix.lower() in FORMATS and split not in found:
                    found[split] = candidate
        if "train" not in found:
            raise DistillInputError(f"--data: {path} has no train file (train.csv, train.jsonl, train.json or "
                                    "train.parquet); give a file, or a directory with train/validation/test files")
        return found
    if not path.is_file():
        raise DistillInputError(f"--data: {path} not found")
    if path.suffix.lower() not in FORMATS:
        raise DistillInputError(f"--data: {path}: unknown data format {path.suffix or '(no suffix)'!r}; give a "
                                ".csv, .json, .jsonl or .parquet file")
    return {"all": path}


def parse_data(values: list[str]) -> dict[str, dict[str, Path]]:
    """Each task's files from the --data values (`FILE`, `DIR` or `TASK=FILE`), in the order given."""
    tasks: dict[str, dict[str, Path]] = {}
    for value in values:
        name, location = split_assignment(value)
        path = Path(location).expanduser()
        files = data_files(path)
        name = name or task_name_from(path)
        if name in tasks:
            raise DistillInputError(f"--data: two files for task {name!r}; name them apart with TASK=FILE")
        tasks[name] = files
    return tasks


def per_task_values(values: list[str], tasks: list[str], flag: str) -> dict[str, str]:
    """`[TASK=]VALUE` flags as {task: value}: a value without a task applies to every task."""
    chosen: dict[str, str] = {}
    for value in values:
        name, rest = split_assignment(value)
        if name is not None and name not in tasks:
            raise DistillInputError(f"{flag}: no task {name!r} (tasks: {', '.join(tasks)})")
        chosen.update({name: rest} if name else dict.fromkeys(tasks, rest))
    return chosen


# ---------------------------------------------------------------- guessing from the data


def read_sample(path: Path, rows: int | None = SAMPLE_ROWS) -> dict[str, list]:
    """The first `rows` rows (None: all) of a data file, column by column, read as `distill run` reads it
    (class-label numbers of a typed dataset become their names)."""
    import datasets

    datasets.disable_progress_bars()
    fmt = FORMATS[path.suffix.lower()]
    try:
        table = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as exc:
        raise DistillInputError(f"{path}: could not read as {fmt}: {exc}".replace("\n", " ")) from exc
    if rows is not None:
        table = table.select(range(min(rows, len(table))))
    columns = {}
    for name in table.column_names:
        feature = table.features[name]
        names = getattr(feature, "names", None) or getattr(getattr(feature, "feature", None), "names", None)
        values = list(table[name])
        if names:
            values = [[names[i] for i in v] if isinstance(v, list) else names[v] for v in values]
        columns[name] = values
    if not columns or not any(columns.values()):
        raise DistillInputError(f"{path}: no rows to learn from")
    return columns


def _is_words(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(word, str) for word in value)


def _text_kind(values: list) -> str | None:
    """'text' for a column of strings, 'words' for a column of word lists, else None."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, str) for v in present):
        return "text"
    if present and all(_is_words(v) for v in present):
        return "words"
    return None


def _mean_length(values: list) -> float:
    present = [v for v in values if v is not None]
    return sum(len(v) if isinstance(v, str) else len(" ".join(v)) for v in present) / max(len(present), 1)


def _by_name(columns: list[str], names: tuple[str, ...], exclude: set[str]) -> str | None:
    lowered = {c.lower(): c for c in columns if c not in exclude}
    return next((lowered[n] for n in names if n in lowered), None)


def _id_like(column: str) -> bool:
    return column.lower() in ID_NAMES or column.lower().startswith("unnamed")


def guess_fields(sample: dict[str, list], text_field: str | None = None,
                 label_field: str | None = None) -> tuple[str, str, dict[str, str]]:
    """The text and label columns (given ones kept), with a note on how each was found."""
    columns = list(sample)
    notes = {}
    for given, key in ((text_field, "text_field"), (label_field, "label_field")):
        if given is not None and given not in sample:
            raise CannotGuess(f"no column {given!r} ({key}); columns are {columns}")
        if given is not None:
            notes[key] = "given"
    label = label_field or _by_name(columns, LABEL_NAMES, {text_field} if text_field else set())
    if label and "label_field" not in notes:
        notes["label_field"] = f"guessed: the column named {label!r}"
    text = text_field or _by_name([c for c in columns if _text_kind(sample[c])], TEXT_NAMES,
                                  {label} if label else set())
    if text and "text_field" not in notes:
        notes["text_field"] = f"guessed: a column of {_text_kind(sample[text])} named {text!r}"
    if text is None:
        candidates = [c for c in columns if c != label and not _id_like(c) and _text_kind(sample[c])]
        if not candidates:
            raise CannotGuess(f"no column of text or word lists (columns are {columns})")
        text = max(candidates, key=lambda c: _mean_length(sample[c]))
        notes["text_field"] = (f"guessed: the column of {_text_kind(sample[text])} with the longest values "
                               f"(of {', '.join(candidates)})" if len(candidates) > 1 else
                               f"guessed: the only column of {_text_kind(sample[text])}")
    if label is None:
        rest = [c for c in columns if c != text and not _id_like(c)]
        if len(rest) != 1:
            raise CannotGuess(f"cannot tell which column holds the labels (columns are {columns})")
        label = rest[0]
        notes["label_field"] = f"guessed: the one column besides the text ({text!r})"
    if label == text:
        raise CannotGuess(f"the text and the labels are both column {text!r}")
    return text, label, notes


def _few(count: int, rows: int) -> bool:
    """Whether `count` distinct values in `rows` rows look like a set of classes."""
    return count <= min(MAX_CLASSES, max(2, rows // 2))


def guess_type(labels: list, texts: list) -> tuple[str, str | None, str]:
    """(task type, multi-label separator or None, why) from a sample of the label and text columns."""
    present = [(t, v) for t, v in zip(texts, labels, strict=True) if v is not None]
    values = [v for _, v in present]
    rows = len(values)
    if not values:
        raise CannotGuess("the label column is empty")
    if all(isinstance(v, list) for v in values):
        if all(isinstance(t, list) and len(t) == len(v) for t, v in present):
            return "token_classification", None, "a list of tags per row, one per word"
        return "multi_label_classification", None, "a list of labels per row"
    if any(isinstance(v, bool) for v in values):
        raise CannotGuess("labels are true/false; write them as names (e.g. yes/no) or numbers (0/1)")
    if all(isinstance(v, int | float) for v in values):
        distinct = len(set(values))
        if not all(float(v).is_integer() for v in values):
            return "regression", None, "numbers with fractions"
        if _few(distinct, rows):
            return "sequence_classification", None, f"{distinct} distinct whole numbers"
        return "regression", None, f"{distinct} distinct whole numbers in {rows} rows: too many for classes"
    if all(isinstance(v, str) for v in values):
        for separator in MULTI_LABEL_SEPARATORS:
            if any(separator in v for v in values):
                names = {n.strip() for v in values for n in v.split(separator) if n.strip()}
                if _few(len(names), rows):
                    return ("multi_label_classification", separator,
                            f"names separated by {separator!r} ({len(names)} distinct)")
        distinct = len(set(values))
        if _few(distinct, rows):
            return "sequence_classification", None, f"{distinct} distinct names"
        raise CannotGuess(f"{distinct} distinct label names in {rows} rows: too many to be classes")
    raise CannotGuess("the labels mix kinds of value (names, numbers, lists)")


def guess_task(name: str, files: dict[str, Path], text_field: str | None = None, label_field: str | None = None,
               task_type: str | None = None) -> TaskGuess:
    """Type and fields of one task from the first rows of its (train) file."""
    path = files.get("train", files.get("all"))
    assert path is not None
    sample = read_sample(path)
    rows = len(next(iter(sample.values())))
    try:
        text, label, notes = guess_fields(sample, text_field, label_field)
        if task_type is None:
            task_type, separator, why = guess_type(sample[label], sample[text])
            notes["type"] = f"guessed: column {label!r} holds {why} (first {rows} rows)"
        else:
            separator, notes["type"] = None, "given"
    except CannotGuess as exc:
        raise DistillInputError(f"{path}: {exc}; pass --text-field {name}=COLUMN, --label-field {name}=COLUMN "
                                f"and/or --type {name}=TYPE") from exc
    if task_type == "token_classification" and _text_kind(sample[text]) != "words":
        raise DistillInputError(f"{path}: token_classification needs a list of words per row in {text!r} (JSON "
                                f"lines, e.g. {{\"tokens\": [...], \"tags\": [...]}})")
    return TaskGuess(name, files, task_type, text, label, separator, notes)


# ---------------------------------------------------------------- the teacher


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


# ---------------------------------------------------------------- the students


def _int8_size(config: Any, layers: int, ffn: int, vocab: int, embedding_bits: int = 8) -> str:
    """Rough int8 size: word embeddings at `embedding_bits`, each layer's attention and FFN weights at a byte."""
    hidden = config_value(config, "hidden")
    family = find_anatomy(config)
    ffn_matrices = 3 if family is not None and family.ffn_glu else 2
    size = vocab * hidden * embedding_bits / 8 + layers * (4 * hidden * hidden + ffn_matrices * hidden * ffn)
    return f"~{size / 1e6:.1f} MB int8" if size >= 1e5 else f"~{size / 1e3:.0f} KB int8"


def _layers(count: int) -> str:
    return f"{count} layer{'s' if count != 1 else ''}"


def plan_students(config: Any) -> list[StudentPlan]:
    """A sweep of 3-4 students sized from the teacher: half the layers (rounded up); a third with the FFN halved;
    the same with 4-bit embeddings; a quarter (at least 2) with a 12,000-piece vocabulary (large vocabularies only).
    Each passes the student-shape check against the teacher's config."""
    from students.build import check_student_shape

    layers = config_value(config, "layers")
    ffn = config_value(config, "ffn", default=0)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    half, third, quarter = (layers + 1) // 2, max(1, layers // 3), min(layers, max(2, layers // 4))
    prunable = find_anatomy(config) is not None and ffn >= 2
    narrow = ffn // 2 if prunable else ffn
    small = f"l{third}-f{narrow}" if prunable else f"l{third}"
    small_spec: dict[str, Any] = {"layers": third, "ffn": narrow} if prunable else {"layers": third}
    shrink = f"FFN {ffn} -> {narrow} (by importance)" if prunable else "full width (FFN pruning needs a known family)"
    plans = [
        StudentPlan(f"l{half}", {"layers": half}, f"{half} of {_layers(layers)}, full width: the accuracy end "
                    f"({_int8_size(config, half, ffn, vocab)})"),
        StudentPlan(small, small_spec, f"{_layers(third)}, {shrink} ({_int8_size(config, third, narrow, vocab)})"),
        StudentPlan(f"{small}-e4", {**small_spec, "embedding_bits": 4},
                    f"the same with 4-bit word embeddings ({_int8_size(config, third, narrow, vocab, 4)})"),
    ]
    if vocab > VOCAB_STUDENT_MIN_VOCAB:
        plans.append(StudentPlan(f"l{quarter}-v12k", {"layers": quarter, "vocab": VOCAB_STUDENT_SIZE},
                                 f"{_layers(quarter)}, the {VOCAB_STUDENT_SIZE:,} most frequent of {vocab:,} word "
                                 f"pieces ({_int8_size(config, quarter, ffn, VOCAB_STUDENT_SIZE)})"))
    unique = list({plan.name: plan for plan in plans}.values())
    for plan in unique:
        check_student_shape(StudentSpec(name=plan.name, **plan.spec), config)
    return unique


# ---------------------------------------------------------------- the YAML


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
    size = {key: config_value(config, key, default=0) for key in ("layers", "hidden", "heads", "ffn")}
    return (f"{_layers(size['layers'])}, hidden {size['hidden']}, {size['heads']} heads, FFN {size['ffn']}, "
            f"{int(getattr(config, 'vocab_size', 0) or 0):,} word pieces")


def _student_lines(students: list[StudentPlan], teacher: TeacherChoice) -> list[tuple[str, str]]:
    assumed = "assumed " if not teacher.readable else ""
    lines = [("students:", f"a sweep sized from the teacher ({assumed}{_shape(teacher.config)})")]
    for plan in students:
        lines.append((f"  - name: {_flow(plan.name)}", plan.note))
        lines += [(f"    {key}: {_flow(value)}", "") for key, value in plan.spec.items()]
    return lines


def max_length_for(config: Any) -> tuple[int, str]:
    """128 tokens, or fewer when the teacher has fewer positions (RoBERTa's first ones are reserved); and why."""
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return MAX_LENGTH, "tokens per example; longer texts are truncated"
    if getattr(config, "model_type", "") in POSITION_OFFSET_TYPES:
        positions -= int(getattr(config, "pad_token_id", 0) or 0) + 1
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


# ---------------------------------------------------------------- the command


def write_starter_recipe(options: InitOptions) -> list[str]:
    """Guess, check and write the starter recipe; returns the lines to print."""
    out = options.out
    if out.is_dir():
        raise DistillInputError(f"--out: {out} is a directory; give the recipe file to write")
    if out.exists() and not options.force:
        raise DistillInputError(f"--out: {out} exists; pass --force to overwrite it")
    files = parse_data(options.data)
    names = list(files)
    texts = per_task_values(options.text_fields, names, "--text-field")
    labels = per_task_values(options.label_fields, names, "--label-field")
    types = per_task_values(options.types, names, "--type")
    unknown = sorted(set(types.values()) - set(TASK_TYPES))
    if unknown:
        raise DistillInputError(f"--type: unknown task type {unknown[0]!r}; types are {', '.join(TASK_TYPES)}")
    tasks = [guess_task(n, files[n], texts.get(n), labels.get(n), types.get(n)) for n in names]
    base_dir = out.expanduser().resolve().parent
    teacher = choose_teacher(options.models, tasks, base_dir)
    students = plan_students(teacher.config)
    text = render_recipe(tasks, teacher, students, base_dir, out, _command(options))
    base_dir.mkdir(parents=True, exist_ok=True)
    recipe = parse_recipe(yaml.safe_load(text), base_dir, origin=f"{out} (as written)")
    checked = _check(recipe, teacher)
    atomic_write_text(out, text)
    summary = ", ".join(f"{t.name} ({t.type}: {t.text_field} -> {t.label_field})" for t in tasks)
    return [f"wrote {out}: task(s) {summary}; teacher {next(iter(teacher.section))}; students "
            f"{', '.join(s.name for s in students)}", *checked,
            f"next: distill run {out} --out runs/mine"]


def _check(recipe: Recipe, teacher: TeacherChoice) -> list[str]:
    """Check the recipe as `distill check` does; without a readable teacher, only its data."""
    if not teacher.readable:
        from distill.data.tasks import load_tasks

        load_tasks(recipe)
        return [f"the data reads; the teacher {teacher.section['base_model']} could not be read here: run "
                "`distill check` where it can be, and adjust the students to its size"]
    from distill.pipeline import check_inputs

    _, tasks = check_inputs(recipe)
    return [f"checked: task {t.info.name}: "
            + (f"{len(t.info.labels)} labels, " if t.info.labels else "")
            + ", ".join(f"{split} {len(data)}" for split, data in t.encoded.items()) for t in tasks]


def _command(options: InitOptions) -> str:
    parts = ["distill init", *(f"--model {m}" for m in options.models), *(f"--data {d}" for d in options.data)]
    parts += [f"--text-field {v}" for v in options.text_fields] + [f"--label-field {v}" for v in options.label_fields]
    parts += [f"--type {v}" for v in options.types]
    return " ".join(parts)
