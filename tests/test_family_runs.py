"""Every family the encoder anatomy knows, through the whole pipeline on a tiny random encoder with its kind of
tokenizer (WordPiece; byte-level BPE without token types; a sentencepiece-style unigram): teacher -> cache ->
students of every kind the family allows -> ONNX fp32 (parity) and int8 -> Predictor -> bench."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import FILLER, NAMES, NEGATIVE, POSITIVE, SPECIALS, tiny_recipe_dict, write_tiny_data
from test_families import tiny_config
from transformers import AutoModel

from distill import Predictor, load_recipe, run_recipe
from distill.core.fileio import read_json
from students.pruning import HEADS_REFUSED

WORDS = sorted(set(POSITIVE + NEGATIVE + FILLER + NAMES))
TOKENIZERS = {"bert": "wordpiece", "roberta": "bpe", "electra": "wordpiece", "distilbert": "wordpiece",
              "mpnet": "wordpiece", "deberta-v2": "unigram", "modernbert": "bpe"}
FAMILY_NAMES = {"bert": "BERT", "roberta": "RoBERTa", "electra": "ELECTRA", "distilbert": "DistilBERT",
                "mpnet": "MPNet", "deberta-v2": "DeBERTa-v2", "modernbert": "ModernBERT"}


def save_tokenizer(kind: str, directory: Path):
    """A fast tokenizer of the given kind over the test vocabulary, saved into `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast, DebertaV2TokenizerFast, RobertaTokenizerFast

    corpus = [" ".join(WORDS)] * 4
    if kind == "wordpiece":
        (directory / "vocab.txt").write_text("\n".join(SPECIALS + WORDS + ["##s", "##ing"]) + "\n")
        tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    elif kind == "bpe":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        backend.decoder = decoders.ByteLevel()
        backend.train_from_iterator(corpus, trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=True)
        tokenizer = RobertaTokenizerFast(tokenizer_object=backend, add_prefix_space=True, bos_token="<s>",
                                         eos_token="</s>", sep_token="</s>", cls_token="<s>", pad_token="<pad>",
                                         unk_token="<unk>", mask_token="<mask>")
    else:
        specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
        backend = Tokenizer(models.Unigram())
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        backend.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=80, special_tokens=specials,
                                                                    unk_token="[UNK]"))
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
        tokenizer = DebertaV2TokenizerFast(tokenizer_object=backend, bos_token="[CLS]", eos_token="[SEP]",
                                           sep_token="[SEP]", cls_token="[CLS]", pad_token="[PAD]",
                                           unk_token="[UNK]", mask_token="[MASK]")
    tokenizer.save_pretrained(directory)
    return tokenizer


def family_base(model_type: str, directory: Path) -> Path:
    """A tiny random encoder of the family and its tokenizer, saved like a hub checkpoint."""
    directory.mkdir(parents=True)
    tokenizer = save_tokenizer(TOKENIZERS[model_type], directory)
    config = tiny_config(model_type)
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    for name in ("bos_token_id", "cls_token_id"):
        if hasattr(config, name):
            setattr(config, name, tokenizer.cls_token_id)
    for name in ("eos_token_id", "sep_token_id"):
        if hasattr(config, name):
            setattr(config, name, tokenizer.sep_token_id)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(directory)
    return directory


def students(model_type: str) -> list[dict]:
    """Three students that together take every kind the family allows."""
    pruned = {"name": "pruned", "layers": 2, "ffn": 32, "qat_epochs": 1}
    if FAMILY_NAMES[model_type] not in HEADS_REFUSED:
        pruned["heads"] = 2
    narrow = {"name": "narrow", "layers": 2, "hidden_size": 16, "embedding_bits": 4}
    if TOKENIZERS[model_type] != "unigram":  # see the test below
        narrow["vocab"] = "corpus"
    return [pruned, narrow, {"name": "lora", "layers": 1, "lora": {"r": 2}}]


@pytest.mark.parametrize("model_type", list(TOKENIZERS))
def test_every_student_kind_runs_end_to_end(model_type, tmp_path):
    base = family_base(model_type, tmp_path / "base")
    recipe = tiny_recipe_dict(base, write_tiny_data(tmp_path / "data", n=80))
    recipe["teacher"]["epochs"] = 2
    recipe["students"] = students(model_type)
    recipe["distillation"]["losses"] = {"hard": 0.5, "kd_kl": 0.5, "hidden_mse": 1.0, "relations": 0.5}
    recipe["export"] = {"quantization": ["dynamic"]}
    recipe["bench"] = {"batch_sizes": [1], "seq_len": 16, "repeats": 2, "warmup": 1, "rounds": 1}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    run_recipe(load_recipe(path), out)

    for name in ("pruned", "narrow", "lora"):
        built = read_json(out / "students" / name / "student.json")
        plain = AutoModel.from_pretrained(out / "students" / name)  # a plain model of the family, smaller
        assert plain.config.model_type == model_type
        manifest = read_json(out / "artifacts" / name / "manifest.json")
        assert manifest["checks"]["fp32_max_abs_diff"] <= 1e-4
        predictor = Predictor(out / "artifacts" / name, precision="int8")
        [result] = predictor.predict(["the film was great fun with alice"])
        assert result["sentiment"]["label"] in ("pos", "neg") and isinstance(result["ner"], list)
    assert read_json(out / "students" / "narrow" / "student.json")["hidden_size"] == 16
    assert built["lora"]["r"] == 2
    report = read_json(out / "report.json")
    assert {m["name"] for m in report["models"] if m["role"] == "student"} == {"pruned", "narrow", "lora"}


def test_vocabulary_pruning_of_a_unigram_tokenizer_is_refused_before_training(tmp_path):
    from distill.core.errors import DistillInputError

    base = family_base("deberta-v2", tmp_path / "base")
    recipe = tiny_recipe_dict(base, write_tiny_data(tmp_path / "data", n=40))
    recipe["teacher"]["epochs"] = 1
    recipe["students"] = [{"name": "v", "layers": 1, "vocab": "corpus"}]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(DistillInputError, match=r"students\.v\.vocab: vocabulary pruning needs a WordPiece or BPE"):
        run_recipe(load_recipe(path), tmp_path / "out")
    assert not (tmp_path / "out" / "students" / "v").exists()


def test_a_family_outside_the_anatomy_drops_layers_and_refuses_the_rest_in_one_line(tmp_path, capsys):
    from transformers import ErnieConfig, ErnieModel

    from distill.cli import main

    base = tmp_path / "base"
    base.mkdir()
    tokenizer = save_tokenizer("wordpiece", base)
    torch.manual_seed(0)
    ErnieModel(ErnieConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64)).save_pretrained(base)
    recipe = tiny_recipe_dict(base, write_tiny_data(tmp_path / "data", n=40))
    recipe["teacher"]["epochs"] = 1
    recipe["students"] = [{"name": "dropped", "layers": 1}, {"name": "pruned", "layers": 1, "ffn": 32}]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path), "--out", str(tmp_path / "out"), "--student", "dropped"]) == 0
    capsys.readouterr()
    assert main(["train", str(path), "--out", str(tmp_path / "out"), "--student", "pruned"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("distill: error: students.pruned: model_type 'ernie' is not a family") and "\n" not in error


@pytest.mark.parametrize("model_type", list(TOKENIZERS))
def test_per_task_checkpoints_of_every_family_become_an_int8_student(model_type, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    tokenizer = save_tokenizer(TOKENIZERS[model_type], tokenizer_dir)
    checkpoints = {}
    for seed, (task, auto, labels) in enumerate((("sentiment", AutoModelForSequenceClassification, ["pos", "neg"]),
                                                 ("ner", AutoModelForTokenClassification, ["O", "B-loc", "B-per"]))):
        config = tiny_config(model_type)
        config.vocab_size, config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
        config.id2label, config.label2id = dict(enumerate(labels)), {label: i for i, label in enumerate(labels)}
        torch.manual_seed(seed)
        directory = tmp_path / task
        auto.from_config(config).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        checkpoints[task] = str(directory)
    recipe = tiny_recipe_dict(tokenizer_dir, write_tiny_data(tmp_path / "data", n=60))
    recipe["teacher"] = {"per_task": checkpoints}
    recipe["students"] = [{"name": "s", "layers": 1}]
    recipe["export"] = {"quantization": ["dynamic"]}
    recipe["bench"] = {"batch_sizes": [1], "seq_len": 16, "repeats": 2, "warmup": 1, "rounds": 1}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_recipe(load_recipe(path), tmp_path / "out")
    assert read_json(tmp_path / "out" / "artifacts" / "s" / "manifest.json")["checks"]["fp32_max_abs_diff"] <= 1e-4
    [result] = Predictor(tmp_path / "out" / "artifacts" / "s").predict(["bob saw a dull film in rome"])
    assert result["sentiment"]["label"] in ("pos", "neg")
