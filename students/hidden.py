"""A narrower hidden size, initialised from the teacher through a projection P [H, h] of the residual stream.

Every weight that reads the hidden state is multiplied by P on its input side, every weight (and bias and
LayerNorm parameter) that writes it by Pᵀ on its output side. `variance` keeps the h coordinates of highest
variance (P selects columns of the identity: LayerNorm parameters carry over exactly); `pca` projects onto the
top-h principal directions. Attention keeps the teacher's head size, so h / head size heads remain per layer
(the most important ones).
"""

from __future__ import annotations

import torch
from torch import nn

from distill.core.errors import DistillInputError
from distill.data.batching import eval_batches, pad_batch
from distill.data.tasks import EncodedSplit, TaskData
from distill.model.encoder import bert_layers, embeddings
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
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    if getattr(config, "pruned_heads", None):
        raise DistillInputError(f"{where}: narrowing a model whose heads are already pruned is not supported")
    head_size = hidden // heads
    if width >= hidden or width % head_size:
        raise DistillInputError(f"{where}: {width} must be below the teacher's {hidden} and a multiple of its "
                                f"attention head size {head_size}")
    keep_heads = width // head_size
    layers = bert_layers(encoder)
    kept_heads = []
    for index, layer in enumerate(layers):
        order = (torch.argsort(head_scores[index], descending=True, stable=True) if head_scores is not None
                 else torch.arange(heads))
        chosen = sorted(order[:keep_heads].tolist())
        kept_heads.append(chosen)
        rows = torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in chosen])
        attention = layer.attention.self
        for name in ("query", "key", "value"):
            old = getattr(attention, name)
            setattr(attention, name, _linear(old.weight[rows] @ project, old.bias[rows]))
        attention.num_attention_heads = keep_heads
        attention.all_head_size = keep_heads * head_size
        output = layer.attention.output
        output.dense = _linear(project.T @ output.dense.weight[:, rows], project.T @ output.dense.bias)
        output.LayerNorm = _layer_norm(output.LayerNorm, project)
        layer.intermediate.dense = _linear(layer.intermediate.dense.weight @ project, layer.intermediate.dense.bias)
        layer.output.dense = _linear(project.T @ layer.output.dense.weight, project.T @ layer.output.dense.bias)
        layer.output.LayerNorm = _layer_norm(layer.output.LayerNorm, project)
    block = embeddings(encoder)
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        old = getattr(block, name, None)
        if isinstance(old, nn.Embedding):
            new = nn.Embedding(old.num_embeddings, width, padding_idx=old.padding_idx)
            new.weight = nn.Parameter(old.weight.detach() @ project)
            setattr(block, name, new)
    block.LayerNorm = _layer_norm(block.LayerNorm, project)
    pooler = getattr(encoder, "pooler", None)
    if pooler is not None and isinstance(getattr(pooler, "dense", None), nn.Linear):
        pooler.dense = _linear(project.T @ pooler.dense.weight @ project, project.T @ pooler.dense.bias)
    for name, head in model.heads.items():
        model.heads[name] = _linear(head.weight @ project, head.bias)
    config.hidden_size = width
    config.num_attention_heads = keep_heads
    return kept_heads


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _layer_norm(old: nn.LayerNorm, project: torch.Tensor) -> nn.LayerNorm:
    new = nn.LayerNorm(project.shape[1], eps=old.eps)
    with torch.no_grad():
        new.weight.copy_(project.T @ old.weight)
        new.bias.copy_(project.T @ old.bias)
    return new
