"""Per-task teachers: one fine-tuned checkpoint per task fills one multi-task cache."""

import json

import numpy as np
import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification, BertTokenizerFast

import teachers.cache.build as runner
from distill.core.errors import DistillInputError
from distill.core.tokenizer import load_tokenizer
from distill.data.batching import pad_batch
from distill.data.tasks import encode_tasks, load_tasks
from distill.model.multitask import MultiTaskModel
from distill.pipeline import run_recipe
from distill.recipe import load_recipe
from teachers.cache.store import TeacherCache

# The data's labels are ["neg", "pos"] and ["O", "B-loc", "B-per"]; the checkpoints use other orders.
SENTIMENT_LABELS = ["pos", "neg"]
NER_LABELS = ["B-per", "O", "B-loc"]


def _save(model_class, directory, labels, tiny_base, seed, lowercase=True):
    config = BertConfig.from_pretrained(tiny_base, id2label=dict(enumerate(labels)),
                                        label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(seed)
    model_class(config).save_pretrained(directory)
    BertTokenizerFast(vocab_file=str(tiny_base / "vocab.txt"), do_lower_case=lowercase).save_pretrained(directory)
    return directory


@pytest.fixture
def checkpoints(tiny_base, tmp_path):
    return {"sentiment": _save(BertForSequenceClassification, tmp_path / "sst", SENTIMENT_LABELS, tiny_base, 1),
            "ner": _save(BertForTokenClassification, tmp_path / "ner", NER_LABELS, tiny_base, 2)}


@pytest.fixture
def tasks(recipe_file, tiny_base):
    tasks = load_tasks(load_recipe(recipe_file()))
    encode_tasks(tasks, load_tokenizer(tiny_base), 32)
    return tasks


def test_each_task_is_cached_from_its_own_checkpoint(checkpoints, tasks):
    built = runner.build_cache(checkpoints, tasks, [-1], qkv_layers=[-1], shard_size=64)
    assert not built.hit and runner.build_cache(checkpoints, tasks, [-1], qkv_layers=[-1], shard_size=64).hit
    cache = TeacherCache(built.path)
    assert set(cache.manifest["inputs"]["teacher"]["per_task"]) == {"sentiment", "ner"}
    models = {"sentiment": (BertForSequenceClassification, SENTIMENT_LABELS),
              "ner": (BertForTokenClassification, NER_LABELS)}
    for task in tasks:
        model_class, labels = models[task.info.name]
        model = model_class.from_pretrained(checkpoints[task.info.name]).eval()
        order = [labels.index(label) for label in task.info.labels]
        indices = np.array([0, 7, 30])
        batch = pad_batch(task.info.name, task.encoded["train"], indices, 0)
        token_level = task.info.type == "token_classification"
        targets = cache.targets(task.info.name, "train", indices, batch.input_ids.shape[1], token_level, [4],
                                qkv_layers=[4])
        mask = torch.from_numpy(batch.attention_mask)
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(batch.input_ids), attention_mask=mask, output_hidden_states=True)
        expected = out.logits[..., order]
        real = mask.bool()
        if token_level:
            assert torch.allclose(targets.logits[real], expected[real], atol=1e-2)
        else:
            assert torch.allclose(targets.logits, expected, atol=1e-2)
        assert torch.allclose(targets.hidden[4][real], out.hidden_states[4][real], atol=2e-2)
        assert targets.qkv[4][0].shape == (3, batch.input_ids.shape[1], 32)


def test_labels_that_do_not_match_are_refused(checkpoints, tasks, tiny_base):
    _save(BertForSequenceClassification, checkpoints["sentiment"], ["NEGATIVE", "POSITIVE"], tiny_base, 1)
    with pytest.raises(DistillInputError, match=r"teacher\.per_task\.sentiment: .*\['NEGATIVE', 'POSITIVE'\].*"
                                                r"\['neg', 'pos'\].*id2label"):
        runner.build_cache(checkpoints, tasks, [-1])


def test_labels_differing_only_in_case_are_mapped(checkpoints, tasks, tiny_base):
    _save(BertForSequenceClassification, checkpoints["sentiment"], ["POS", "NEG"], tiny_base, 1)
    built = runner.build_cache(checkpoints, tasks, [])
    assert TeacherCache(built.path).targets("sentiment", "dev", np.array([0]), 0, False, []).logits.shape == (1, 2)


def test_a_different_tokenizer_is_refused(checkpoints, tasks, tiny_base):
    _save(BertForTokenClassification, checkpoints["ner"], NER_LABELS, tiny_base, 2, lowercase=False)
    with pytest.raises(DistillInputError, match=r"tokenizer of ner \(.*\) differs from the tokenizer of sentiment "
                                                r"\(.*\) in normalizer"):
        runner.build_cache(checkpoints, tasks, [-1])


def test_a_checkpoint_of_the_wrong_kind_is_refused(checkpoints, tasks, tiny_base):
    _save(BertForSequenceClassification, checkpoints["ner"], NER_LABELS, tiny_base, 2)
    with pytest.raises(DistillInputError, match=r"teacher\.per_task\.ner: .* BertForSequenceClassification; a "
                                                r"token_classification task needs a \*ForTokenClassification"):
        runner.build_cache(checkpoints, tasks, [-1])


def test_recipe_names_every_task_once(recipe_file, checkpoints):
    def edit(recipe):
        recipe["teacher"] = {"per_task": {"sentiment": str(checkpoints["sentiment"])}}

    with pytest.raises(DistillInputError, match=r"teacher\.per_task: name one checkpoint for each task"):
        load_recipe(recipe_file(edit))


def test_pipeline_fills_one_cache_and_starts_students_from_the_first_checkpoint(recipe_file, checkpoints, tmp_path):
    def edit(recipe):
        recipe["teacher"] = {"per_task": {name: str(path) for name, path in checkpoints.items()}}
        for task in recipe["tasks"]:
            task["limit"] = {"train": 48, "dev": 16, "test": 16}

    path = recipe_file(edit)
    out = tmp_path / "out"
    run = run_recipe(load_recipe(path), out, until="train")
    assert [(s["name"], s["status"]) for s in run["stages"]] == [("teacher", "ran"), ("cache", "ran"),
                                                                  ("train:s2", "ran")]
    init = MultiTaskModel.load(out / "teacher")
    first = BertForSequenceClassification.from_pretrained(checkpoints["sentiment"])
    assert torch.equal(init.encoder.embeddings.word_embeddings.weight, first.bert.embeddings.word_embeddings.weight)
    assert torch.equal(init.heads["sentiment"].weight, first.classifier.weight.flip(0)), "reordered to neg, pos"
    ner = BertForTokenClassification.from_pretrained(checkpoints["ner"])
    assert torch.equal(init.heads["ner"].weight, ner.classifier.weight[[1, 2, 0]])
    assert json.loads((out / "cache.json").read_text())["hit"] is False
    assert (out / "students" / "s2" / "heads.safetensors").is_file()
    again = run_recipe(load_recipe(path), out, until="cache")
    assert [s["status"] for s in again["stages"]] == ["cached", "cached"]
    recipe = yaml.safe_load(path.read_text())
    recipe["teacher"]["per_task"]["ner"] = str(tmp_path / "missing")
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(DistillInputError, match="missing"):
        run_recipe(load_recipe(path), tmp_path / "out2", until="cache")
