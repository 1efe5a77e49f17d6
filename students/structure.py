"""Where the parts of a BERT-style encoder live (BERT, RoBERTa, MiniLM, ELECTRA share this layout)."""

from __future__ import annotations

from torch import nn

from distill.errors import DistillInputError
from students.layers import layer_list

_LAYER_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")


def bert_layers(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's transformer layers, checked to have BERT's named parts (what pruning edits)."""
    layers = list(layer_list(encoder))
    for part in _LAYER_PARTS:
        owner: object = layers[0]
        for name in part.split("."):
            owner = getattr(owner, name, None)
        if owner is None:
            raise DistillInputError(
                f"students: pruning heads, FFN neurons or hidden size needs a BERT-style encoder (BERT, RoBERTa, "
                f"MiniLM, ELECTRA); a {type(encoder).__name__} layer has no {part}")
    return layers


def embeddings(encoder: nn.Module) -> nn.Module:
    """The encoder's embedding block (word, position and token-type embeddings and their LayerNorm)."""
    block = getattr(encoder, "embeddings", None)
    if block is None or not isinstance(getattr(block, "word_embeddings", None), nn.Embedding):
        raise DistillInputError(f"students: a {type(encoder).__name__} encoder has no embeddings.word_embeddings")
    return block
