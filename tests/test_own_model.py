"""README's "Compress your own model": its recipe, read from the README, on tiny per-task RoBERTa checkpoints
with a byte-level BPE tokenizer, then the three commands it shows."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
import yaml
from conftest import write_tiny_data
from test_family_runs import save_tokenizer
from transformers import AutoConfig, RobertaForSequenceClassification, RobertaForTokenClassification

from distill.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_recipe() -> dict:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- own-model recipe -->\s*```yaml\n(.*?)```", text, re.S)
    assert block, "README lost its own-model recipe"
    return yaml.safe_load(block.group(1))


def readme_commands() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- own-model commands -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README lost its own-model commands"
    return [line.split(maxsplit=1)[1] for line in block.group(1).strip().splitlines()]


def readme_init_commands() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- own-model init -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README lost its own-model init commands"
    return [line.split()[1:] for line in block.group(1).strip().splitlines()]


def save_checkpoint(model_class, directory: Path, labels: list[str], tokenizer_dir: Path, seed: int) -> None:
    config = AutoConfig.for_model("roberta", vocab_size=400, hidden_size=32, num_hidden_layers=3,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=80,
                                  pad_token_id=1, id2label=dict(enumerate(labels)),
                                  label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(seed)
    model_class(config).save_pretrained(directory)
    for path in tokenizer_dir.iterdir():
        shutil.copy2(path, directory / path.name)


def test_the_readme_recipe_compresses_per_task_roberta_checkpoints(tmp_path, capsys, monkeypatch):
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    assert len(save_tokenizer("bpe", tokenizer_dir)) <= 400
    save_checkpoint(RobertaForSequenceClassification, tmp_path / "checkpoints" / "sentiment", ["pos", "neg"],
                    tokenizer_dir, 1)
    save_checkpoint(RobertaForTokenClassification, tmp_path / "checkpoints" / "ner", ["O", "B-loc", "B-per"],
                    tokenizer_dir, 2)
    data = write_tiny_data(tmp_path / "data", n=80)
    shutil.copy(data["sentiment"], tmp_path / "data" / "reviews.csv")  # the README's file names
    shutil.copy(data["ner"], tmp_path / "data" / "tweets.jsonl")
    init, check = readme_init_commands()
    monkeypatch.chdir(tmp_path)
    assert main(init) == 0, "distill init, as the README writes it"
    started = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert started["teacher"]["per_task"] == {"sentiment": "./checkpoints/sentiment", "ner": "./checkpoints/ner"}
    assert [(t["name"], t["type"]) for t in started["tasks"]] == [("sentiment", "sequence_classification"),
                                                                   ("ner", "token_classification")]
    assert check == ["check", "recipe.yaml"] and main(check) == 0
    recipe = readme_recipe()
    assert set(recipe["teacher"]["per_task"]) == {"sentiment", "ner"}
    recipe["tasks"][0]["source"]["files"] = str(data["sentiment"])
    recipe["tasks"][1]["source"]["files"] = str(data["ner"])
    recipe["students"][1]["hidden_size"] = 16  # the tiny checkpoints are 32 wide
    recipe["distillation"] = {"epochs": 1, "batch_size": 16}
    recipe["bench"] = {"batch_sizes": [1], "seq_len": 16, "repeats": 2, "warmup": 1, "rounds": 1}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    run, gate, predict = readme_commands()
    assert run == "run recipe.yaml --out runs/mine"
    out = tmp_path / "runs" / "mine"
    assert main(["run", str(tmp_path / "recipe.yaml"), "--out", str(out)]) == 0
    assert (out / "artifacts" / "n2-e4" / "model.int8.onnx").is_file()
    assert gate.startswith("gate runs/mine/report.json --min-retention")
    assert main(["gate", str(out / "report.json"), "--min-retention", "0.0"]) == 0
    assert predict.startswith("predict runs/mine/artifacts/n2-e4 ")
    capsys.readouterr()
    assert main(["predict", str(out / "artifacts" / "n2-e4"), "what a great film"]) == 0
    printed = capsys.readouterr().out
    assert '"sentiment"' in printed and '"ner"' in printed
