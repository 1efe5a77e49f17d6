"""Vocabulary pruning: keep the word pieces the tasks use, shrink the embedding, and remap the tokenizer to match.

The student's tokenizer keeps the teacher's word pieces and segmentation (teacher-cache token positions still
line up); only the ids change: kept pieces get 0..N-1 in teacher order and every dropped piece maps to the id
of a kept piece: the nearest one in the teacher's embedding space (`vocab_dropped: nearest`), or [UNK].
`tokenizers` loads such a many-to-one vocabulary as is, but its serializer writes one piece per id, so
the student's tokenizer files are written here directly and never re-saved through tokenizers/transformers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.core.errors import DistillInputError
from distill.core.fileio import atomic_write_json, atomic_write_text, read_json
from distill.data.tasks import TaskData
from distill.model.multitask import MultiTaskModel
from distill.recipe.tasks import TRANSFER
from students.modules import StudentEmbedding
from students.vocab_map import VOCAB_FILE, VocabMap

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"


def token_counts(tasks: list[TaskData], splits: tuple[str, ...], size: int) -> np.ndarray:
    """How often each teacher id occurs in the given splits of every task (a split a task lacks counts 0)."""
    counts = np.zeros(size, dtype=np.int64)
    for task in tasks:
        for split in splits:
            for ids in task.encoded[split].input_ids if split in task.encoded else []:
                counts += np.bincount(ids, minlength=size)
    return counts


def choose_vocab(choice: str | int, tasks: list[TaskData], tokenizer: Any, teacher_size: int,
                 where: str = "students.vocab", embeddings: torch.Tensor | None = None) -> VocabMap:
    """`corpus`: every piece seen in the text the students train on (train and transfer splits); N: the N most
    frequent there (special tokens count in N).
    With the teacher's `embeddings` table, dropped pieces get their nearest kept piece (see `nearest_kept`)."""
    if tokenizer.unk_token_id is None:
        raise DistillInputError(f"{where}: the teacher's tokenizer has no unknown token to map dropped pieces to")
    _check_remappable(json.loads(tokenizer.backend_tokenizer.to_str())["model"], where)
    specials = sorted({int(i) for i in tokenizer.all_special_ids} | {int(i) for i in tokenizer.added_tokens_decoder})
    counts = token_counts(tasks, ("train", TRANSFER), teacher_size)
    counts[specials] = 0
    if choice == "corpus":
        chosen = np.flatnonzero(counts)
    else:
        if int(choice) <= len(specials):
            raise DistillInputError(f"{where}: {choice} pieces leave no room beside the {len(specials)} special tokens")
        order = np.argsort(-counts, kind="stable")
        chosen = order[: int(choice) - len(specials)]
        chosen = chosen[counts[chosen] > 0]
    kept = np.union1d(chosen, specials).astype(np.int64)
    vocab = VocabMap(kept, teacher_size, int(tokenizer.unk_token_id))
    if embeddings is None:
        return vocab
    pieces = tokenizer.convert_ids_to_tokens(list(range(teacher_size)))
    continuation = np.array([str(p).startswith("##") for p in pieces])
    vocab.substitutes = nearest_kept(embeddings, vocab, np.asarray(specials, dtype=np.int64), continuation)
    return vocab


def nearest_kept(embeddings: torch.Tensor, vocab: VocabMap, specials: np.ndarray, continuation: np.ndarray,
                 chunk: int = 2048) -> np.ndarray:
    """For every teacher id: itself when kept, else the kept non-special piece of the same kind (word start or
    ##continuation) with the most similar teacher embedding (cosine); [UNK] when no such piece exists."""
    substitutes = np.arange(vocab.teacher_size, dtype=np.int64)
    dropped = np.setdiff1d(np.arange(vocab.teacher_size), vocab.kept)
    unit = torch.nn.functional.normalize(embeddings.float(), dim=1)
    for kind in (False, True):
        targets = np.setdiff1d(vocab.kept[continuation[vocab.kept] == kind], specials)
        sources = dropped[continuation[dropped] == kind]
        if len(targets) == 0:
            substitutes[sources] = vocab.teacher_unk
            continue
        target_vectors = unit[torch.from_numpy(targets)]
        for start in range(0, len(sources), chunk):
            part = sources[start:start + chunk]
            best = (unit[torch.from_numpy(part)] @ target_vectors.T).argmax(dim=1).numpy()
            substitutes[part] = targets[best]
    return substitutes


