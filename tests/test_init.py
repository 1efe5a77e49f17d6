"""`distill init`: a starter recipe from a model and data files, with task types guessed from the data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_tiny_data
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from distill.cli import main
from distill.core.errors import DistillInputError
from distill.init import InitOptions, write_starter_recipe
from distill.init.data_guess import data_files, guess_task
from distill.recipe import load_recipe


def save_classifier(tiny_base: Path, directory: Path, labels: list[str]) -> Path:
    """A tiny fine-tuned BertForSequenceClassification with its tokenizer, saved as a user would have it."""
    config = BertConfig.from_pretrained(tiny_base, id2label=dict(enumerate(labels)),
                                        label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(directory)
    BertTokenizerFast.from_pretrained(tiny_base).save_pretrained(directory)
    return directory


def run_init(*args: str) -> int:
    return main(["init", *args])


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distill: error: "), lines
    return lines[0]


def test_init_writes_a_commented_recipe_that_distill_run_completes(tmp_path, tiny_base, capsys):
    data = write_tiny_data(tmp_path / "data", n=60)["sentiment"]
    model = save_classifier(tiny_base, tmp_path / "models" / "reviews-model", ["neg", "pos"])
    recipe = tmp_path / "recipes" / "recipe.yaml"
    assert run_init("--model", str(model), "--data", str(data), "--out", str(recipe)) == 0
    assert f"next: distill run {recipe} --out runs/mine" in capsys.readouterr().out

    text = recipe.read_text()
    assert text.startswith("# Starter recipe written by `distill init")
    assert f"#   distill run {recipe} --out runs/mine" in text
    assert "type: sequence_classification" in text and "# guessed: column 'label' holds 2 distinct names" in text
    written = yaml.safe_load(text)
    assert written["teacher"] == {"per_task": {"sentiment": "../models/reviews-model"}}
    assert written["tasks"][0]["source"] == {"files": "../data/sentiment.csv"}
    assert written["max_length"] == 64  # the tiny teacher has 64 positions
    assert [s["name"] for s in written["students"]] == ["l2", "l1-f32", "l1-f32-e4"]
    assert "init_from" not in text  # a small teacher: no started-student hint
    load_recipe(recipe)

    # only the benchmark is made shorter, to keep the test fast
    recipe.write_text(text.replace("  batch_sizes: [1, 8]", "  batch_sizes: [1]\n  repeats: 2\n  rounds: 1\n"
                                                            "  warmup: 1"))
    out = tmp_path / "runs" / "mine"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"l2", "l1-f32", "l1-f32-e4"} <= {m["name"] for m in report["models"]}


def test_a_plain_encoder_is_fine_tuned_and_other_labels_keep_the_head_out(tmp_path, tiny_base):
    data = write_tiny_data(tmp_path / "data", n=40)
    out = tmp_path / "recipe.yaml"
    write_starter_recipe(InitOptions([str(tiny_base)], [str(data["sentiment"]), f"tags={data['ner']}"], out))
    recipe = load_recipe(out)
    assert recipe.teacher.base_model is not None and recipe.teacher.per_task is None
    assert [(t.name, t.type) for t in recipe.tasks] == [("sentiment", "sequence_classification"),
                                                        ("tags", "token_classification")]
    assert "an encoder without a task head (BertModel)" in out.read_text()

    other_labels = save_classifier(tiny_base, tmp_path / "ckpt", ["LABEL_0", "LABEL_1"])
    write_starter_recipe(InitOptions([str(other_labels)], [str(data["sentiment"])], out, force=True))
    assert load_recipe(out).teacher.base_model == "./ckpt"
    assert "its id2label names other labels than the data's" in out.read_text()


def test_a_hub_id_that_cannot_be_read_sizes_students_for_bert_base(tmp_path, monkeypatch):
    from transformers import AutoConfig

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(AutoConfig, "from_pretrained", offline)
    data = write_tiny_data(tmp_path / "data", n=40)["sentiment"]
    out = tmp_path / "recipe.yaml"
    lines = write_starter_recipe(InitOptions(["someone/some-model"], [str(data)], out))
    assert "could not be read here" in lines[1]
    recipe = load_recipe(out)
    assert recipe.teacher.base_model == "someone/some-model"
    assert [s.name for s in recipe.students] == ["l6", "l4-f1536", "l4-f1536-e4", "l3-v12k"]
    # a base-size teacher: the sweep suggests, commented, a student started from a smaller pretrained encoder
    assert "  # - {name: p3, layers: 3, init_from: sentence-transformers/all-MiniLM-L6-v2}" in out.read_text()


def write_rows(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".csv":
        columns = list(rows[0])
        path.write_text("\n".join([",".join(columns), *(",".join(str(r[c]) for c in columns) for r in rows)]) + "\n")
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(("name", "rows", "expected"), [
    ("sentiment.csv", [{"id": i, "review": f"text number {i}", "label": ["good", "bad"][i % 2]} for i in range(20)],
     ("sequence_classification", "review", "label", None)),
    ("stars.csv", [{"body": f"a review {i}", "stars": i % 5 + 1} for i in range(20)],
     ("sequence_classification", "body", "stars", None)),
    ("similarity.csv", [{"sentence": f"pair {i}", "score": i / 7} for i in range(20)],
     ("regression", "sentence", "score", None)),
    ("ner.jsonl", [{"tokens": ["alice", "in", "paris"], "ner_tags": ["B-per", "O", "B-loc"]}] * 10,
     ("token_classification", "tokens", "ner_tags", None)),
    ("topics.jsonl", [{"text": f"news {i}", "labels": [["sport"], ["sport", "politics"], []][i % 3]}
                      for i in range(12)],
     ("multi_label_classification", "text", "labels", None)),
    ("topics.csv", [{"content": f"news {i}", "topics": ["sport|politics", "sport", "art"][i % 3]}
                    for i in range(12)],
     ("multi_label_classification", "content", "topics", "|")),
])
def test_task_types_and_fields_are_guessed_from_the_data(tmp_path, name, rows, expected):
    path = write_rows(tmp_path / name, rows)
    task = guess_task("t", data_files(path))
    assert (task.type, task.text_field, task.label_field, task.label_separator) == expected
    assert task.notes["type"].startswith("guessed: ")


def test_a_directory_gives_its_split_files(tmp_path):
    for stem in ("train", "validation", "test"):
        write_rows(tmp_path / f"{stem}.csv", [{"text": "a b", "label": "x"}])
    assert data_files(tmp_path) == {"train": tmp_path / "train.csv", "dev": tmp_path / "validation.csv",
                                    "test": tmp_path / "test.csv"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillInputError, match="no train file"):
        data_files(tmp_path / "empty")


def test_refusals_exit_2_with_one_line(tmp_path, tiny_base, capsys):
    model = str(tiny_base)
    notes = write_rows(tmp_path / "notes.txt", [{"text": "a"}])
    assert run_init("--model", model, "--data", str(notes), "--out", str(tmp_path / "r.yaml")) == 2
    assert "notes.txt: unknown data format '.txt'" in one_error_line(capsys)

    unclear = write_rows(tmp_path / "unclear.csv", [{"a": f"x {i}", "b": "p", "c": "q"} for i in range(10)])
    assert run_init("--model", model, "--data", str(unclear), "--out", str(tmp_path / "r.yaml")) == 2
    line = one_error_line(capsys)
    assert "unclear.csv: cannot tell which column holds the labels" in line
    assert "--label-field unclear=COLUMN" in line
    assert not (tmp_path / "r.yaml").exists()

    existing = tmp_path / "existing.yaml"
    existing.write_text("mine\n")
    data = write_tiny_data(tmp_path / "data", n=20)["sentiment"]
    assert run_init("--model", model, "--data", str(data), "--out", str(existing)) == 2
    assert "exists; pass --force to overwrite it" in one_error_line(capsys)
    assert existing.read_text() == "mine\n"
