"""Multi-label classification and regression tasks: data, losses, metrics, and the whole pipeline end to end."""

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import FILLER, NAMES, NEGATIVE, PLACES, POSITIVE

from distill.core.errors import DistillInputError
from distill.data.metrics import score
from distill.data.tasks import TaskInfo, load_tasks
from distill.recipe import load_recipe
from distill.train.losses import multilabel_bce, regression_mse, task_losses


def write_multi_label_and_regression_data(directory: Path, n: int = 240, seed: int = 1) -> dict[str, Path]:
    """tags: which of pos / neg / place a sentence mentions ("|"-separated, may be empty);
    rating: the number of positive minus negative words."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    tags, ratings = ["text,tags"], []
    for _ in range(n):
        positive, negative, place = rng.randint(0, 2), rng.randint(0, 2), rng.random() < 0.4
        words = rng.sample(FILLER, 3) + rng.sample(POSITIVE, positive) + rng.sample(NEGATIVE, negative)
        words += [rng.choice(sorted(PLACES))] if place else [rng.choice([w for w in NAMES if w not in PLACES])]
        rng.shuffle(words)
        text = " ".join(words)
        names = [name for name, present in (("pos", positive), ("neg", negative), ("place", place)) if present]
        tags.append(f"{text},{'|'.join(names)}")
        ratings.append({"text": text, "score": float(positive - negative)})
    (directory / "tags.csv").write_text("\n".join(tags) + "\n")
    (directory / "rating.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ratings))
    return {"tags": directory / "tags.csv", "rating": directory / "rating.jsonl"}


def recipe_dict(base: Path, data: dict[str, Path]) -> dict:
    return {
        "seed": 3,
        "max_length": 32,
        "tasks": [
            {"name": "tags", "type": "multi_label_classification", "source": {"files": str(data["tags"])},
             "label_field": "tags", "label_separator": "|"},
            {"name": "rating", "type": "regression", "source": {"files": str(data["rating"])},
             "label_field": "score"},
        ],
        "teacher": {"base_model": str(base), "epochs": 5, "batch_size": 16, "learning_rate": 2e-3},
        "students": [{"name": "s2", "layers": 2}],
        "distillation": {"epochs": 3, "batch_size": 16, "learning_rate": 1e-3},
        "export": {"quantization": ["dynamic"]},
    }


@pytest.fixture
def typed_recipe(tmp_path, tiny_base):
    data = write_multi_label_and_regression_data(tmp_path / "data")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tiny_base, data)))
    return path


def test_multi_label_and_regression_end_to_end(typed_recipe, tmp_path):
    from distill import Predictor, run_recipe
    from distill.core.fileio import read_json
    from teachers.cache.store import TeacherCache

    out = tmp_path / "out"
    run_recipe(load_recipe(typed_recipe), out, until="export")
    teacher = [json.loads(line) for line in (out / "logs" / "teacher.jsonl").read_text().splitlines()]
    best = max(teacher, key=lambda r: r["dev_score"])["dev"]
    assert set(best["tags"]) == {"micro_f1", "macro_f1"} and set(best["rating"]) == {"pearson", "spearman"}
    assert best["tags"]["micro_f1"] > 0.7, "the tiny teacher learns which words a sentence has"
    assert best["rating"]["pearson"] > 0.7, "and how positive it is"
    tasks = {t["name"]: t for t in read_json(out / "teacher" / "tasks.json")["tasks"]}
    assert tasks["tags"]["labels"] == ["neg", "place", "pos"] and tasks["rating"]["labels"] == []

    cache = TeacherCache(Path(read_json(out / "cache.json")["path"]))
    targets = cache.targets("tags", "train", np.arange(4), 8, False, [])
    assert targets.logits.shape == (4, 3)
    assert cache.targets("rating", "train", np.arange(4), 8, False, []).logits.shape == (4, 1)

    student = [json.loads(line) for line in (out / "logs" / "student-s2.jsonl").read_text().splitlines()]
    student = [r for r in student if "dev" in r]
    assert max(r["dev"]["tags"]["micro_f1"] for r in student) > 0.6
    assert max(r["dev"]["rating"]["pearson"] for r in student) > 0.5

    checks = read_json(out / "artifacts" / "s2" / "manifest.json")["checks"]
    assert checks["test_label_agreement_fp32_vs_torch"] == {"tags": 1.0, "rating": 1.0}
    assert set(checks["int8"]["dynamic"]["test_label_agreement_vs_fp32"]) == {"tags", "rating"}
    expected = checks["int8"]["dynamic"]["test_expected_agreement_vs_fp32"]
    assert set(expected) == {"tags", "rating"} and all(0.0 <= v <= 1.0 for v in expected.values())

    predictor = Predictor(out / "artifacts" / "teacher", precision="fp32")
    happy, sad = predictor.predict(["great fun lovely film in paris", "awful dull boring plot with bob"])
    assert isinstance(happy["rating"]["value"], float) and happy["rating"]["value"] > sad["rating"]["value"]
    assert "pos" in {t["label"] for t in happy["tags"]} and "neg" in {t["label"] for t in sad["tags"]}
    assert all(t["score"] > 0.5 for t in happy["tags"] + sad["tags"])
    assert [t["score"] for t in happy["tags"]] == sorted((t["score"] for t in happy["tags"]), reverse=True)


def test_multi_label_labels_from_lists_and_empty_cells(tmp_path, recipe_file, tiny_base):
    rows = [{"text": "good film", "tags": ["pos"]}, {"text": "bad film", "tags": ["neg"]},
            {"text": "film", "tags": None}, {"text": "good bad", "tags": ["pos", "neg"]}] * 5
    path = tmp_path / "tags.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def edit(r):
        r["tasks"] = [{"name": "tags", "type": "multi_label_classification", "source": {"files": str(path)},
                       "label_field": "tags", "split_ratios": [0.6, 0.2, 0.2]}]

    task = load_tasks(load_recipe(recipe_file(edit)))[0]
    assert task.info.labels == ["neg", "pos"] and task.info.metric == "micro_f1"
    labels = [tuple(names) for split in task.splits.values() for names in split.labels]
    assert sorted(labels) == sorted([("pos",), ("neg",), (), ("pos", "neg")] * 5), "an empty cell: no label"
    from distill.core.tokenizer import load_tokenizer
    from distill.data.batching import pad_batch
    from distill.data.tasks import encode_tasks

    encode_tasks([task], load_tokenizer(tiny_base), 16)
    train = task.encoded["train"]
    batch = pad_batch("tags", train, np.arange(len(train)), 0)
    assert batch.labels.dtype == np.float32 and batch.labels.shape == (len(train), 2)
    expected = [[float("neg" in names), float("pos" in names)] for names in task.splits["train"].labels]
    assert batch.labels.tolist() == expected


def test_regression_label_must_be_a_number(tmp_path, recipe_file):
    path = tmp_path / "rating.csv"
    path.write_text("text,label\ngood,1.5\nbad,-1\nfine,lots\n")

    def edit(r):
        r["tasks"] = [{"name": "rating", "type": "regression", "source": {"files": str(path)}}]

    with pytest.raises(DistillInputError, match=r"rating\.csv: row 3: label 'lots' in 'label' is not a finite number"):
        load_tasks(load_recipe(recipe_file(edit)))


@pytest.mark.parametrize(("kind", "metric", "ok"), [
    ("regression", "pearson", True), ("regression", "accuracy", False),
    ("multi_label_classification", "macro_f1", True), ("multi_label_classification", "entity_f1", False)])
def test_metric_must_fit_the_task_type(recipe_file, kind, metric, ok):
    def edit(r):
        r["tasks"][0].update(type=kind, metric=metric)

    if ok:
        assert load_recipe(recipe_file(edit)).tasks[0].metric == metric
    else:
        with pytest.raises(DistillInputError, match="does not fit task type"):
            load_recipe(recipe_file(edit))


def test_multi_label_metrics_threshold_at_one_half():
    from distill.data.tasks import EncodedSplit

    info = TaskInfo("t", "multi_label_classification", ["a", "b"], "micro_f1")
    gold = [np.array([1, 0], np.float32), np.array([1, 1], np.float32), np.array([0, 0], np.float32)]
    logits = [np.array([2.0, -1.0]), np.array([0.5, -0.1]), np.array([-3.0, 0.2])]
    result = score(info, EncodedSplit([np.zeros(2)] * 3, gold), logits)
    # a: tp 2; b: tp 0, fn 1, fp 1 → micro P = R = 2/3; macro = (1 + 0) / 2
    assert math.isclose(result["micro_f1"], 2 / 3) and math.isclose(result["macro_f1"], 0.5)


def test_regression_metrics_and_their_undefined_cases():
    from distill.data.tasks import EncodedSplit

    info = TaskInfo("t", "regression", [], "pearson")
    split = EncodedSplit([np.zeros(2)] * 4, [0.0, 1.0, 2.0, 3.0])
    result = score(info, split, [np.array([v]) for v in (0.0, 1.0, 4.0, 9.0)])
    assert 0.9 < result["pearson"] < 1.0 and math.isclose(result["spearman"], 1.0)
    constant = score(info, split, [np.array([1.0])] * 4)
    assert constant == {"pearson": 0.0, "spearman": 0.0}, "a constant prediction scores 0, not NaN"


def test_multilabel_bce_against_gold_and_teacher():
    logits = torch.tensor([[0.0, 2.0]])
    gold = torch.tensor([[1.0, 0.0]])
    expected = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert math.isclose(multilabel_bce(logits, gold).item(), expected, rel_tol=1e-6)
    student = torch.tensor([[0.3, -1.0]], requires_grad=True)
    teacher = student.detach().clone()
    gold_loss, kd = task_losses("multi_label_classification", student, gold, teacher, temperature=2.0)
    kd.backward()
    assert torch.allclose(student.grad, torch.zeros(1, 2), atol=1e-7), "KD is minimal where student = teacher"
    assert math.isclose(gold_loss.item(), multilabel_bce(student.detach(), gold).item(), rel_tol=1e-6)


def test_regression_losses_use_one_value_per_example():
    predictions = torch.tensor([[1.0], [3.0]])
    assert regression_mse(predictions, torch.tensor([0.0, 1.0])).item() == 2.5
    gold, kd = task_losses("regression", predictions, torch.tensor([1.0, 3.0]), torch.tensor([[2.0], [3.0]]))
    assert gold.item() == 0.0 and kd.item() == 0.5
    _, none = task_losses("regression", predictions, torch.tensor([1.0, 3.0]))
    assert none is None


def test_predictor_output_by_task_type():
    from distill.runtime import _task_prediction

    multi = {"type": "multi_label_classification", "labels": ["a", "b", "c"]}
    assert [p["label"] for p in _task_prediction(multi, np.array([0.5, -2.0, 3.0]), "", None)] == ["c", "a"]
    assert _task_prediction({"type": "regression", "labels": []}, np.array([1.25]), "", None) == {"value": 1.25}
