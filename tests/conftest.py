"""Tiny models and data built inside the tests: no downloads, seconds of CPU."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun"]
NEGATIVE = ["bad", "awful", "dull", "poor", "boring", "weak"]
FILLER = ["the", "film", "was", "a", "movie", "plot", "story", "very", "really", "and"]
NAMES = ["alice", "bob", "carol", "dave", "paris", "rome", "london"]
PLACES = {"paris", "rome", "london"}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _sentence(rng: random.Random, label: str) -> str:
    words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE) for _ in range(2)]
    rng.shuffle(words)
    return " ".join(words)


def _tagged(rng: random.Random) -> tuple[list[str], list[str]]:
    words, tags = [], []
    for _ in range(rng.randint(4, 8)):
        if rng.random() < 0.3:
            name = rng.choice(NAMES)
            words.append(name)
            tags.append("B-loc" if name in PLACES else "B-per")
        else:
            words.append(rng.choice(FILLER))
            tags.append("O")
    return words, tags


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer BERT (hidden 32) with a word-piece tokenizer, saved like a hub checkpoint."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-base")
    vocab = SPECIALS + sorted(set(POSITIVE + NEGATIVE + FILLER + NAMES)) + ["##s", "##ing", "x", "y", "z"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_tiny_data(directory: Path, n: int = 200, seed: int = 0) -> dict[str, Path]:
    """A sentiment CSV and an NER JSONL, learnable by a tiny model."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / "sentiment.csv"
    lines = ["text,label"]
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        lines.append(f"{_sentence(rng, label)},{label}")
    csv_path.write_text("\n".join(lines) + "\n")
    jsonl_path = directory / "ner.jsonl"
    with open(jsonl_path, "w") as handle:
        for _ in range(n):
            words, tags = _tagged(rng)
            handle.write(json.dumps({"tokens": words, "tags": tags}) + "\n")
    return {"sentiment": csv_path, "ner": jsonl_path}


def tiny_recipe_dict(base: Path, data: dict[str, Path]) -> dict:
    return {
        "seed": 3,
        "max_length": 32,
        "tasks": [
            {"name": "sentiment", "type": "sequence_classification", "source": {"files": str(data["sentiment"])}},
            {"name": "ner", "type": "token_classification", "source": {"files": str(data["ner"])},
             "text_field": "tokens", "label_field": "tags"},
        ],
        "teacher": {"base_model": str(base), "epochs": 4, "batch_size": 16, "learning_rate": 2e-3},
        "students": [{"name": "s2", "layers": 2}],
        "distillation": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3},
        "export": {"quantization": ["dynamic", "static"], "calibration_examples": 8, "hf_dirs": True},
        "bench": {"batch_sizes": [1, 2], "seq_len": 16, "other_seq_lens": [8], "repeats": 3, "rounds": 1, "warmup": 1},
    }


@pytest.fixture
def tiny_data(tmp_path: Path) -> dict[str, Path]:
    return write_tiny_data(tmp_path / "data")


@pytest.fixture
def recipe_file(tmp_path: Path, tiny_base: Path, tiny_data: dict[str, Path]):
    """Write a recipe (optionally changed by `edit`) and return its path."""

    def make(edit=None) -> Path:
        data = tiny_recipe_dict(tiny_base, tiny_data)
        if edit:
            edit(data)
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return make


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Path:
    """One whole tiny pipeline run (teacher, cache, students, export, bench), shared by several tests."""
    from distill import load_recipe, run_recipe
    from distill.core.fileio import cache_dir_set_to

    root = tmp_path_factory.mktemp("run")
    with cache_dir_set_to(root / "cache"):
        data = write_tiny_data(root / "data")
        path = root / "recipe.yaml"
        path.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_base, data)))
        run_recipe(load_recipe(path), root / "out")
    return root


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path):
    """An (untrained) multi-task teacher saved like `distill teacher` saves one, its tokenizer, and encoded tasks."""
    import torch
    from transformers import AutoModel

    from distill.core.tokenizer import load_tokenizer
    from distill.data.tasks import encode_tasks, load_tasks
    from distill.model.multitask import MultiTaskModel
    from distill.recipe import parse_recipe

    root = tmp_path_factory.mktemp("teacher")
    recipe = parse_recipe(tiny_recipe_dict(tiny_base, write_tiny_data(root / "data")), root)
    tokenizer = load_tokenizer(tiny_base)
    tasks = load_tasks(recipe)
    encode_tasks(tasks, tokenizer, recipe.max_length)
    torch.manual_seed(0)
    MultiTaskModel(AutoModel.from_pretrained(tiny_base), [t.info for t in tasks]).save(root / "teacher", tokenizer)
    return recipe, root / "teacher", tokenizer, tasks
