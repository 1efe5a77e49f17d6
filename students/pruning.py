"""Removing attention heads and FFN neurons physically, so the saved student is a smaller vanilla HF model.

Heads go through transformers' own `prune_heads` (recorded in `config.pruned_heads`, re-applied on load);
FFN neurons by slicing `intermediate.dense` (rows) and `output.dense` (columns) with the same width in every
layer, so `config.intermediate_size` describes the model and `AutoModel.from_pretrained` rebuilds it as is.
"""

from __future__ import annotations

import torch
from transformers.pytorch_utils import prune_linear_layer

from distill.errors import DistillInputError
from students.structure import bert_layers
from teachers.multitask import MultiTaskModel


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
