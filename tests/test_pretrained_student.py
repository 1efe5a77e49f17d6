"""A student started from another pretrained, smaller encoder (`init_from`): its word embeddings mapped onto the
teacher's vocabulary (by piece, special tokens by role), its own layers and width, new heads; through the
pipeline to an int8 artifact; and the mistakes refused in one line before anything is written."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FILLER, NAMES, NEGATIVE, POSITIVE, SPECIALS, tiny_recipe_dict, write_tiny_data
from test_families import tiny_config
from test_family_runs import family_base
from transformers import AutoModel, BertConfig, BertModel, BertTokenizerFast, MPNetTokenizerFast

from distill import Predictor, load_recipe, run_recipe
from distill.core.errors import DistillInputError
from distill.core.fileio import read_json
from distill.core.tokenizer import load_tokenizer
from distill.recipe import StudentSpec
from students.pretrained import vocabulary_transfer

WORDS = sorted(set(POSITIVE + NEGATIVE + FILLER + NAMES))
MISSING = "rome"  # a teacher piece the small encoder does not know


def mpnet_base(directory: Path, first: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>")) -> Path:
    """A tiny MPNet with MPNet's kind of vocabulary: <s> <pad> </s> <unk> first (in the order `first`), BERT's
    specials as plain pieces, <mask> last."""
    directory.mkdir(parents=True)
    vocab = [*first, *SPECIALS, *WORDS, "##s", "##ing", "<mask>"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = MPNetTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(directory)
    config = tiny_config("mpnet")
    config.vocab_size, config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(directory)
    return directory


def small_bert(directory: Path, layers: int = 3) -> Path:
    """A pretrained-looking small BERT (hidden 16) whose vocabulary is in another order and lacks MISSING."""
    directory.mkdir(parents=True)
    pieces = [w for w in WORDS if w != MISSING] + ["##ing", "##s", "x", "y", "z"]
    random.Random(1).shuffle(pieces)
    (directory / "vocab.txt").write_text("\n".join([*pieces[:3], *SPECIALS, *pieces[3:]]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(3)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(directory)
    return directory


def test_every_teacher_piece_starts_from_the_same_piece_or_the_token_of_its_role(tmp_path):
    teacher = load_tokenizer(mpnet_base(tmp_path / "teacher"))
    small = load_tokenizer(small_bert(tmp_path / "small"))
    transfer = vocabulary_transfer(teacher, small, len(teacher))
    theirs, ours = small.get_vocab(), teacher.get_vocab()
    for word in [*WORDS, "##s", "[CLS]", "[PAD]"]:
        if word != MISSING:
            assert transfer.rows[ours[word]] == theirs[word], word
    for role, same in (("<s>", "[CLS]"), ("</s>", "[SEP]"), ("<pad>", "[PAD]"), ("<mask>", "[MASK]")):
        assert transfer.rows[ours[role]] == theirs[same], role
    # MPNet's unknown token is [UNK] (found by name); its <unk> is an unused piece, missing like MISSING
    assert transfer.rows[ours[MISSING]] == transfer.rows[ours["<unk>"]] == small.unk_token_id
    assert transfer.shared == pytest.approx((len(ours) - 2) / len(ours))


def _recipe(tmp_path: Path, students: list[dict], n: int = 80) -> Path:
    recipe = tiny_recipe_dict(mpnet_base(tmp_path / "teacher-base"), write_tiny_data(tmp_path / "data", n=n))
    recipe["teacher"]["epochs"] = 2
    recipe["students"] = students
    recipe["distillation"]["losses"] = {"hard": 0.5, "kd_kl": 0.5, "hidden_mse": 1.0}
    recipe["distillation"]["layer_map"] = "all"
    recipe["export"] = {"quantization": ["dynamic"]}
    recipe["bench"] = {"batch_sizes": [1], "seq_len": 16, "repeats": 2, "warmup": 1, "rounds": 1}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_student_from_a_smaller_pretrained_encoder_runs_to_an_int8_artifact(tmp_path):
    small = small_bert(tmp_path / "small")
    path = _recipe(tmp_path, [{"name": "p2", "layers": 2, "init_from": str(small), "vocab": "corpus",
                               "embedding_bits": 4}])
    out = tmp_path / "out"
    run_recipe(load_recipe(path), out)

    built = read_json(out / "students" / "p2" / "student.json")
    assert built["init_from"] == {"model": str(small), "layers": [1, 2], "shared_vocabulary": pytest.approx(
        built["init_from"]["shared_vocabulary"])} and 0.95 < built["init_from"]["shared_vocabulary"] < 1
    assert built["teacher_layers"] == [] and built["hidden_size"] == 16
    plain = AutoModel.from_pretrained(out / "students" / "p2")  # the small encoder's family and width
    assert plain.config.model_type == "bert" and plain.config.hidden_size == 16 and plain.config.num_hidden_layers == 2
    log = (out / "logs" / "student-p2.jsonl").read_text()
    assert "hidden_mse" in log
    manifest = read_json(out / "artifacts" / "p2" / "manifest.json")
    assert manifest["checks"]["fp32_max_abs_diff"] <= 1e-4
    [result] = Predictor(out / "artifacts" / "p2", precision="int8").predict(["the film was great fun with alice"])
    assert result["sentiment"]["label"] in ("pos", "neg") and isinstance(result["ner"], list)
    card = (out / "artifacts" / "p2" / "README.md").read_text()
    assert f"Initialised from {small}" in card and "its layers 1, 2" in card
    report = (out / "report.md").read_text()
    assert "init: 1,2" in report


def test_the_student_reads_teacher_ids_through_the_small_encoders_rows(tiny_teacher, tmp_path):
    from students.build import build_student

    recipe, teacher_dir, tokenizer, tasks = tiny_teacher  # BERT teacher of hidden 32, 4 layers
    small = small_bert(tmp_path / "small")
    spec = StudentSpec(name="p", layers=[0, 2], init_from=str(small))
    built = build_student(recipe, spec, tasks, teacher_dir, tokenizer)
    encoder = built.model.encoder
    source = BertModel.from_pretrained(small)
    theirs = load_tokenizer(small).get_vocab()
    table = encoder.get_input_embeddings().weight
    assert table.shape[0] == len(tokenizer) and encoder.config.hidden_size == 16 and built.teacher_layers == []
    word = tokenizer.get_vocab()["superb"]
    assert torch.equal(table[word], source.get_input_embeddings().weight[theirs["superb"]])
    assert torch.equal(encoder.encoder.layer[1].output.dense.weight, source.encoder.layer[2].output.dense.weight)
    assert built.model.heads["sentiment"].in_features == 16


@pytest.mark.parametrize(("student", "message"), [
    ({"layers": 4}, r"students\.p\.layers: 4 is more than .*small's 3 layers"),
    ({"layers": 1, "init_from": "pad0"}, r"students\.p\.init_from: .* counts positions from its padding id 0, the "
                                         r"teacher pads with id 1"),
    ({"layers": 1, "ffn": 8}, r"students\.0: .*init_from takes the pretrained encoder's own width"),
    ({"layers": 1, "init_from": "bpe"}, r"students\.p\.init_from: .* knows \d+% of the teacher's word pieces"),
    ({"layers": 1, "init_from": "nowhere/at/all"}, r"students\.p\.init_from: 'nowhere/at/all' at .* not found"),
])
def test_a_wrong_init_from_is_one_line_before_anything_is_written(student, message, tmp_path, capsys):
    from distill.cli import main

    small = small_bert(tmp_path / "small")
    others = {"bpe": lambda: family_base("roberta", tmp_path / "bpe"),
              "pad0": lambda: mpnet_base(tmp_path / "pad0", ("<pad>", "<s>", "</s>", "<unk>"))}
    spec = {"name": "p", "init_from": str(small), **student}
    if spec["init_from"] in others:
        spec["init_from"] = str(others[spec["init_from"]]())
    path = _recipe(tmp_path, [spec], n=20)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_init_from_refuses_what_needs_the_teachers_importance_scores():
    with pytest.raises(ValueError, match="init_from takes the pretrained encoder's own width"):
        StudentSpec(name="p", layers=2, init_from="x", hidden_size=16)
    with pytest.raises(ValueError, match="at least 1 character"):
        StudentSpec(name="p", layers=2, init_from="")
    with pytest.raises(DistillInputError, match=r"students\.p\.init_from: unknown demo model"):
        from distill.demo.assets import demo_model_path

        demo_model_path("demo:nothing", "students.p.init_from")


def test_the_base_demo_sweeps_minilm_students_beside_a_narrowed_teacher_copy():
    from distill.demo.recipes import demo_recipe

    students = demo_recipe(base=True).students
    started = [s for s in students if s.init_from == "demo:all-MiniLM-L6-v2"]
    assert len(students) >= 4 and len(started) >= 3 and any(s.init_from is None for s in students)
    assert all(s.embedding_bits == 4 for s in students)


def test_the_model_card_names_a_demo_encoder_by_its_hub_id():
    from distill.bench.model_card import _structure

    built = {"init_from": {"model": "demo:all-MiniLM-L6-v2", "layers": [1, 3, 5]}, "hidden_size": 384}
    lines = _structure({"models": [{"name": "p3", "role": "student", "student": built}]}, "p3", {"layers": 12})
    assert "Initialised from sentence-transformers/all-MiniLM-L6-v2 (not the teacher), its layers 1, 3, 5." in lines
    assert "| layers | 12 | 3 |" in lines
