import json

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoModel

from distill.core.tokenizer import load_tokenizer
from distill.export.artifact import export_artifact
from distill.model.multitask import MultiTaskModel
from distill.recipe import ExportSpec, StudentSpec
from distill.runtime import Predictor
from students.build import build_student
from students.vocab import choose_vocab, token_counts
from students.vocab_map import VOCAB_FILE, load_vocab_map, student_inputs

TEXTS = ["the film was really good", "alice and bob went to paris", "superb xyz movie, boring!", "rome"]


def _kept_pieces(tokenizer, vocab) -> set[str]:
    names = {i: p for p, i in tokenizer.get_vocab().items()}
    return {names[int(i)] for i in vocab.kept}


def test_vocab_keeps_specials_and_the_most_frequent_pieces(tiny_teacher):
    _, _, tokenizer, tasks = tiny_teacher
    size = len(tokenizer)
    counts = token_counts(tasks, ("train",), size)
    corpus = choose_vocab("corpus", tasks, tokenizer, size)
    specials = set(tokenizer.all_special_ids)
    assert specials <= set(corpus.kept.tolist())
    assert set(corpus.kept.tolist()) == specials | set(np.flatnonzero(counts).tolist())
    top = choose_vocab(12, tasks, tokenizer, size)
    assert top.size == 12 and specials <= set(top.kept.tolist())
    others = [i for i in top.kept.tolist() if i not in specials]
    dropped = [i for i in np.flatnonzero(counts) if i not in top.kept and i not in specials]
    assert min(counts[others]) >= max(counts[dropped])
    assert top.id_map[tokenizer.unk_token_id] == top.to_student(np.array([dropped[0]]))[0]


def test_student_tokenizer_keeps_segmentation_with_dropped_pieces_as_unk(tiny_teacher, tmp_path):
    recipe, teacher_dir, tokenizer, tasks = tiny_teacher
    spec = StudentSpec(name="v", layers=2, vocab=12, vocab_dropped="unk")
    built = build_student(recipe, spec, tasks, teacher_dir, tokenizer)
    built.save(built.model, tmp_path / "v", tokenizer)
    vocab = load_vocab_map(tmp_path / "v")
    assert vocab is not None and vocab.size == 12
    assert not (tmp_path / "v" / "vocab.txt").exists(), "the teacher's vocab.txt would contradict the new ids"
    student_tok = load_tokenizer(tmp_path / "v")
    runtime_tok = Tokenizer.from_file(str(tmp_path / "v" / "tokenizer.json"))
    teacher_enc = tokenizer(TEXTS)
    student_enc = student_tok(TEXTS)
    for row, text in enumerate(TEXTS):
        teacher_ids = np.asarray(teacher_enc["input_ids"][row])
        assert student_enc["input_ids"][row] == vocab.to_student(teacher_ids).tolist()
        assert student_enc.tokens(row) == teacher_enc.tokens(row), "same segmentation"
        assert runtime_tok.encode(text).ids == student_enc["input_ids"][row]
        assert runtime_tok.encode(text).offsets == teacher_enc.encodings[row].offsets
    unk = student_tok.unk_token_id
    assert unk == vocab.id_map[tokenizer.unk_token_id] and student_tok.pad_token_id == vocab.id_map[0]
    assert max(max(ids) for ids in student_enc["input_ids"]) < vocab.size
    pieces = _kept_pieces(tokenizer, vocab)
    kept_words = [w for w in ("the", "film", "was", "good", "bad", "a") if w in pieces]
    kept_text = " ".join(kept_words)
    assert student_tok.decode(student_tok(kept_text)["input_ids"], skip_special_tokens=True) == kept_text
    dropped_word = next(w for w in ("xyz", "rome", "paris", "superb", "alice") if w not in pieces)
    assert student_tok.decode(student_tok(dropped_word)["input_ids"]) == "[CLS] [UNK] [SEP]"
    details = json.loads((tmp_path / "v" / "student.json").read_text())["vocab"]
    assert details["size"] == 12 and 0 < details["coverage"]["test"] < 1
    assert set(details["teacher_dev_score"]) >= {"full_vocab", "student_vocab"}


