"""Layer numbers as hidden states count them: 0 is the embedding output, 1 the first transformer layer and the
model's layer count the last; negative numbers count from the end (-1 is the last layer).

The recipe, the teacher cache and the layer losses all number layers this way."""

from __future__ import annotations

from collections.abc import Sequence

from distill.core.errors import DistillInputError


def absolute_layer(number: int, count: int) -> int:
    """`number` with a negative one counted from the end of a model with `count` transformer layers."""
    return number if number >= 0 else count + 1 + number


def normalise_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    """Hidden-state numbers 0..num_layers (0 = embeddings), sorted and distinct."""
    out = sorted({absolute_layer(layer, num_layers) for layer in layers})
    if out and (out[0] < 0 or out[-1] > num_layers):
        raise DistillInputError(f"distillation.hidden_layers: {list(layers)} is outside 0..{num_layers}")
    return out


def normalise_attention_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    """Transformer layer numbers 1..num_layers (the embeddings have no attention), sorted and distinct."""
    out = sorted({absolute_layer(layer, num_layers) for layer in layers})
    if out and (out[0] < 1 or out[-1] > num_layers):
        raise DistillInputError(f"cache.attention_layers: {list(layers)} is outside 1..{num_layers} "
                                f"(or -{num_layers}..-1)")
    return out
