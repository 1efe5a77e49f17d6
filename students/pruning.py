"""Removing attention heads and FFN neurons physically, so the saved student is a smaller vanilla HF model.

Heads: through transformers' own `prune_heads` where the family has it (recorded in `config.pruned_heads` and
re-applied on load: BERT, RoBERTa, ELECTRA, DistilBERT); refused, with the reason, where the config cannot
describe fewer heads (MPNet, DeBERTa-v2, ModernBERT: narrow the hidden size there). FFN neurons: by slicing
the FFN input (rows; both halves of a gated FFN) and output (columns) with the same width in every layer, so
the config's FFN width describes the model and `AutoModel.from_pretrained` rebuilds it as is. The layouts come
from `distill.model.encoder`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from distill.core.errors import DistillInputError
from distill.data.tasks import TaskData
from distill.model.encoder import (
    Anatomy,
    anatomy,
    config_value,
    layer_parts,
    part,
    set_config_value,
    set_part,
)
from distill.model.multitask import MultiTaskModel
from students.importance import score_importance
from students.modules import StudentLinear, plain_modules

log = logging.getLogger(__name__)
# The families whose own `prune_heads` writes config.pruned_heads, which `from_pretrained` applies again (BERT,
# RoBERTa, ELECTRA, DistilBERT) can lose heads; these cannot:
HEADS_REFUSED = {
    "MPNet": "MPNet's config cannot describe fewer heads of the same size (its relative-position bias has one "
             "column per head for every layer); narrow hidden_size instead, which keeps the same heads everywhere",
    "ModernBERT": "ModernBERT's config ties the head size to hidden_size / num_attention_heads, so fewer heads "
                  "would not rebuild; prune ffn or narrow hidden_size instead",
    "DeBERTa-v2": "DeBERTa's attention output projection is built hidden_size wide whatever its heads, so fewer "
                  "heads would not rebuild; prune ffn or narrow hidden_size instead",
}


def check_head_pruning(encoder: nn.Module, where: str) -> Anatomy:
    """The encoder's anatomy, or an input error when its family cannot lose heads."""
    family = anatomy(encoder, where)
    if family.family in HEADS_REFUSED:
        raise DistillInputError(f"{where}: {HEADS_REFUSED[family.family]}")
    if getattr(encoder.config, "pruned_heads", None):
        raise DistillInputError(f"{where}: the model's heads are pruned already")
    return family


def prune_heads(model: MultiTaskModel, keep: int, scores: torch.Tensor, where: str = "students.heads"
                ) -> dict[int, list[int]]:
    """Keep the `keep` most important heads of every layer; returns the removed heads per layer."""
    check_head_pruning(model.encoder, where)
    total = config_value(model.encoder.config, "heads")
    if keep > total:
        raise DistillInputError(f"{where}: {keep} is more than the teacher's {total} attention heads per layer")
    if keep == total:
        return {}
    removed = {layer: sorted(torch.argsort(row, descending=True, stable=True)[keep:].tolist())
               for layer, row in enumerate(scores)}
    remove_heads(model, removed)
    return removed


def remove_heads(model: MultiTaskModel, removed: dict[int, list[int]]) -> None:
    """Physically remove the given heads, through the family's own `prune_heads`."""
    check_head_pruning(model.encoder, "students.heads")
    model.encoder.prune_heads(removed)


def prune_ffn(model: MultiTaskModel, width: int, scores: torch.Tensor, where: str = "students.ffn") -> None:
    """Keep the `width` most important intermediate neurons of every layer."""
    family, layers = layer_parts(model.encoder, where)
    current = config_value(model.encoder.config, "ffn")
    if width > current:
        raise DistillInputError(f"{where}: {width} is more than the teacher's FFN width {current}")
    if width == current:
        return
    for layer, row in zip(layers, scores, strict=True):
        _keep_ffn(layer, family, torch.sort(torch.topk(row, width).indices).values, current)
    set_config_value(model.encoder.config, "ffn", width)


def _keep_ffn(layer: nn.Module, family: Anatomy, kept: torch.Tensor, current: int) -> None:
    """Slice one layer's FFN to the `kept` neurons (of `current`): rows of its input, columns of its output."""
    rows = torch.cat([kept, kept + current]) if family.ffn_glu else kept
    set_part(layer, family.ffn_in, prune_linear_layer(part(layer, family.ffn_in), rows, dim=0))
    set_part(layer, family.ffn_out, prune_linear_layer(part(layer, family.ffn_out), kept, dim=1))


