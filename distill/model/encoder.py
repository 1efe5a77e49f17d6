"""The encoder's anatomy: per model family, where its layers, attention projections, FFN, norms and embeddings
are, and which config keys hold its sizes.

Every stage that reaches into an encoder (layer dropping, pruning, narrowing, vocabulary pruning, the teacher
cache, the attention losses, the exporter) asks here instead of naming one family's modules itself. Paths are
dotted attribute paths: layer parts below one transformer layer, the rest below the encoder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import nn

from distill.core.errors import DistillInputError

log = logging.getLogger(__name__)
# Where the list of transformer layers hangs below an encoder of a family this module does not know.
LAYER_LIST_PATHS = ("encoder.layer", "transformer.layer", "layers", "h")


@dataclass(frozen=True)
class ConfigKeys:
    """The config attributes that hold a family's sizes."""

    layers: str = "num_hidden_layers"
    heads: str = "num_attention_heads"
    hidden: str = "hidden_size"
    ffn: str = "intermediate_size"


@dataclass(frozen=True)
class Anatomy:
    """Where one family keeps its parts (None: the family has no such part)."""

    family: str
    model_types: tuple[str, ...]
    layers: str = "encoder.layer"
    # below a layer: separate query/key/value projections, or one fused [3H, H] projection (q, k, v in order)
    query: str | None = "attention.self.query"
    key: str | None = "attention.self.key"
    value: str | None = "attention.self.value"
    fused_qkv: str | None = None
    attention_output: str = "attention.output.dense"
    attention_norm: str | None = "attention.output.LayerNorm"
    ffn_in: str = "intermediate.dense"
    ffn_out: str = "output.dense"
    ffn_norm: str | None = "output.LayerNorm"
    ffn_glu: bool = False  # ffn_in holds 2 × width rows: the gate's, then the up projection's
    # below the encoder
    word_embeddings: str = "embeddings.word_embeddings"
    position_embeddings: str | None = "embeddings.position_embeddings"
    token_type_embeddings: str | None = "embeddings.token_type_embeddings"
    embedding_norm: str | None = "embeddings.LayerNorm"
    embedding_projection: str | None = None  # embeddings narrower than the hidden size (ELECTRA, DeBERTa)
    final_norm: str | None = None
    # a relative-position table every layer reads (its columns are heads, or its rows hidden units)
    relative_positions: str | None = None
    relative_norm: str | None = None  # a norm of that table (DeBERTa's)
    # softmax(QKᵀ/√d) of the projections is the attention (no relative-position scores or rotary added after)
    attention_from_qk: bool = True
    config: ConfigKeys = field(default_factory=ConfigKeys)

    @property
    def separate_qkv(self) -> tuple[str, str, str] | None:
        if self.query and self.key and self.value:
            return self.query, self.key, self.value
        return None


BERT = Anatomy("BERT", ("bert",))
FAMILIES = (
    BERT,
    Anatomy("RoBERTa", ("roberta", "xlm-roberta", "camembert")),
    Anatomy("ELECTRA", ("electra",), embedding_projection="embeddings_project"),
    Anatomy("DistilBERT", ("distilbert",), layers="transformer.layer", query="attention.q_lin",
            key="attention.k_lin", value="attention.v_lin", attention_output="attention.out_lin",
            attention_norm="sa_layer_norm", ffn_in="ffn.lin1", ffn_out="ffn.lin2", ffn_norm="output_layer_norm",
            token_type_embeddings=None,
            config=ConfigKeys(layers="n_layers", heads="n_heads", hidden="dim", ffn="hidden_dim")),
    Anatomy("MPNet", ("mpnet",), query="attention.attn.q", key="attention.attn.k", value="attention.attn.v",
            attention_output="attention.attn.o", attention_norm="attention.LayerNorm",
            token_type_embeddings=None, relative_positions="encoder.relative_attention_bias",
            attention_from_qk=False),
    Anatomy("DeBERTa-v2", ("deberta-v2",), query="attention.self.query_proj", key="attention.self.key_proj",
            value="attention.self.value_proj", embedding_projection="embeddings.embed_proj",
            relative_positions="encoder.rel_embeddings", relative_norm="encoder.LayerNorm", attention_from_qk=False),
    Anatomy("ModernBERT", ("modernbert",), layers="layers", query=None, key=None, value=None,
            fused_qkv="attn.Wqkv", attention_output="attn.Wo", attention_norm="attn_norm",
            ffn_in="mlp.Wi", ffn_out="mlp.Wo", ffn_norm="mlp_norm", ffn_glu=True,
            word_embeddings="embeddings.tok_embeddings", position_embeddings=None, token_type_embeddings=None,
            embedding_norm="embeddings.norm", final_norm="final_norm", attention_from_qk=False),
)
BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


def known_model_types() -> list[str]:
    return sorted(BY_MODEL_TYPE)


def find_anatomy(config: object) -> Anatomy | None:
    """The anatomy of a config's family, or None for a family distill does not know."""
    return BY_MODEL_TYPE.get(str(getattr(config, "model_type", "")))


def anatomy(encoder_or_config: object, stage: str) -> Anatomy:
    """The anatomy of an encoder's (or config's) family; an unknown family is an input error naming `stage`."""
    config = getattr(encoder_or_config, "config", encoder_or_config)
    found = find_anatomy(config)
    if found is None:
        model_type = getattr(config, "model_type", type(encoder_or_config).__name__)
        raise DistillInputError(
            f"{stage}: model_type {model_type!r} is not a family distill can take apart (it knows "
            f"{', '.join(known_model_types())}); students that only drop layers still work")
    return found


