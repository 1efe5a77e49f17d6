"""Removing attention heads and FFN neurons physically, so the saved student is a smaller vanilla HF model.

Heads go through transformers' own `prune_heads` (recorded in `config.pruned_heads`, re-applied on load);
FFN neurons by slicing `intermediate.dense` (rows) and `output.dense` (columns) with the same width in every
layer, so `config.intermediate_size` describes the model and `AutoModel.from_pretrained` rebuilds it as is.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from transformers.pytorch_utils import prune_linear_layer

from distill.core.errors import DistillInputError
from distill.data.tasks import TaskData
from distill.model.encoder import bert_layers
from distill.model.multitask import MultiTaskModel
from students.importance import score_importance
from students.modules import StudentLinear, plain_modules

log = logging.getLogger(__name__)


def prune_heads(model: MultiTaskModel, keep: int, scores: torch.Tensor, where: str = "students.heads"
                ) -> dict[int, list[int]]:
    """Keep the `keep` most important heads of every layer; returns the removed heads per layer."""
    total = int(model.encoder.config.num_attention_heads)
    if getattr(model.encoder.config, "pruned_heads", None):
        raise DistillInputError(f"{where}: the model's heads are pruned already")
    if keep > total:
        raise DistillInputError(f"{where}: {keep} is more than the teacher's {total} attention heads per layer")
    if keep == total:
        return {}
    removed = {layer: sorted(torch.argsort(row, descending=True, stable=True)[keep:].tolist())
               for layer, row in enumerate(scores)}
    model.encoder.prune_heads(removed)
    return removed


def prune_ffn(model: MultiTaskModel, width: int, scores: torch.Tensor, where: str = "students.ffn") -> None:
    """Keep the `width` most important intermediate neurons of every layer."""
    layers = bert_layers(model.encoder)
    current = layers[0].intermediate.dense.out_features
    if width > current:
        raise DistillInputError(f"{where}: {width} is more than the teacher's FFN width {current}")
    if width == current:
        return
    for layer, row in zip(layers, scores, strict=True):
        kept = torch.sort(torch.topk(row, width).indices).values
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, kept, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, kept, dim=1)
    model.encoder.config.intermediate_size = width


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
        layers = bert_layers(model.encoder)
        total_heads = int(model.encoder.config.num_attention_heads)
        if self.heads is not None and self.heads > total_heads:
            raise DistillInputError(f"{where}.heads: {self.heads} is more than the teacher's {total_heads} "
                                    "attention heads per layer")
        width = layers[0].intermediate.dense.out_features
        if self.ffn is not None and self.ffn > width:
            raise DistillInputError(f"{where}.ffn: {self.ffn} is more than the teacher's FFN width {width}")
        for layer in layers:
            value = layer.attention.self.value
            layer.attention.self.value = StudentLinear(value, torch.ones(value.out_features))
            dense = layer.intermediate.dense
            layer.intermediate.dense = StudentLinear(dense, torch.ones(dense.out_features))

    def complete(self, epoch: int) -> bool:
        """Whether the student has its final size during `epoch` (only then may it be saved as the best)."""
        return epoch >= self.rounds

    def on_epoch_start(self, epoch: int, model: MultiTaskModel) -> None:
        if epoch > self.rounds:
            return
        scores = score_importance(model, self.tasks, self.pad_id, self.examples)
        layers = bert_layers(model.encoder)
        record: dict = {"epoch": epoch}
        if self.heads is not None:
            total = int(model.encoder.config.num_attention_heads)
            keep = total - math.ceil((total - self.heads) * epoch / self.rounds)
            for layer, row in zip(layers, scores.heads, strict=True):
                value = layer.attention.self.value
                head_size = value.out_features // total
                alive = value.mask.view(total, head_size)[:, 0] > 0
                kept = _top(row, alive, keep)
                value.mask.copy_(kept.float().repeat_interleave(head_size))
            record["heads"] = keep
        if self.ffn is not None:
            width = layers[0].intermediate.dense.out_features
            keep = width - math.ceil((width - self.ffn) * epoch / self.rounds)
            for layer, row in zip(layers, scores.ffn, strict=True):
                dense = layer.intermediate.dense
                dense.mask.copy_(_top(row, dense.mask > 0, keep).float())
            record["ffn"] = keep
        self.history.append(record)
        log.info("pruning round %d of %d: %s", epoch, self.rounds, record)


def _top(scores: torch.Tensor, alive: torch.Tensor, keep: int) -> torch.Tensor:
    """A boolean mask of the `keep` best-scored units among those still alive."""
    ranked = torch.where(alive, scores, torch.full_like(scores, -math.inf))
    kept = torch.zeros_like(alive)
    kept[torch.topk(ranked, keep).indices] = True
    return kept


def apply_masks(model: MultiTaskModel) -> dict[int, list[int]]:
    """Physically remove the masked heads and FFN neurons (after iterative pruning); returns the removed heads."""
    layers = bert_layers(model.encoder)
    total = int(model.encoder.config.num_attention_heads)
    removed: dict[int, list[int]] = {}
    for index, layer in enumerate(layers):
        value = layer.attention.self.value
        if isinstance(value, StudentLinear) and value.mask is not None:
            alive = value.mask.view(total, -1)[:, 0] > 0
            removed[index] = [h for h in range(total) if not alive[h]]
            value.mask = None
        dense = layer.intermediate.dense
        if isinstance(dense, StudentLinear) and dense.mask is not None:
            kept = torch.nonzero(dense.mask > 0).flatten()
            dense.mask = None
            plain_modules(layer)
            layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, kept, dim=0)
            layer.output.dense = prune_linear_layer(layer.output.dense, kept, dim=1)
            model.encoder.config.intermediate_size = len(kept)
    removed = {k: v for k, v in removed.items() if v}
    if removed:
        plain_modules(model.encoder)
        model.encoder.prune_heads(removed)
    return removed
