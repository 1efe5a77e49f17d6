"""First-order importance of attention heads and FFN neurons, measured with the task loss on dev batches.

Heads: |∂L/∂ξ_h| for a head mask ξ fixed at 1 (Michel et al., 2019), applied to each head's slice of the
attention output projection's input, so it works for every family the encoder anatomy knows. FFN neurons: the
Taylor estimate |Σ w·∂L/∂w| over the neuron's input row(s), bias and output column (the loss change when it
is removed).
Both are summed over the batches; ranking happens within a layer, so no normalisation is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.data.batching import eval_batches, pad_batch
from distill.data.tasks import EncodedSplit, TaskData
from distill.model.encoder import config_value, layer_parts, part
from distill.model.multitask import MultiTaskModel
from distill.train.losses import task_losses


@dataclass
class Importance:
    """Scores per layer of the model they were measured on: heads [layers, heads], ffn [layers, neurons]."""

    heads: torch.Tensor
    ffn: torch.Tensor

    def select(self, layers: list[int]) -> Importance:
        """The scores of the given layers only (a student keeping those teacher layers)."""
        return Importance(self.heads[layers], self.ffn[layers])


def score_importance(model: MultiTaskModel, tasks: list[TaskData], pad_id: int, examples: int,
                     batch_size: int = 16, head_mask: torch.Tensor | None = None) -> Importance:
    """Importance of every head and FFN neuron of `model` on up to `examples` dev examples per task.

    `head_mask` (1 = kept) scores a model whose heads are partly masked; masked heads score 0."""
    family, layers = layer_parts(model.encoder, "students")
    config = model.encoder.config
    heads_per_layer, width = config_value(config, "heads"), config_value(config, "ffn")
    device = next(model.parameters()).device
    mask = (head_mask.clone().float() if head_mask is not None
            else torch.ones(len(layers), heads_per_layer)).to(device).requires_grad_(True)
    heads = torch.zeros(len(layers), heads_per_layer)
    ffn = torch.zeros(len(layers), width)
    was_training = model.training
    model.eval()  # no dropout: the scores describe the model as it predicts
    hooks = [part(layer, family.attention_output).register_forward_pre_hook(_head_scaler(mask, index))
             for index, layer in enumerate(layers)]
    try:
        for task in tasks:
            dev = task.encoded["dev"]
            split = EncodedSplit(dev.input_ids[:examples], dev.labels[:examples])
            for indices in eval_batches(split, batch_size):
                batch = pad_batch(task.info.name, split, indices, pad_id)
                model.zero_grad(set_to_none=True)
                mask.grad = None
                out = model(torch.from_numpy(batch.input_ids).to(device),
                            torch.from_numpy(batch.attention_mask).to(device), task=task.info.name)
                task_losses(task.info.type, out.logits[task.info.name], torch.from_numpy(batch.labels))[0].backward()
                heads += mask.grad.abs().cpu()
                for index, layer in enumerate(layers):
                    ffn[index] += _taylor(part(layer, family.ffn_in), part(layer, family.ffn_out),
                                          family.ffn_glu).abs().cpu()
    finally:
        for hook in hooks:
            hook.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if head_mask is not None:
        heads = heads * head_mask.cpu()
    return Importance(heads, ffn)


def _head_scaler(mask: torch.Tensor, layer: int):
    """A pre-hook that scales each head's slice of the attention output projection's input by its mask entry."""
    def scale(_module: torch.nn.Module, args: tuple) -> tuple:
        context = args[0]
        per_head = mask[layer].repeat_interleave(context.shape[-1] // mask.shape[1]).to(context.dtype)
        return (context * per_head, *args[1:])

    return scale


def _taylor(up: torch.nn.Linear, down: torch.nn.Linear, glu: bool) -> torch.Tensor:
    """Σ w·grad per intermediate neuron: its row of `up` (both halves of a gated FFN; and bias) and its column of
    `down`."""
    rows = (up.weight * up.weight.grad).sum(1)
    if up.bias is not None:
        rows = rows + up.bias * up.bias.grad
    if glu:
        rows = rows.view(2, -1).sum(0)
    return (rows + (down.weight * down.weight.grad).sum(0)).detach()
