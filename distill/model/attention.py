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
from distill.model.encoder import attention_projections, layer_list


@contextmanager
def capture_qkv(encoder: nn.Module, wanted: list[int]) -> Iterator[dict[int, list[torch.Tensor]]]:
    """While active, `captured[l]` holds [query, key, value] ([B, L, H] each) of hidden-state layer `l`.

    Layers are numbered like hidden states: 1 is the first transformer layer, the layer count the last. A fused
    projection (ModernBERT's Wqkv) is split into its three parts; only a projection's first call in a forward
    pass counts (the tokens, not DeBERTa's relative-position embeddings)."""
    captured: dict[int, list[torch.Tensor]] = {}
    handles = []
    layers = layer_list(encoder) if wanted else []
    for number in wanted:
        if not 1 <= number <= len(layers):
            raise DistillInputError(f"attention layer {number} is outside 1..{len(layers)}")
        projections = attention_projections(encoder, layers[number - 1])
        fused = len(projections) == 1
        for slot, projection in enumerate(projections):
            def hook(_module, _inputs, output, number=number, slot=slot, fused=fused):
                parts = captured.setdefault(number, [None, None, None])
                if parts[slot] is not None:  # a later call (DeBERTa projects its relative positions too)
                    return
                output = output.float()  # fp32 for the losses under bf16 autocast
                if fused:
                    parts[:] = output.chunk(3, dim=-1)
                else:
                    parts[slot] = output
            handles.append(projection.register_forward_hook(hook))
    if wanted:  # each forward pass starts afresh
        handles.append(encoder.register_forward_pre_hook(lambda *_: captured.clear()))
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
