"""Task data: load each task's examples, split them, check labels, and tokenise them for a model."""

from __future__ import annotations

import hashlib
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.core.errors import DistillInputError
from distill.core.logs import logger_level
from distill.demo.assets import DEMO_SOURCES
from distill.recipe import SPLITS, Recipe, TaskSpec
from distill.recipe.tasks import TRANSFER

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


@dataclass
class TaskInfo:
    """What a model needs to know about a task; saved as tasks.json next to every model."""

    name: str
    type: str
    labels: list[str]
    metric: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "labels": self.labels, "metric": self.metric}

    @property
    def token_level(self) -> bool:
        """True when the task labels every token (its logits are [tokens, C] per example)."""
        return self.type == "token_classification"

    @property
    def num_outputs(self) -> int:
        """The width of the task's head: one score per label, one value for regression."""
        return 1 if self.type == "regression" else len(self.labels)


@dataclass
class Split:
    """Raw examples of one split: texts (str, or a list of words) and labels (str, or a list of tags)."""

    texts: list
    labels: list
    rows: list[int]
    origin: str


@dataclass
class EncodedSplit:
    """Token ids per example and labels: a class id per example (sequence), an int array per token (-100 =
    ignored), a float32 multi-hot array per example (multi-label), or a float per example (regression)."""

    input_ids: list[np.ndarray]
    labels: list
    words: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TaskData:
    info: TaskInfo
    splits: dict[str, Split]
    encoded: dict[str, EncodedSplit] = field(default_factory=dict)


def _read_source(task: TaskSpec, recipe: Recipe) -> dict[str, Split]:
    """Examples per split as the source provides them (one pool under 'all' when it has no splits)."""
    source = task.source
    if source.demo:
        data = DEMO_SOURCES[source.demo]()
        return {"all": Split(data["text"], data["label"], list(range(1, len(data["text"]) + 1)), f"demo:{source.demo}")}

    import datasets

    datasets.disable_progress_bars()
    if source.files:
        files = source.files if isinstance(source.files, dict) else {"all": source.files}
        resolved = {}
        for split, name in files.items():
            path = Path(recipe.resolve(name, f"tasks.{task.name}.source.files", hub=False))
            if not path.is_file():
                raise DistillInputError(f"tasks.{task.name}.source.files: {path} is not a file")
            resolved[split] = path
        _check_transfer_apart(task, {split: path.resolve() for split, path in resolved.items()}, "source.files")
        out = {}
        for split, path in resolved.items():
            fmt = source.format or _format_of(path)
            if fmt in ("csv", "json"):
                _check_utf8(path)
            try:
                with logger_level(logging.CRITICAL, "datasets"):  # its error log, sometimes a traceback, is ours
                    table = datasets.load_dataset(fmt, data_files=str(path), split="train")
            except Exception as exc:
                raise DistillInputError(f"{path}: could not read as {fmt}: {exc}".replace("\n", " ")) from exc
            out[split] = _columns(task, table, str(path), labelled=split != TRANSFER)
        return out

    splits = task.splits or {"train": "train", "dev": "validation", "test": "test"}
    _check_transfer_apart(task, splits, "splits")
    try:
        dataset = datasets.load_dataset(source.hub, source.hub_config)
    except Exception as exc:
        raise DistillInputError(f"tasks.{task.name}.source.hub: could not load {source.hub!r}: {exc}") from exc
    out = {}
    for ours, theirs in splits.items():
        if theirs in dataset:
            out[ours] = _columns(task, dataset[theirs], f"{source.hub}[{theirs}]", labelled=ours != TRANSFER)
    if "train" not in out:
        raise DistillInputError(f"tasks.{task.name}.splits: {source.hub!r} has no split named {splits.get('train')!r}")
    if TRANSFER in splits and TRANSFER not in out:
        raise DistillInputError(f"tasks.{task.name}.splits.transfer: {source.hub!r} has no split named "
                                f"{splits[TRANSFER]!r}; its splits are {sorted(dataset)}")
    return out


def _check_transfer_apart(task: TaskSpec, sources: dict[str, Any], key: str) -> None:
    """Transfer examples are never the labelled splits' own (students would train on the test texts)."""
    if TRANSFER not in sources:
        return
    same = [split for split, where in sources.items() if split != TRANSFER and where == sources[TRANSFER]]
    if same:
        raise DistillInputError(f"tasks.{task.name}.{key}.transfer: the same data as the {same[0]} split; give "
                                "unlabelled examples of their own")