@dataclass
class IterativePruning:
    """Prune → distil → prune: at the start of epochs 1..rounds, re-score the student being distilled and mask
    more heads and FFN neurons, reaching the targets at the last round. Masked units output exactly zero, so
    `apply_masks` (at saving) removes them physically without changing the outputs."""

    tasks: list[TaskData]
    pad_id: int
    examples: int
    rounds: int
    heads: int | None
    ffn: int | None
    history: list[dict] = field(default_factory=list)

    def install(self, model: MultiTaskModel, where: str = "students") -> None:
        """Put masks (all ones) on every layer's attention value and FFN input projections."""
        family, layers = layer_parts(model.encoder, where)
        config = model.encoder.config
        if self.heads is not None:
            check_head_pruning(model.encoder, f"{where}.heads")
            total_heads = config_value(config, "heads")
            if self.heads > total_heads:
                raise DistillInputError(f"{where}.heads: {self.heads} is more than the teacher's {total_heads} "
                                        "attention heads per layer")
        width = config_value(config, "ffn")
        if self.ffn is not None and self.ffn > width:
            raise DistillInputError(f"{where}.ffn: {self.ffn} is more than the teacher's FFN width {width}")
        for layer in layers:
            if self.heads is not None:
                _mask(layer, family.value)
            if self.ffn is not None:
                _mask(layer, family.ffn_in)

    def complete(self, epoch: int) -> bool:
        """Whether the student has its final size during `epoch` (only then may it be saved as the best)."""
        return epoch >= self.rounds

    def on_epoch_start(self, epoch: int, model: MultiTaskModel) -> None:
        if epoch > self.rounds:
            return
        scores = score_importance(model, self.tasks, self.pad_id, self.examples)
        family, layers = layer_parts(model.encoder, "students")
        config = model.encoder.config
        record: dict = {"epoch": epoch}
        if self.heads is not None:
            total = config_value(config, "heads")
            keep = total - math.ceil((total - self.heads) * epoch / self.rounds)
            for layer, row in zip(layers, scores.heads, strict=True):
                value = part(layer, family.value)
                head_size = value.out_features // total
                alive = value.mask.view(total, head_size)[:, 0] > 0
                value.mask.copy_(_top(row, alive, keep).float().repeat_interleave(head_size))
            record["heads"] = keep
        if self.ffn is not None:
            width = config_value(config, "ffn")
            keep = width - math.ceil((width - self.ffn) * epoch / self.rounds)
            for layer, row in zip(layers, scores.ffn, strict=True):
                dense = part(layer, family.ffn_in)
                kept = _top(row, dense.mask[:width] > 0, keep).float()
                dense.mask.copy_(kept.repeat(2) if family.ffn_glu else kept)
            record["ffn"] = keep
        self.history.append(record)
        log.info("pruning round %d of %d: %s", epoch, self.rounds, record)


def _mask(layer: nn.Module, path: str) -> None:
    linear = part(layer, path)
    set_part(layer, path, StudentLinear(linear, torch.ones(linear.out_features)))


def _top(scores: torch.Tensor, alive: torch.Tensor, keep: int) -> torch.Tensor:
    """A boolean mask of the `keep` best-scored units among those still alive."""
    ranked = torch.where(alive, scores, torch.full_like(scores, -math.inf))
    kept = torch.zeros_like(alive)
    kept[torch.topk(ranked, keep).indices] = True
    return kept


def apply_masks(model: MultiTaskModel) -> dict[int, list[int]]:
    """Physically remove the masked heads and FFN neurons (after iterative pruning); returns the removed heads."""
    family, layers = layer_parts(model.encoder, "students")
    config = model.encoder.config
    total = config_value(config, "heads")
    width = config_value(config, "ffn")
    removed: dict[int, list[int]] = {}
    for index, layer in enumerate(layers):
        value = part(layer, family.value) if family.value else None
        if isinstance(value, StudentLinear) and value.mask is not None:
            alive = value.mask.view(total, -1)[:, 0] > 0
            removed[index] = [h for h in range(total) if not alive[h]]
            value.mask = None
        dense = part(layer, family.ffn_in)
        if isinstance(dense, StudentLinear) and dense.mask is not None:
            kept = torch.nonzero(dense.mask[:width] > 0).flatten()
            dense.mask = None
            plain_modules(layer)
            _keep_ffn(layer, family, kept, width)
            set_config_value(config, "ffn", len(kept))
    removed = {k: v for k, v in removed.items() if v}
    if removed:
        plain_modules(model.encoder)
        remove_heads(model, removed)
    return removed
