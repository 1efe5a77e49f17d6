"""First-order importance of attention heads and FFN neurons, measured with the task loss on dev batches.

Heads: |∂L/∂ξ_h| for a head mask ξ fixed at 1 (Michel et al., 2019). FFN neurons: the Taylor estimate
|Σ w·∂L/∂w| over the neuron's input row, bias and output column (the loss change when it is removed).
Both are summed over the batches; ranking happens within a layer, so no normalisation is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import logging as hf_logging

from distill.data.batching import eval_batches, pad_batch
from distill.data.tasks import EncodedSplit, TaskData
from distill.model.encoder import bert_layers
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
    layers = bert_layers(model.encoder)
    heads_per_layer = int(model.encoder.config.num_attention_heads)
    device = next(model.parameters()).device
    mask = (head_mask.clone().float() if head_mask is not None
            else torch.ones(len(layers), heads_per_layer)).to(device).requires_grad_(True)
    heads = torch.zeros(len(layers), heads_per_layer)
    ffn = torch.zeros(len(layers), layers[0].intermediate.dense.out_features)
    was_training = model.training
    model.eval()  # no dropout: the scores describe the model as it predicts
    hook = model.encoder.register_forward_pre_hook(
        lambda _module, args, kwargs: (args, {**kwargs, "head_mask": mask}), with_kwargs=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "sdpa falls back to eager with a head mask" is expected here
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
                    ffn[index] += _taylor(layer.intermediate.dense, layer.output.dense).abs().cpu()
    finally:
        hook.remove()
        hf_logging.set_verbosity(verbosity)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if head_mask is not None:
        heads = heads * head_mask.cpu()
    return Importance(heads, ffn)


def _taylor(up: torch.nn.Linear, down: torch.nn.Linear) -> torch.Tensor:
    """Σ w·grad per intermediate neuron: its row of `up` (and bias) and its column of `down`."""
    score = (up.weight * up.weight.grad).sum(1) + (down.weight * down.weight.grad).sum(0)
    if up.bias is not None:
        score = score + up.bias * up.bias.grad
    return score.detach()