def coverage(vocab: VocabMap, tasks: list[TaskData], specials: list[int]) -> dict[str, float]:
    """Per split, the share of the task corpora's tokens (special tokens left out) that the student keeps."""
    out = {}
    kept = np.zeros(vocab.teacher_size, dtype=bool)
    kept[vocab.kept] = True
    for split in ("train", "dev", "test"):
        counts = token_counts(tasks, (split,), vocab.teacher_size)
        counts[specials] = 0
        out[split] = float(counts[kept].sum() / max(counts.sum(), 1))
    return out


def prune_embeddings(model: MultiTaskModel, vocab: VocabMap) -> None:
    """Keep only the embedding rows of the kept pieces; the config records the new vocab and pad ids."""
    encoder = model.encoder
    old = encoder.get_input_embeddings()
    config = encoder.config
    pad = getattr(config, "pad_token_id", None)
    new_pad = int(vocab.id_map[pad]) if pad is not None else None
    new = nn.Embedding(vocab.size, old.embedding_dim, padding_idx=new_pad)
    with torch.no_grad():
        new.weight.copy_(old.weight[torch.from_numpy(vocab.kept)])
    encoder.set_input_embeddings(new)
    config.vocab_size = vocab.size
    if pad is not None:
        config.pad_token_id = new_pad


def accept_teacher_ids(model: MultiTaskModel, vocab: VocabMap) -> None:
    """Let the student take teacher token ids (the distiller's data and cache) by mapping them at its embedding."""
    old = model.encoder.get_input_embeddings()
    id_map = torch.from_numpy(vocab.id_map).to(old.weight.device)
    if isinstance(old, StudentEmbedding):
        old.id_map = id_map
    else:
        model.encoder.set_input_embeddings(StudentEmbedding(old, id_map))


def write_student_tokenizer(teacher_dir: Path, out_dir: Path, vocab: VocabMap) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json of the student, plus vocab_map.json."""
    source = Path(teacher_dir) / TOKENIZER_JSON
    if not source.is_file():
        raise DistillInputError(f"students.vocab: {teacher_dir} has no {TOKENIZER_JSON} to remap")
    data = json.loads(source.read_text(encoding="utf-8"))
    atomic_write_text(Path(out_dir) / TOKENIZER_JSON, json.dumps(remap_tokenizer_json(data, vocab), ensure_ascii=False))
    config_path = Path(teacher_dir) / TOKENIZER_CONFIG
    if config_path.is_file():
        config = read_json(config_path)
        config.pop("vocab_file", None)
        if "added_tokens_decoder" in config:
            config["added_tokens_decoder"] = {str(int(vocab.id_map[int(k)])): v
                                              for k, v in config["added_tokens_decoder"].items()}
        atomic_write_json(Path(out_dir) / TOKENIZER_CONFIG, config)
    if (Path(teacher_dir) / SPECIAL_TOKENS_MAP).is_file():
        shutil.copy2(Path(teacher_dir) / SPECIAL_TOKENS_MAP, Path(out_dir) / SPECIAL_TOKENS_MAP)
    atomic_write_json(Path(out_dir) / VOCAB_FILE, vocab.to_json())


def remap_tokenizer_json(data: dict[str, Any], vocab: VocabMap) -> dict[str, Any]:
    """A tokenizer.json whose model, added tokens, post-processor and padding emit student ids."""
    model = data["model"]
    _check_remappable(model, "students.vocab")
    id_map = vocab.id_map
    model["vocab"] = {piece: int(id_map[i]) for piece, i in model["vocab"].items()}
    for token in data.get("added_tokens") or []:
        token["id"] = int(id_map[token["id"]])
    _remap_processor(data.get("post_processor"), id_map)
    if data.get("padding"):
        data["padding"]["pad_id"] = int(id_map[data["padding"]["pad_id"]])
    return data


def _check_remappable(model: dict[str, Any], where: str) -> None:
    """A tokenizer model whose vocabulary maps pieces to ids by name (WordPiece, BPE) can read several pieces
    as one kept id; a Unigram (sentencepiece) model numbers its pieces by position and cannot."""
    if model.get("type") not in ("WordPiece", "BPE") or not isinstance(model.get("vocab"), dict):
        raise DistillInputError(f"{where}: vocabulary pruning needs a WordPiece or BPE tokenizer, whose vocabulary "
                                f"maps pieces to ids; a {model.get('type')} tokenizer numbers its pieces by position "
                                "(leave vocab out for this teacher)")


def _remap_processor(processor: dict[str, Any] | None, id_map: np.ndarray) -> None:
    if not processor:
        return
    for inner in processor.get("processors") or []:
        _remap_processor(inner, id_map)
    for special in (processor.get("special_tokens") or {}).values():
        special["ids"] = [int(id_map[i]) for i in special["ids"]]
    for key in ("cls", "sep"):
        if isinstance(processor.get(key), list):
            processor[key][1] = int(id_map[processor[key][1]])
