"""The encoder's anatomy: where an encoder keeps its transformer layers, attention projections and embeddings.

Every stage that reaches into an encoder (layer dropping, pruning, narrowing, the teacher cache, the attention
losses) asks here instead of naming a model family's modules itself.
"""

from __future__ import annotations

from torch import nn

from distill.core.errors import DistillInputError

# Where the list of transformer layers hangs below the encoder (BERT-style, DistilBERT, ModernBERT, GPT-style).
LAYER_LIST_PATHS = ("encoder.layer", "transformer.layer", "layers", "h")
# The query, key and value projections' names inside one layer (BERT-style, DistilBERT, DeBERTa / BART-style).
PROJECTION_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"))
# What pruning heads, FFN neurons or the hidden size edits in a BERT-style layer (BERT, RoBERTa, MiniLM, ELECTRA).
BERT_LAYER_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                    "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")


def layer_list_owner(encoder: nn.Module) -> tuple[nn.Module, str]:
    """The module that holds the encoder's layer list, and the attribute it holds it under.

    A known path first; else the first module list with one entry per hidden layer."""
    for path in LAYER_LIST_PATHS:
        owner: nn.Module | None = encoder
        parts = path.split(".")
        for part in parts[:-1]:
            owner = getattr(owner, part, None)
        if owner is not None and isinstance(getattr(owner, parts[-1], None), nn.ModuleList):
            return owner, parts[-1]
    count = getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
    for name, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and name:
            owner_name, _, attr = name.rpartition(".")
            return encoder.get_submodule(owner_name), attr
    raise DistillInputError(f"cannot find the layer list of a {type(encoder).__name__} encoder")


def layer_list(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer layers."""
    owner, attr = layer_list_owner(encoder)
    return getattr(owner, attr)


def attention_projections(layer: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The query, key and value projections inside one transformer layer (Linear, or a peft LoRA wrapper)."""
    for module in layer.modules():
        for names in PROJECTION_NAMES:
            found = [getattr(module, n, None) for n in names]
            if all(isinstance(m, nn.Module) for m in found):  # a LoRA-wrapped Linear too
                return found[0], found[1], found[2]
    raise DistillInputError(f"cannot find query/key/value projections in a {type(layer).__name__}")


def bert_layers(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's transformer layers, checked to have BERT's named parts (what pruning edits)."""
    layers = list(layer_list(encoder))
    for part in BERT_LAYER_PARTS:
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
