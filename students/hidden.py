"""A narrower hidden size, initialised from the teacher through a projection P [H, h] of the residual stream.

Every weight that reads the hidden state is multiplied by P on its input side, every weight (and bias and
LayerNorm parameter) that writes it by Pᵀ on its output side. `variance` keeps the h coordinates of highest
variance (P selects columns of the identity: LayerNorm parameters carry over exactly); `pca` projects onto the
top-h principal directions. Attention keeps the teacher's head size, so h / head size heads remain per layer
(the most important ones; the same ones in every layer where a relative-position table has a column per
head). The parts come from the family's anatomy (`distill.model.encoder`); a table or norm narrower than the
hidden size (embeddings behind a projection) stays as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from distill.core.errors import DistillInputError
from distill.data.batching import eval_batches, pad_batch
from distill.data.tasks import EncodedSplit, TaskData
from distill.model.encoder import (
    Anatomy,
    config_value,
    head_size,
    layer_parts,
    part,
    rebuilt,
    set_config_value,
    set_part,
)
from distill.model.multitask import MultiTaskModel


def hidden_covariance(model: MultiTaskModel, tasks: list[TaskData], pad_id: int, examples: int,
                      batch_size: int = 32) -> torch.Tensor:
    """Covariance [H, H] of the hidden states (embeddings and every layer) over real tokens of train examples."""
    hidden = int(model.encoder.config.hidden_size)
    total = torch.zeros(hidden, dtype=torch.float64)
    outer = torch.zeros(hidden, hidden, dtype=torch.float64)
    count = 0
    model.eval()
    with torch.inference_mode():
        for task in tasks:
            train = task.encoded["train"]
            split = EncodedSplit(train.input_ids[:examples], train.labels[:examples])
            for indices in eval_batches(split, batch_size):
                batch = pad_batch(task.info.name, split, indices, pad_id)
                mask = torch.from_numpy(batch.attention_mask).bool()
                out = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask),
                            task=task.info.name, output_hidden_states=True)
                for states in out.hidden_states:
                    tokens = states[mask].double()
                    total += tokens.sum(0)
                    outer += tokens.T @ tokens
                    count += len(tokens)
    mean = total / max(count, 1)
    return (outer / max(count, 1) - torch.outer(mean, mean)).float()


def projection(covariance: torch.Tensor, width: int, method: str) -> torch.Tensor:
    """P [H, width] with orthonormal columns: top-variance coordinates, or top principal directions."""
    if method == "variance":
        kept = torch.sort(torch.topk(torch.diagonal(covariance), width).indices).values
        return torch.eye(covariance.shape[0])[:, kept]
    _, vectors = torch.linalg.eigh(covariance.double())
    return vectors[:, -width:].flip(1).float().contiguous()


def narrow_hidden(model: MultiTaskModel, width: int, project: torch.Tensor, head_scores: torch.Tensor | None,
                  where: str = "students.hidden_size") -> list[list[int]]:
    """Shrink the hidden size to `width` in place; returns the heads kept per layer (indices into the teacher's)."""
    encoder = model.encoder
    config = encoder.config
    family, layers = layer_parts(encoder, where)
    hidden, heads = config_value(config, "hidden"), config_value(config, "heads")
    if getattr(config, "pruned_heads", None):
        raise DistillInputError(f"{where}: narrowing a model whose heads are already pruned is not supported")
    size = head_size(config)
    if width >= hidden or width % size:
        raise DistillInputError(f"{where}: {width} must be below the teacher's {hidden} and a multiple of its "
                                f"attention head size {size}")
    projection_layer = part(encoder, family.embedding_projection)
    if isinstance(projection_layer, nn.Linear) and projection_layer.in_features == width:
        raise DistillInputError(f"{where}: {width} equals the embedding size, where a {family.family} model has no "
                                "embedding projection to narrow; pick another width")
    relative = part(encoder, family.relative_positions)
    per_head_table = isinstance(relative, nn.Embedding) and relative.embedding_dim == heads
    chosen = _kept_heads(head_scores, len(layers), heads, width // size, shared=per_head_table)
    for layer, kept in zip(layers, chosen, strict=True):
        rows = torch.cat([torch.arange(h * size, (h + 1) * size) for h in kept])
        if family.fused_qkv:
            all_heads = heads * size
            _replace(layer, family.fused_qkv, torch.cat([rows, rows + all_heads, rows + 2 * all_heads]), project)
        for path in family.separate_qkv or ():
            _replace(layer, path, rows, project)
        old = part(layer, family.attention_output)
        set_part(layer, family.attention_output, _linear(project.T @ old.weight[:, rows], _out(old.bias, project)))
        old = part(layer, family.ffn_in)
        set_part(layer, family.ffn_in, _linear(old.weight @ project, old.bias))
        old = part(layer, family.ffn_out)
        set_part(layer, family.ffn_out, _linear(project.T @ old.weight, _out(old.bias, project)))
        for path in (family.attention_norm, family.ffn_norm):
            _narrow_norm(layer, path, project)
    _narrow_embeddings(encoder, family, hidden, project)
    if per_head_table:
        relative.weight = nn.Parameter(relative.weight.detach()[:, chosen[0]].clone())
    elif isinstance(relative, nn.Embedding) and relative.embedding_dim == hidden:
        relative.weight = nn.Parameter(relative.weight.detach() @ project)
        _narrow_norm(encoder, family.relative_norm, project)
    _narrow_norm(encoder, family.final_norm, project)
    pooler = getattr(encoder, "pooler", None)
    if pooler is not None and isinstance(getattr(pooler, "dense", None), nn.Linear):
        pooler.dense = _linear(project.T @ pooler.dense.weight @ project, _out(pooler.dense.bias, project))
    for name, head in model.heads.items():
        model.heads[name] = _linear(head.weight @ project, head.bias)
    set_config_value(config, "hidden", width)
    set_config_value(config, "heads", width // size)
    model.encoder = rebuilt(encoder)
    return chosen


def _kept_heads(scores: torch.Tensor | None, layers: int, heads: int, keep: int, shared: bool) -> list[list[int]]:
    """The `keep` most important heads of each layer (of all layers together when `shared`), in order."""
    if scores is None:
        return [list(range(keep))] * layers
    if shared:
        best = sorted(torch.argsort(scores.sum(0), descending=True, stable=True)[:keep].tolist())
        return [best] * layers
    return [sorted(torch.argsort(row, descending=True, stable=True)[:keep].tolist()) for row in scores]


def _narrow_embeddings(encoder: nn.Module, family: Anatomy, hidden: int, project: torch.Tensor) -> None:
    """Embedding tables and their norm in the hidden space move to the narrow one; behind a projection (tables
    narrower than the hidden size) only the projection's output does."""
    for path in (family.word_embeddings, family.position_embeddings, family.token_type_embeddings):
        old = part(encoder, path)
        if isinstance(old, nn.Embedding) and old.embedding_dim == hidden:
            new = nn.Embedding(old.num_embeddings, project.shape[1], padding_idx=old.padding_idx)
            new.weight = nn.Parameter(old.weight.detach() @ project)
            set_part(encoder, path, new)
    projection = part(encoder, family.embedding_projection)
    if isinstance(projection, nn.Linear):
        set_part(encoder, family.embedding_projection,
                 _linear(project.T @ projection.weight, _out(projection.bias, project)))
    norm = part(encoder, family.embedding_norm)
    if isinstance(norm, nn.LayerNorm) and norm.normalized_shape[0] == hidden:
        _narrow_norm(encoder, family.embedding_norm, project)


def _replace(layer: nn.Module, path: str, rows: torch.Tensor, project: torch.Tensor) -> None:
    """A projection that reads the hidden state, cut to `rows` of its outputs and read through `project`."""
    old = part(layer, path)
    set_part(layer, path, _linear(old.weight[rows] @ project, None if old.bias is None else old.bias[rows]))


def _out(bias: torch.Tensor | None, project: torch.Tensor) -> torch.Tensor | None:
    return None if bias is None else project.T @ bias


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _narrow_norm(owner: nn.Module, path: str | None, project: torch.Tensor) -> None:
    """A LayerNorm of the hidden state moved to the narrow space (an Identity or a missing norm stays)."""
    old = part(owner, path)
    if not isinstance(old, nn.LayerNorm):
        return
    new = nn.LayerNorm(project.shape[1], eps=old.eps, bias=old.bias is not None)
    with torch.no_grad():
        new.weight.copy_(project.T @ old.weight)
        if old.bias is not None:
            new.bias.copy_(project.T @ old.bias)
    set_part(owner, path, new)
