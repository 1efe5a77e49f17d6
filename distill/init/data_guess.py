"""Reading a sample of each task's data and guessing its fields and task type from it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from distill.core.errors import DistillInputError
from distill.core.task_types import TaskType
from distill.init.arguments import split_assignment

SAMPLE_ROWS = 1000
MAX_CLASSES = 100
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SPLIT_FILE_STEMS = {"train": ("train",), "dev": ("validation", "dev", "valid", "val"), "test": ("test",)}
TEXT_NAMES = ("text", "sentence", "review", "content", "tokens", "words", "document", "body", "question", "query",
              "utterance", "comment", "tweet")
LABEL_NAMES = ("label", "labels", "ner_tags", "tags", "target", "targets", "score", "class", "category", "y")
ID_NAMES = ("id", "idx", "index", "guid", "uid")
TASK_TYPES = get_args(TaskType)
MULTI_LABEL_SEPARATORS = (",", "|", ";")


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


# ---------------------------------------------------------------- the data files


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