def _check_utf8(path: Path) -> None:
    """Text data files are read as UTF-8; a line that is not is named here rather than deep inside pyarrow."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DistillInputError(f"{path}: line {number} is not valid UTF-8 (byte {exc.start + 1} of the "
                                        "line); save the file as UTF-8") from exc


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    formats = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
    if suffix not in formats:
        raise DistillInputError(f"{path}: unknown data format {suffix!r}; set source.format to csv, json or parquet")
    return formats[suffix]


def _columns(task: TaskSpec, table: Any, origin: str, labelled: bool = True) -> Split:
    """Texts and labels of a table (`labelled` False: texts only, as the transfer split needs)."""
    fields = (("text_field", task.text_field), ("label_field", task.label_field))
    for key, column in fields if labelled else fields[:1]:
        if column not in table.column_names:
            raise DistillInputError(
                f"{origin}: no column {column!r} (tasks.{task.name}.{key}); columns are {table.column_names}"
            )
    if not labelled:
        return Split(list(table[task.text_field]), [None] * len(table), list(range(1, len(table) + 1)), origin)
    labels = table[task.label_field]
    feature = table.features[task.label_field]
    names = getattr(feature, "names", None) or getattr(getattr(feature, "feature", None), "names", None)
    if names:
        labels = [[names[i] for i in v] if isinstance(v, list) else names[v] for v in labels]
    return Split(list(table[task.text_field]), list(labels), list(range(1, len(table) + 1)), origin)


def _carve(pool: Split, ratios: tuple[float, ...], names: tuple[str, ...], seed: str) -> dict[str, Split]:
    order = list(range(len(pool.texts)))
    random.Random(seed).shuffle(order)
    out, start = {}, 0
    total = sum(ratios)
    for i, (name, ratio) in enumerate(zip(names, ratios, strict=True)):
        end = len(order) if i == len(names) - 1 else start + round(len(order) * ratio / total)
        picked = order[start:end]
        out[name] = Split([pool.texts[j] for j in picked], [pool.labels[j] for j in picked],
                          [pool.rows[j] for j in picked], pool.origin)
        start = end
    return out


def _split(task: TaskSpec, raw: dict[str, Split], seed: int) -> dict[str, Split]:
    """train/dev/test: given splits are kept, missing ones are carved from the pool with a fixed seed."""
    ratios = dict(zip(SPLITS, task.split_ratios, strict=True))
    key = f"{seed}:{task.name}"
    if "all" in raw:
        return _carve(raw["all"], task.split_ratios, SPLITS, key)
    if "train" not in raw:
        raise DistillInputError(f"tasks.{task.name}.source.files: a 'train' file is required")
    missing = [s for s in ("dev", "test") if s not in raw]
    if not missing:
        return {s: raw[s] for s in SPLITS}
    carved = _carve(raw["train"], tuple(ratios[s] for s in ("train", *missing)), ("train", *missing), key)
    return {s: raw.get(s) or carved[s] for s in SPLITS}


def _clean(task: TaskSpec, split_name: str, split: Split) -> Split:
    """Drop empty texts (counted in the log), check labels and bring them to one form per task type."""
    keep, labels = [], []
    for i, (text, label) in enumerate(zip(split.texts, split.labels, strict=True)):
        if task.type == "token_classification":
            if not isinstance(text, list) or not isinstance(label, list):
                raise DistillInputError(
                    f"{split.origin}: row {split.rows[i]}: token_classification needs a list of words in "
                    f"{task.text_field!r} and a list of tags in {task.label_field!r}"
                )
            if len(text) != len(label):
                raise DistillInputError(
                    f"{split.origin}: row {split.rows[i]}: {len(text)} words but {len(label)} tags"
                )
            where = f"{split.origin}: row {split.rows[i]}"
            for k, (word, tag) in enumerate(zip(text, label, strict=True)):
                _check_name_value(tag, f"{where}: tag {k + 1} in {task.label_field!r}")
                if not isinstance(word, str):
                    raise DistillInputError(f"{where}: word {k + 1} in {task.text_field!r} is {word!r}, not text")
            empty = not any(str(w).strip() for w in text)
        else:
            label = _sequence_label(task, label, f"{split.origin}: row {split.rows[i]}")
            empty = text is None or not str(text).strip()
        if not empty:
            keep.append(i)
            labels.append(label)
    dropped = len(split.texts) - len(keep)
    if dropped:
        log.warning("task %s, %s split: skipped %d example(s) with empty text", task.name, split_name, dropped)
    return Split([split.texts[i] for i in keep], labels, [split.rows[i] for i in keep], split.origin)


def _sequence_label(task: TaskSpec, label: Any, where: str) -> Any:
    """One example's label as its task type wants it: a name, a list of names (multi-label), or a float."""
    if task.type == "multi_label_classification":
        if label is None:
            return []  # an empty cell: none of the labels applies
        if isinstance(label, str):
            return [name.strip() for name in label.split(task.label_separator) if name.strip()]
        return [str(name) for name in label] if isinstance(label, list) else [str(label)]
    if task.type == "regression":
        if label is None:
            raise DistillInputError(f"{where}: empty label in {task.label_field!r}")
        try:
            value = float(label)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise DistillInputError(f"{where}: label {label!r} in {task.label_field!r} is not a finite number "
                                    f"(task {task.name!r} is a regression)")
        return value
    return _check_name_value(label, f"{where}: label in {task.label_field!r}")