def part(owner: object, path: str | None) -> nn.Module | None:
    """The module at a dotted `path` below `owner` (None when the path or a step of it is missing)."""
    if path is None:
        return None
    for name in path.split("."):
        owner = getattr(owner, name, None)
        if owner is None:
            return None
    return owner if isinstance(owner, nn.Module) else None


def set_part(owner: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the module at a dotted `path` below `owner`."""
    parent, _, name = path.rpartition(".")
    setattr(owner.get_submodule(parent) if parent else owner, name, module)


def config_value(config: object, key: str, default: int | None = None) -> int:
    """One of a config's sizes, by its common name (layers, heads, hidden, ffn), whatever the family calls it;
    `default` when the config does not hold it."""
    family = find_anatomy(config)
    name = getattr(family.config if family else ConfigKeys(), key)
    return int(getattr(config, name) if default is None else getattr(config, name, default))


# position ids start after the padding id: the first pad_token_id + 1 rows of the table are never a position
POSITION_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "mpnet")


def usable_positions(config: object) -> int | None:
    """The longest input the encoder's position table takes (None: no absolute positions or no stated limit)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not positions or getattr(config, "position_biased_input", True) is False:  # DeBERTa's relative positions
        return None
    if getattr(config, "model_type", "") in POSITION_OFFSET_TYPES:
        positions -= int(getattr(config, "pad_token_id", 0) or 0) + 1
    return int(positions)


def config_sizes(config: object) -> dict[str, int]:
    """A config's layers, hidden, heads, ffn and vocab sizes by their common names (0 where it holds none)."""
    sizes = {key: config_value(config, key, default=0) for key in ("layers", "hidden", "heads", "ffn")}
    return {**sizes, "vocab": int(getattr(config, "vocab_size", 0) or 0)}


def set_config_value(config: object, key: str, value: int) -> None:
    """Set one of a config's sizes by its common name."""
    family = find_anatomy(config)
    setattr(config, getattr(family.config if family else ConfigKeys(), key), value)


def layer_list_owner(encoder: nn.Module) -> tuple[nn.Module, str]:
    """The module that holds the encoder's layer list, and the attribute it holds it under.

    The family's path; for an unknown family a known path, else the first module list with one entry per
    hidden layer (so dropping layers works without an anatomy)."""
    family = find_anatomy(getattr(encoder, "config", None))
    for path in (family.layers,) if family else LAYER_LIST_PATHS:
        parent, _, attr = path.rpartition(".")
        owner = part(encoder, parent) if parent else encoder
        if owner is not None and isinstance(getattr(owner, attr, None), nn.ModuleList):
            return owner, attr
    count = getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
    for name, module in encoder.named_modules():
        if name and isinstance(module, nn.ModuleList) and len(module) == count:
            owner_name, _, attr = name.rpartition(".")
            return encoder.get_submodule(owner_name), attr
    raise DistillInputError(f"cannot find the layer list of a {type(encoder).__name__} encoder")


def layer_list(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer layers."""
    owner, attr = layer_list_owner(encoder)
    return getattr(owner, attr)


def layer_parts(encoder: nn.Module, stage: str) -> tuple[Anatomy, list[nn.Module]]:
    """The family's anatomy and the encoder's layers, checked to hold every part the anatomy names."""
    family = anatomy(encoder, stage)
    layers = list(layer_list(encoder))
    paths = [family.fused_qkv] if family.fused_qkv else list(family.separate_qkv or ())
    paths += [family.attention_output, family.ffn_in, family.ffn_out]
    for path in paths:
        if part(layers[0], path) is None:
            raise DistillInputError(f"{stage}: a {type(encoder).__name__} layer has no {path}, which a "
                                    f"{family.family} layer should have")
    return family, layers


def attention_projections(encoder: nn.Module, layer: nn.Module) -> list[nn.Module]:
    """The query, key and value projections of one layer, or its one fused projection (Linear or a LoRA wrapper)."""
    family = anatomy(encoder, "attention losses")
    paths = [family.fused_qkv] if family.fused_qkv else list(family.separate_qkv or ())
    found = [part(layer, path) for path in paths]
    if not found or any(module is None for module in found):
        raise DistillInputError(f"cannot find the query/key/value projections ({', '.join(paths)}) in a "
                                f"{type(layer).__name__}")
    return found


def rebuilt(encoder: nn.Module, drop_unexpected: bool = False) -> nn.Module:
    """A fresh encoder built from `encoder.config` holding `encoder`'s weights: after an edit that changed sizes
    the config describes (heads, widths, layers), every module's own size attributes match the config again,
    exactly as `AutoModel.from_pretrained` will build the saved model. With `drop_unexpected`, weights the fresh
    model has no place for are dropped (and logged), as loading the saved model would drop them."""
    from transformers import AutoModel

    fresh = AutoModel.from_config(encoder.config)
    result = fresh.load_state_dict(encoder.state_dict(), strict=not drop_unexpected)
    if result.missing_keys:
        raise RuntimeError(f"rebuilding a {type(encoder).__name__} left weights unset: {result.missing_keys}")
    if result.unexpected_keys:
        log.info("a %s built from its config has no place for %s: dropped, as loading it would",
                 type(encoder).__name__, ", ".join(result.unexpected_keys))
    parameter = next(encoder.parameters())
    return fresh.to(device=parameter.device, dtype=parameter.dtype).train(encoder.training)


def head_size(config: object) -> int:
    """The width of one attention head (DeBERTa's config may state it; else hidden size / heads)."""
    stated = getattr(config, "attention_head_size", None)
    return int(stated) if stated else config_value(config, "hidden") // config_value(config, "heads")
