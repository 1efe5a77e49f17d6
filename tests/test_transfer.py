"""Transfer examples: unlabelled text the students learn from the teacher alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_recipe_dict, write_tiny_data

from distill.core.errors import DistillInputError
from distill.core.tokenizer import load_tokenizer
from distill.data.tasks import IGNORE_INDEX, encode_tasks, load_tasks
from distill.distillation.transfer import TrainWithTransfer, student_train_splits
from distill.recipe import parse_recipe
from distill.train.losses import task_losses
from teachers.cache.store import TeacherTargets


def _tasks(tmp_path, tiny_base, edit):
    data = tiny_recipe_dict(tiny_base, write_tiny_data(tmp_path / "data"))
    edit(data)
    recipe = parse_recipe(data, tmp_path)
    tasks = load_tasks(recipe)
    encode_tasks(tasks, load_tokenizer(tiny_base), recipe.max_length)
    return {t.info.name: t for t in tasks}


def _sentiment_transfer_file(tmp_path, content: str):
    """A recipe edit: the sentiment task reads its train file and, as transfer, a CSV of `content`."""
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text(content)

    def edit(data):
        data["tasks"][0]["source"] = {"files": {"train": data["tasks"][0]["source"]["files"],
                                                "transfer": str(unlabelled)}}
    return edit


def test_limit_transfer_takes_the_train_examples_beyond_limit_train_without_their_labels(tmp_path, tiny_base):
    def limits(transfer: bool):
        def edit(data):
            for task in data["tasks"]:
                task["limit"] = {"train": 50, **({"transfer": 40} if transfer else {})}
        return edit

    full = _tasks(tmp_path / "a", tiny_base, lambda data: None)
    plain = _tasks(tmp_path / "b", tiny_base, limits(False))
    with_transfer = _tasks(tmp_path / "c", tiny_base, limits(True))
    for name in ("sentiment", "ner"):
        assert "transfer" not in plain[name].splits
        assert with_transfer[name].splits["train"].texts == plain[name].splits["train"].texts
        assert with_transfer[name].splits["transfer"].texts == full[name].splits["train"].texts[50:90]
    assert set(with_transfer["sentiment"].encoded["transfer"].labels) == {IGNORE_INDEX}
    assert all((row == IGNORE_INDEX).all() for row in with_transfer["ner"].encoded["transfer"].labels)


def test_limit_transfer_0_turns_an_inherited_transfer_split_off(tmp_path, tiny_base):
    def edit(data):
        data["tasks"][0]["limit"] = {"train": 50, "transfer": 0}
    tasks = _tasks(tmp_path, tiny_base, edit)
    assert "transfer" not in tasks["sentiment"].splits and len(tasks["sentiment"].splits["train"].texts) == 50

    def negative(data):
        data["tasks"][0]["limit"] = {"train": 0}
    with pytest.raises(DistillInputError, match=r"tasks\.0\.limit: .*train: 0; a limit is at least 1"):
        _tasks(tmp_path / "n", tiny_base, negative)


def test_a_transfer_file_needs_only_the_text_column(tmp_path, tiny_base):
    edit = _sentiment_transfer_file(tmp_path, "text\na good film\n\"\"\nthe plot was dull\n")
    tasks = _tasks(tmp_path, tiny_base, edit)
    assert tasks["sentiment"].splits["transfer"].texts == ["a good film", "the plot was dull"]
    assert "transfer" not in tasks["ner"].splits


def test_transfer_without_examples_is_refused_in_one_line_that_says_why(tmp_path, tiny_base):
    def edit(data):
        data["tasks"][0]["limit"] = {"transfer": 10}
    with pytest.raises(DistillInputError, match=r"tasks\.sentiment\.limit\.transfer: .* set limit\.train"):
        _tasks(tmp_path, tiny_base, edit)

    def past_the_end(data):
        data["tasks"][0]["limit"] = {"train": 10_000, "transfer": 10}
    with pytest.raises(DistillInputError, match=r"tasks\.sentiment: the transfer split has no examples \(\d+ train "
                                                r"examples, limit\.train 10000; lower limit\.train"):
        _tasks(tmp_path / "p", tiny_base, past_the_end)
    with pytest.raises(DistillInputError, match=r"tasks\.sentiment: the transfer split has no examples \(.*"
                                                r"unlabelled\.csv has no text in 'text'; fill it or leave it out\)"):
        _tasks(tmp_path / "e", tiny_base, _sentiment_transfer_file(tmp_path, "text\n\"\"\n \n"))

    def unknown(data):
        data["tasks"][0]["limit"] = {"unlabelled": 10}
    with pytest.raises(Exception, match="unknown split"):
        _tasks(tmp_path / "u", tiny_base, unknown)


def test_gold_losses_leave_unlabelled_examples_out_and_kd_covers_them():
    torch.manual_seed(0)
    logits, teacher = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
    labels = torch.tensor([2, IGNORE_INDEX, 0, IGNORE_INDEX])
    gold, kd = task_losses("sequence_classification", logits, labels, teacher, 2.0)
    assert torch.allclose(gold, F.cross_entropy(logits[[0, 2]], labels[[0, 2]]))
    assert torch.allclose(kd, task_losses("sequence_classification", logits, torch.tensor([2, 1, 0, 1]), teacher,
                                          2.0)[1])
    none, _ = task_losses("sequence_classification", logits, torch.full((4,), IGNORE_INDEX), teacher, 2.0)
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(logits.grad).all()

    multi = torch.tensor([[1.0, 0.0, 1.0], [np.nan] * 3, [0.0, 1.0, 0.0], [np.nan] * 3])
    gold, _ = task_losses("multi_label_classification", logits, multi)
    assert torch.allclose(gold, F.binary_cross_entropy_with_logits(logits[[0, 2]], multi[[0, 2]]))
    values = torch.tensor([0.5, np.nan, -1.0, np.nan])
    gold, _ = task_losses("regression", logits[:, :1], values)
    assert torch.allclose(gold, F.mse_loss(logits[[0, 2], 0], values[[0, 2]]))
    assert task_losses("regression", logits[:, :1], torch.full((4,), np.nan))[0].item() == 0.0


class _Labelled:
    """A teacher source whose logits say where each row came from: (split number, index in that split)."""

    def __init__(self):
        self.hidden_layers = [0]

    def targets(self, task, split, indices, width, token_level, layers, qkv_layers=()):
        rows = torch.tensor([[float(split == "transfer"), float(i)] for i in indices])
        return TeacherTargets(rows, {0: rows[:, None, :].expand(-1, width, -1)},
                              {1: [rows[:, None, :].expand(-1, width, -1)] * 3})


def test_a_mixed_batch_reads_each_example_from_its_own_split():
    source = TrainWithTransfer(_Labelled(), {"sentiment": 10})
    got = source.targets("sentiment", "train", np.array([12, 3, 10, 9, 15]), 4, False, [0], [1])
    expected = torch.tensor([[1, 2], [0, 3], [1, 0], [0, 9], [1, 5]], dtype=torch.float32)
    assert torch.equal(got.logits, expected)
    assert torch.equal(got.hidden[0][:, 0], expected) and torch.equal(got.qkv[1][2][:, 3], expected)
    assert torch.equal(source.targets("sentiment", "dev", np.array([12]), 4, False, [0]).logits,
                       torch.tensor([[0.0, 12.0]]))


def test_students_train_on_train_then_transfer(tmp_path, tiny_base):
    tasks = _tasks(tmp_path, tiny_base, lambda data: data["tasks"][0].update(limit={"train": 60, "transfer": 30}))
    splits, sizes = student_train_splits(list(tasks.values()))
    assert sizes == {"sentiment": 60, "ner": len(tasks["ner"].encoded["train"])}
    assert len(splits["sentiment"]) == 90 and splits["ner"] is tasks["ner"].encoded["train"]
    assert splits["sentiment"].labels[60:] == [IGNORE_INDEX] * 30


def test_the_teacher_never_sees_transfer_examples_and_the_students_learn_from_their_cache(tmp_path, tiny_base):
    from distill import run_recipe

    data = tiny_recipe_dict(tiny_base, write_tiny_data(tmp_path / "data"))
    data["teacher"]["epochs"] = 1
    for task in data["tasks"]:
        task["limit"] = {"train": 80}
    first = run_recipe(parse_recipe(data, tmp_path), tmp_path / "out", until="cache")
    assert [s["status"] for s in first["stages"]] == ["ran", "ran"]
    for task in data["tasks"]:
        task["limit"]["transfer"] = 40
    second = run_recipe(parse_recipe(data, tmp_path), tmp_path / "out", until="train")
    stages = {s["name"]: s["status"] for s in second["stages"]}
    assert stages["teacher"] == "cached", "transfer examples do not change what the teacher trains on"
    assert stages["cache"] == "ran" and stages["train:s2"] == "ran"
    cache = json.loads((tmp_path / "out" / "cache.json").read_text())
    manifest = json.loads((Path(cache["path"]) / "manifest.json").read_text())
    assert manifest["tasks"]["sentiment"]["splits"]["transfer"]["examples"] == 40
    log = [json.loads(line) for line in (tmp_path / "out" / "logs" / "student-s2.jsonl").read_text().splitlines()]
    assert log and all(np.isfinite(r["train_loss"]) for r in log if "train_loss" in r)


def test_a_transfer_file_that_is_a_labelled_split_is_refused(tmp_path, tiny_base):
    def edit(data):
        path = data["tasks"][0]["source"]["files"]
        data["tasks"][0]["source"] = {"files": {"train": path, "test": path, "dev": path, "transfer": path}}
    with pytest.raises(DistillInputError, match=r"source\.files\.transfer: the same data as the train split"):
        _tasks(tmp_path, tiny_base, edit)


def test_the_vocabulary_counts_the_transfer_text(tmp_path, tiny_base):
    from students.vocab import choose_vocab

    tasks = list(_tasks(tmp_path, tiny_base, _sentiment_transfer_file(tmp_path, "text\nx y z\n")).values())
    tokenizer = load_tokenizer(tiny_base)
    kept = set(choose_vocab("corpus", tasks, tokenizer, tokenizer.vocab_size).kept.tolist())
    assert {tokenizer.convert_tokens_to_ids(piece) for piece in ("x", "y", "z")} <= kept