def _check_name_value(value: Any, where: str) -> Any:
    """A class label or tag: text, or an integer (a class id); never empty, NaN, a boolean or a structure."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise DistillInputError(f"{where} is {value!r}: give every example a label (text or a class number)")


def _label_list(task: TaskSpec, splits: dict[str, Split]) -> list[str]:
    train = splits["train"]
    if task.type == "regression":
        return []
    if task.type == "token_classification":
        seen = {str(tag) for tags in train.labels for tag in tags}
        return sorted(seen, key=lambda t: (t != "O", t[2:], t))
    if task.type == "multi_label_classification":
        return sorted({str(name) for names in train.labels for name in names})
    return sorted({str(label) for label in train.labels})


def _check_labels(task: TaskSpec, splits: dict[str, Split], labels: list[str]) -> None:
    if task.type == "regression":
        return
    known = set(labels)
    for name in ("dev", "test"):
        split = splits[name]
        for i, label in enumerate(split.labels):
            values = label if isinstance(label, list) else [label]
            for value in values:
                if str(value) not in known:
                    raise DistillInputError(
                        f"{split.origin}: {name} split, row {split.rows[i]}: label {str(value)!r} of task "
                        f"{task.name!r} never appears in the train split"
                    )


def load_tasks(recipe: Recipe) -> list[TaskData]:
    """Every task of the recipe, split into train/dev/test (and transfer, when asked for) and checked."""
    tasks = []
    for spec in recipe.tasks:
        raw = _read_source(spec, recipe)
        given_transfer = raw.pop(TRANSFER, None)
        splits = {name: _clean(spec, name, split) for name, split in _split(spec, raw, recipe.seed).items()}
        if not splits["train"].texts:
            raise DistillInputError(f"tasks.{spec.name}: the train split has no examples")
        labels = _label_list(spec, splits)
        _check_labels(spec, splits, labels)
        transfer = _transfer(spec, given_transfer, splits["train"])
        if spec.limit:
            splits = {name: _limit(split, spec.limit.get(name)) for name, split in splits.items()}
        empty = [name for name in SPLITS if not splits[name].texts]
        if empty:
            raise DistillInputError(
                f"tasks.{spec.name}: the {' and '.join(empty)} split(s) have no examples "
                f"({', '.join(f'{k} {len(v.texts)}' for k, v in splits.items())}); give more data, dev/test files, "
                "or other split_ratios / limit")
        if transfer is not None:
            splits[TRANSFER] = transfer
        info = TaskInfo(spec.name, spec.type, labels, spec.metric or "accuracy")
        tasks.append(TaskData(info, splits))
        log.info("task %s: %s", spec.name, ", ".join(f"{k} {len(v.texts)}" for k, v in splits.items()))
    return tasks


def _transfer(spec: TaskSpec, given: Split | None, train: Split) -> Split | None:
    """The unlabelled examples the students learn from the teacher alone: the source's transfer file or split,
    else (with `limit.transfer`) the train examples beyond `limit.train`, their labels left out; capped at
    `limit.transfer`. None when the task has none, or `limit.transfer` is 0."""
    where = f"tasks.{spec.name}"
    count = (spec.limit or {}).get(TRANSFER)
    if count == 0:
        return None
    if given is not None:
        pool = _clean_unlabelled(spec, given)
    elif count is None:
        return None
    else:
        kept = (spec.limit or {}).get("train")
        if kept is None:
            raise DistillInputError(f"{where}.limit.transfer: the transfer examples come from a transfer file, or "
                                    f"from the train examples beyond limit.train; set limit.train or give "
                                    f"source.files.transfer")
        pool = Split(train.texts[kept:], [None] * max(len(train.texts) - kept, 0), train.rows[kept:], train.origin)
    pool = _limit(pool, count)
    if not pool.texts:
        why = f"{given.origin} has no text in {spec.text_field!r}; fill it or leave it out" if given is not None \
            else f"{len(train.texts)} train examples, limit.train {(spec.limit or {}).get('train')}; lower " \
                 f"limit.train or leave out limit.transfer"
        raise DistillInputError(f"{where}: the transfer split has no examples ({why})")
    return pool


def _clean_unlabelled(spec: TaskSpec, split: Split) -> Split:
    """Transfer examples: texts only (token tasks: lists of words); empty ones are skipped."""
    keep = []
    for i, text in enumerate(split.texts):
        if spec.type == "token_classification":
            if not isinstance(text, list) or not all(isinstance(w, str) for w in text):
                raise DistillInputError(f"{split.origin}: row {split.rows[i]}: token_classification needs a list "
                                        f"of words in {spec.text_field!r}")
            if any(w.strip() for w in text):
                keep.append(i)
        elif text is not None and str(text).strip():
            keep.append(i)
    if len(keep) < len(split.texts):
        log.warning("task %s, transfer split: skipped %d example(s) with empty text", spec.name,
                    len(split.texts) - len(keep))
    return Split([split.texts[i] for i in keep], [None] * len(keep), [split.rows[i] for i in keep], split.origin)


def _limit(split: Split, count: int | None) -> Split:
    if count is None:
        return split
    return Split(split.texts[:count], split.labels[:count], split.rows[:count], split.origin)


def encode_tasks(tasks: list[TaskData], tokenizer: Any, max_length: int) -> None:
    """Tokenise every split of every task in place (labels aligned to the first sub-token of each word)."""
    for task in tasks:
        label_id = {label: i for i, label in enumerate(task.info.labels)}
        for name, split in task.splits.items():
            labels = None if name == TRANSFER else split.labels
            task.encoded[name] = encode_split(task.info, split.texts, labels, tokenizer, max_length, label_id)


def encode_split(info: TaskInfo, texts: list, labels: list | None, tokenizer: Any, max_length: int,
                 label_id: dict[str, int] | None = None) -> EncodedSplit:
    """Token ids (and aligned label ids when labels are given) for one list of examples."""
    label_id = label_id or {label: i for i, label in enumerate(info.labels)}
    if not info.token_level:
        enc = tokenizer([str(t) for t in texts], truncation=True, max_length=max_length)
        ids = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
        return EncodedSplit(ids, _encode_labels(info, labels, label_id, len(ids)))
    words = [[str(w) for w in ws] for ws in texts]
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    ids, aligned = [], []
    for i, input_ids in enumerate(enc["input_ids"]):
        ids.append(np.asarray(input_ids, dtype=np.int64))
        row = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int64)
        previous = None
        for position, word in enumerate(enc.word_ids(i)):
            if word is not None and word != previous and labels is not None:
                row[position] = label_id[str(labels[i][word])]
            previous = word
        aligned.append(row)
    return EncodedSplit(ids, aligned, words)


def _encode_labels(info: TaskInfo, labels: list | None, label_id: dict[str, int], count: int) -> list:
    """Per-example labels of a sequence-level task (placeholders when `labels` is None)."""
    if info.type == "regression":
        return [float(y) for y in labels] if labels is not None else [math.nan] * count
    if info.type == "multi_label_classification":
        if labels is None:  # NaN rows: no gold label (the losses leave them out)
            return [np.full(len(info.labels), np.nan, dtype=np.float32) for _ in range(count)]
        rows = []
        for names in labels:
            row = np.zeros(len(info.labels), dtype=np.float32)
            row[[label_id[str(name)] for name in names]] = 1.0
            rows.append(row)
        return rows
    return [label_id[str(y)] for y in labels] if labels is not None else [IGNORE_INDEX] * count


def fingerprint(tasks: list[TaskData], labelled_only: bool = False) -> str:
    """sha256 over every task's definition, label map and tokenised splits (`labelled_only`: not the transfer
    split, for what never reads it, such as the teacher's fine-tuning)."""
    digest = hashlib.sha256()
    for task in tasks:
        digest.update(repr(task.info.to_json()).encode())
        for name in sorted(task.encoded):
            if labelled_only and name == TRANSFER:
                continue
            split = task.encoded[name]
            digest.update(f"{name}:{len(split)}".encode())
            for ids, labels in zip(split.input_ids, split.labels, strict=True):
                digest.update(ids.tobytes())
                values = np.asarray(labels)
                digest.update((values if values.dtype.kind == "f" else values.astype(np.int64)).tobytes())
    return digest.hexdigest()
