"""A student initialised from another pretrained, smaller encoder (`students.<name>.init_from`) instead of the
teacher's own layers.

A narrowed copy of a base-size teacher keeps few of its pretrained features; a compact model pretrained on its
own (MiniLM, a small BERT) starts from general language knowledge at the student's size, and distillation then
only has to teach it the tasks (Turc et al., "Well-Read Students Learn Better"). The student must read the
teacher's token ids (the cache and the task data are the teacher's tokenisation), so its word-embedding table
is rebuilt in the teacher's vocabulary: each teacher piece takes the row of the same piece in the encoder's
vocabulary, a special token the row of the encoder's token of the same role ([CLS] for <s>, ...), and a
piece the encoder lacks its unknown-token row. That needs tokenizers of one kind (both word-piece, say):
`check_init_from` refuses an encoder that shares too little of the teacher's vocabulary, or that counts
positions from a padding id other than the teacher's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModel

from distill.core.errors import DistillInputError
from distill.core.tokenizer import load_tokenizer
from distill.demo.assets import demo_model_path
from distill.model.encoder import POSITION_OFFSET_TYPES, config_value, usable_positions
from distill.model.multitask import MultiTaskModel
from distill.recipe import Recipe, StudentSpec
from students.layers import keep_layers, pick_layers

log = logging.getLogger(__name__)
MIN_SHARED_VOCAB = 0.9
# the roles a special token plays, and where a tokenizer without that role keeps the same token
SPECIAL_ROLES = {"cls_token": ("cls_token", "bos_token"), "bos_token": ("bos_token", "cls_token"),
                 "sep_token": ("sep_token", "eos_token"), "eos_token": ("eos_token", "sep_token"),
                 "pad_token": ("pad_token",), "unk_token": ("unk_token",), "mask_token": ("mask_token",)}


@dataclass
class VocabularyTransfer:
    """For each teacher id, the row of the pretrained encoder's embedding table it starts from."""

    rows: np.ndarray
    shared: float  # the share of the teacher's pieces found in the encoder's vocabulary (by string or role)

    def details(self) -> dict[str, float]:
        return {"shared_vocabulary": round(self.shared, 4)}


def init_source(recipe: Recipe, spec: StudentSpec) -> str:
    """The path (or hub id) of `spec.init_from`: a demo model, a path against the recipe's directory, a hub id."""
    assert spec.init_from is not None
    if spec.init_from.startswith("demo:"):
        return str(demo_model_path(spec.init_from, f"students.{spec.name}.init_from"))
    return recipe.resolve(spec.init_from, f"students.{spec.name}.init_from")


def check_init_from(recipe: Recipe, spec: StudentSpec, teacher_tokenizer: Any,
                    teacher_size: int | None = None) -> VocabularyTransfer:
    """Refuse, before any work, an `init_from` encoder that is missing, has fewer layers than the student keeps,
    counts positions from another padding id than the teacher's, has fewer positions than `max_length`, or shares
    under MIN_SHARED_VOCAB of the teacher's vocabulary. Returns where each of the teacher's `teacher_size`
    embedding rows (default: its tokenizer's length) starts."""
    from transformers import AutoConfig

    where = f"students.{spec.name}.init_from"
    source = init_source(recipe, spec)
    trust = recipe.teacher.trust_remote_code
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust)
        tokenizer = load_tokenizer(source, trust)
    except (OSError, ValueError) as exc:
        raise DistillInputError(f"{where}: {source} is not a model directory with a config.json and a tokenizer: "
                                f"{exc}".replace("\n", " ")) from exc
    pick_layers(spec.layers, config_value(config, "layers"), spec.layer_strategy, f"students.{spec.name}.layers",
                f"{spec.init_from}'s")
    theirs, ours = getattr(config, "pad_token_id", None), teacher_tokenizer.pad_token_id
    if getattr(config, "model_type", "") in POSITION_OFFSET_TYPES and theirs != ours:
        raise DistillInputError(f"{where}: {source} counts positions from its padding id {theirs}, the teacher pads "
                                f"with id {ours}: the student would read shifted positions; pick an encoder that "
                                "pads like the teacher")
    positions = usable_positions(config)
    if positions is not None and recipe.max_length > positions:
        raise DistillInputError(f"{where}: {source} has {positions} positions, fewer than max_length "
                                f"{recipe.max_length}")
    transfer = vocabulary_transfer(teacher_tokenizer, tokenizer, teacher_size or len(teacher_tokenizer),
                                   int(config.vocab_size))
    if transfer.shared < MIN_SHARED_VOCAB:
        raise DistillInputError(
            f"{where}: {source} knows {transfer.shared:.0%} of the teacher's word pieces (needs "
            f"{MIN_SHARED_VOCAB:.0%}): the student reads the teacher's tokens, so pick an encoder whose tokenizer is "
            "of the teacher's kind (the same word pieces, e.g. a BERT-uncased model for a BERT or MPNet teacher)")
    return transfer


