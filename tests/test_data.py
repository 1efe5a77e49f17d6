import json
import logging

import pytest

from distill.core.errors import DistillInputError
from distill.core.tokenizer import load_tokenizer
from distill.data.tasks import IGNORE_INDEX, encode_tasks, load_tasks
from distill.recipe import load_recipe


def test_seeded_split_is_deterministic_and_disjoint(recipe_file):
    recipe = load_recipe(recipe_file())
    first = load_tasks(recipe)[0].splits
    second = load_tasks(recipe)[0].splits
    rows = {name: set(split.rows) for name, split in first.items()}
    assert {name: split.rows for name, split in first.items()} == {n: s.rows for n, s in second.items()}
    assert not rows["train"] & rows["dev"] and not rows["train"] & rows["test"] and not rows["dev"] & rows["test"]
    assert sum(len(r) for r in rows.values()) == 200
    assert len(rows["train"]) == 160


def test_other_seed_gives_other_split(recipe_file):
    a = load_tasks(load_recipe(recipe_file()))[0].splits["test"].rows
    b = load_tasks(load_recipe(recipe_file(lambda r: r.update(seed=4))))[0].splits["test"].rows
    assert a != b


def test_missing_label_column_names_file_and_column(recipe_file, tiny_data):
    tiny_data["sentiment"].write_text("text,stars\ngood film,5\n")
    with pytest.raises(DistillInputError) as info:
        load_tasks(load_recipe(recipe_file()))
    assert str(tiny_data["sentiment"]) in str(info.value)
    assert "'label'" in str(info.value)


def test_missing_data_file_is_named(recipe_file, tmp_path):
    path = recipe_file(lambda r: r["tasks"][0]["source"].update(files=str(tmp_path / "gone.csv")))
    with pytest.raises(DistillInputError, match=r"source\.files: .*gone\.csv not found$"):
        load_tasks(load_recipe(path))


def test_test_label_unseen_in_train_names_the_row(recipe_file, tiny_data, tmp_path):
    train = tmp_path / "train.csv"
    test = tmp_path / "test.csv"
    train.write_text("text,label\ngood,pos\nbad,neg\nfine,pos\n")
    test.write_text("text,label\ngood,pos\nmeh,neutral\n")

    def edit(r):
        r["tasks"][0]["source"] = {"files": {"train": str(train), "dev": str(train), "test": str(test)}}

    with pytest.raises(DistillInputError) as info:
        load_tasks(load_recipe(recipe_file(edit)))
    message = str(info.value)
    assert "test.csv" in message and "row 2" in message and "'neutral'" in message


def test_empty_texts_are_skipped_and_counted(recipe_file, tiny_data, caplog):
    text = tiny_data["sentiment"].read_text().splitlines()
    text[1] = ",pos"
    text[2] = '"   ",neg'
    tiny_data["sentiment"].write_text("\n".join(text) + "\n")
    with caplog.at_level(logging.WARNING):
        tasks = load_tasks(load_recipe(recipe_file()))
    assert sum(len(s.texts) for s in tasks[0].splits.values()) == 198
    assert "skipped" in caplog.text and "empty text" in caplog.text


def test_token_labels_go_to_the_first_subtoken(recipe_file, tiny_data, tiny_base):
    with open(tiny_data["ner"], "w") as handle:
        for _ in range(10):
            handle.write(json.dumps({"tokens": ["paris", "borings"], "tags": ["B-loc", "O"]}) + "\n")
    recipe = load_recipe(recipe_file())
    tasks = load_tasks(recipe)
    tokenizer = load_tokenizer(tiny_base)
    encode_tasks(tasks, tokenizer, 32)
    ner = tasks[1]
    ids = ner.encoded["train"].input_ids[0]
    labels = ner.encoded["train"].labels[0]
    pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert len(pieces) > 4, "the second word must split into several pieces"
    loc, o = ner.info.labels.index("B-loc"), ner.info.labels.index("O")
    assert labels.tolist() == [IGNORE_INDEX, loc, o] + [IGNORE_INDEX] * (len(pieces) - 3)


def test_token_task_rejects_mismatched_tags(recipe_file, tiny_data):
    with open(tiny_data["ner"], "w") as handle:
        handle.write(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(DistillInputError, match="2 words but 1 tags"):
        load_tasks(load_recipe(recipe_file()))