def test_dropped_pieces_read_the_nearest_kept_piece_of_their_kind(tiny_teacher, tmp_path):
    recipe, teacher_dir, tokenizer, tasks = tiny_teacher
    built = build_student(recipe, StudentSpec(name="v", layers=2, vocab=12), tasks, teacher_dir, tokenizer)
    built.save(built.model, tmp_path / "v", tokenizer)
    vocab = load_vocab_map(tmp_path / "v")
    assert vocab is not None and vocab.substitutes is not None
    table = torch.nn.functional.normalize(
        MultiTaskModel.load(teacher_dir).encoder.get_input_embeddings().weight.detach(), dim=1).numpy()
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    specials = set(tokenizer.all_special_ids)
    kept = set(vocab.kept.tolist())
    for teacher_id in range(len(tokenizer)):
        sub = int(vocab.substitutes[teacher_id])
        if teacher_id in kept:
            assert sub == teacher_id
            continue
        same_kind = [k for k in kept if k not in specials
                     and pieces[k].startswith("##") == pieces[teacher_id].startswith("##")]
        if not same_kind:
            assert sub == tokenizer.unk_token_id
            continue
        assert sub in same_kind
        assert table[teacher_id] @ table[sub] >= max(table[teacher_id] @ table[k] for k in same_kind) - 1e-6
    student_tok = load_tokenizer(tmp_path / "v")
    runtime_tok = Tokenizer.from_file(str(tmp_path / "v" / "tokenizer.json"))
    for text in TEXTS:
        expected = vocab.to_student(np.asarray(tokenizer(text)["input_ids"])).tolist()
        assert student_tok(text)["input_ids"] == expected and runtime_tok.encode(text).ids == expected
    dropped = [i for i in range(len(tokenizer)) if i not in kept and i not in specials]
    assert dropped and all(vocab.id_map[i] != vocab.id_map[tokenizer.unk_token_id] for i in dropped
                           if int(vocab.substitutes[i]) != tokenizer.unk_token_id)


def test_vocab_student_reads_teacher_ids_in_training_and_its_own_ids_once_saved(tiny_teacher, tmp_path):
    recipe, teacher_dir, tokenizer, tasks = tiny_teacher
    built = build_student(recipe, StudentSpec(name="v", layers=2, vocab="corpus"), tasks, teacher_dir, tokenizer)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    built.model.eval()
    with torch.no_grad():
        in_training = built.model(enc["input_ids"], enc["attention_mask"]).logits
    built.save(built.model, tmp_path / "v", tokenizer)
    plain = AutoModel.from_pretrained(tmp_path / "v")
    assert plain.config.vocab_size == built.vocab.size < len(tokenizer)
    assert plain.get_input_embeddings().weight.shape[0] == built.vocab.size
    student_enc = load_tokenizer(tmp_path / "v")(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        saved = MultiTaskModel.load(tmp_path / "v")(student_enc["input_ids"], student_enc["attention_mask"]).logits
    for name in in_training:
        assert torch.allclose(in_training[name], saved[name], atol=1e-5)
    remapped, pad = student_inputs(tmp_path / "v", tasks, tokenizer.pad_token_id)
    assert pad == built.vocab.id_map[tokenizer.pad_token_id]
    assert remapped[0].encoded["dev"].input_ids[0].tolist() == built.vocab.to_student(
        tasks[0].encoded["dev"].input_ids[0]).tolist()
    assert student_inputs(teacher_dir, tasks, 0) == (tasks, 0), "a teacher-vocab model is left alone"


def test_vocab_student_exports_and_predicts_through_its_own_tokenizer(tiny_teacher, tmp_path):
    recipe, teacher_dir, tokenizer, tasks = tiny_teacher
    built = build_student(recipe, StudentSpec(name="v", layers=2, vocab=14), tasks, teacher_dir, tokenizer)
    built.save(built.model, tmp_path / "v", tokenizer)
    assert (tmp_path / "v" / VOCAB_FILE).is_file()
    student_tasks, pad = student_inputs(tmp_path / "v", tasks, tokenizer.pad_token_id)
    manifest = export_artifact(tmp_path / "v", tmp_path / "a", student_tasks, ExportSpec(quantization=["dynamic"]),
                               recipe.max_length, pad)
    assert manifest["checks"]["fp32_max_abs_diff"] < 1e-4
    predictor = Predictor(tmp_path / "a", precision="fp32")
    got = predictor.predict(["superb film", "bad xyz story"])
    enc = tokenizer(["superb film", "bad xyz story"], padding=True, return_tensors="pt")
    built.model.eval()
    with torch.no_grad():
        logits = built.model(enc["input_ids"], enc["attention_mask"], task="sentiment").logits["sentiment"]
    labels = next(t for t in tasks if t.info.name == "sentiment").info.labels
    assert [g["sentiment"]["label"] for g in got] == [labels[i] for i in logits.argmax(-1).tolist()]
