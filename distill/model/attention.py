"""Capturing the per-layer query, key and value projections of an encoder during a forward pass.

Attention-transfer (TinyBERT) and self-attention relation (MiniLM) losses need them for the student and
the teacher; the teacher cache stores them per real token, so attention probabilities can be recomputed
exactly from a cached query and key without storing L×L maps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from distill.core.errors import DistillInputError
from distill.model.encoder import attention_projections


@contextmanager
def capture_qkv(layers: nn.ModuleList, wanted: list[int]) -> Iterator[dict[int, list[torch.Tensor]]]:
    """While active, `captured[l]` holds [query, key, value] ([B, L, H] each) of hidden-state layer `l`.

    Layers are numbered like hidden states: 1 is the first transformer layer, len(layers) the last."""
    captured: dict[int, list[torch.Tensor]] = {}
    handles = []
    for number in wanted:
        if not 1 <= number <= len(layers):
            raise DistillInputError(f"attention layer {number} is outside 1..{len(layers)}")
        for slot, projection in enumerate(attention_projections(layers[number - 1])):
            def hook(_module, _inputs, output, number=number, slot=slot):
                captured.setdefault(number, [None, None, None])[slot] = output
            handles.append(projection.register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def attention_probs(query: torch.Tensor, key: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d) per head, [B, heads, L, L], with padded keys masked out."""
    q, k = split_heads(query, heads), split_heads(key, heads)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.softmax(-1)


def split_heads(states: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, H] -> [B, heads, L, H/heads]."""
    batch, length, width = states.shape
    if width % heads:
        raise DistillInputError(f"width {width} does not split into {heads} heads")
    return states.view(batch, length, heads, width // heads).transpose(1, 2)