def vocabulary_transfer(teacher_tokenizer: Any, tokenizer: Any, size: int,
                        their_size: int | None = None) -> VocabularyTransfer:
    """Where each of the `size` teacher ids (the teacher's embedding rows) finds its starting row: the same string
    in `tokenizer`'s vocabulary, the token of the same special role, or the unknown token. `their_size`: the
    encoder's embedding rows (a tokenizer may know more ids than its model has rows; those are missing)."""
    limit = their_size if their_size is not None else len(tokenizer)
    theirs = {piece: index for piece, index in tokenizer.get_vocab().items() if index < limit}
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None and tokenizer.unk_token_id < limit else 0
    ours = {piece: index for piece, index in teacher_tokenizer.get_vocab().items() if index < size}
    rows = np.full(size, unk, dtype=np.int64)
    found = np.zeros(size, dtype=bool)
    for piece, index in ours.items():
        if piece in theirs:
            rows[index], found[index] = theirs[piece], True
    for role, fallbacks in SPECIAL_ROLES.items():
        token = getattr(teacher_tokenizer, role, None)
        index = ours.get(token) if token is not None else None
        same = next((getattr(tokenizer, f) for f in fallbacks if getattr(tokenizer, f, None) in theirs), None)
        if index is not None and same is not None:
            rows[index], found[index] = theirs[same], True
    return VocabularyTransfer(rows, float(found.sum() / max(len(ours), 1)))


def pretrained_student(recipe: Recipe, spec: StudentSpec, teacher: MultiTaskModel,
                       teacher_tokenizer: Any) -> tuple[MultiTaskModel, dict[str, Any]]:
    """The student `spec` describes, from its `init_from` encoder: the kept layers, the word embeddings in the
    teacher's vocabulary, and new task heads at its width. Returns it and its details for student.json."""
    transfer = check_init_from(recipe, spec, teacher_tokenizer, int(teacher.encoder.config.vocab_size))
    source = init_source(recipe, spec)
    encoder = AutoModel.from_pretrained(source, trust_remote_code=recipe.teacher.trust_remote_code)
    keep = pick_layers(spec.layers, config_value(encoder.config, "layers"), spec.layer_strategy)
    _read_teacher_ids(encoder, transfer, teacher.encoder.config, teacher_tokenizer)
    student = keep_layers(MultiTaskModel(encoder, list(teacher.tasks.values())), keep)
    log.info("student %s: from %s, its layers %s, %.1f%% of the teacher's vocabulary shared", spec.name, source,
             keep, 100 * transfer.shared)
    return student, {"init_from": {"model": spec.init_from, "layers": keep, **transfer.details()}}


def _read_teacher_ids(encoder: nn.Module, transfer: VocabularyTransfer, teacher_config: Any,
                      teacher_tokenizer: Any) -> None:
    """Rebuild `encoder`'s word embeddings in the teacher's vocabulary; its config takes the teacher's vocabulary
    size and padding id (so a reload builds the same table)."""
    old = encoder.get_input_embeddings()
    pad = teacher_tokenizer.pad_token_id
    pad = getattr(teacher_config, "pad_token_id", None) if pad is None else pad
    table = nn.Embedding(len(transfer.rows), old.embedding_dim, padding_idx=pad)
    with torch.no_grad():
        table.weight.copy_(old.weight[torch.from_numpy(transfer.rows)])
    encoder.set_input_embeddings(table)
    encoder.config.vocab_size = len(transfer.rows)
    encoder.config.pad_token_id = pad
