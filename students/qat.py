"""Quantization-aware distillation: fake int8 during the last epochs, so the int8 export loses less.

What is simulated is what `export` builds with onnxruntime's dynamic quantization: every encoder Linear
weight as symmetric int8 (per tensor, or per channel with `export.per_channel`; 7-bit with the reduce_range
of non-VNNI CPUs), the embedding tables as `export.int8_embeddings` stores them (int8 per row, or uint8 per
table), and optionally every Linear input's dynamic int8 (`export.int8_activations`: one scale per token, or
onnxruntime's uint8 with one scale per tensor).
Gradients pass straight through the rounding. The saved model holds the float weights; the export
quantizes them to exactly the values seen here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from torch import nn

from distill.model.multitask import MultiTaskModel
from students.modules import StudentEmbedding, StudentLinear, replace_modules

log = logging.getLogger(__name__)


@dataclass
class QatSettings:
    """When fake quantization starts and what it simulates."""

    start_epoch: int
    reduce_range: bool
    per_channel: bool
    activations: str | None  # export.int8_activations when the inputs are fake-quantized too: per_token | per_tensor
    embeddings: str = "per_row"  # export.int8_embeddings: per_row | per_tensor | fp32

    @classmethod
    def last_epochs(cls, qat_epochs: int, total_epochs: float, reduce_range: bool, per_channel: bool,
                    activations: str | None, embeddings: str = "per_row") -> QatSettings:
        return cls(math.ceil(total_epochs) - qat_epochs + 1, reduce_range, per_channel, activations, embeddings)


def enable_fake_quant(model: MultiTaskModel, settings: QatSettings) -> int:
    """Swap the encoder's Linear layers and embeddings for fake-quantizing ones; returns how many were swapped."""
    encoder = model.encoder
    replace_modules(encoder, nn.Linear, StudentLinear)
    replace_modules(encoder, nn.Embedding, StudentEmbedding)
    count = 0
    for module in encoder.modules():
        if isinstance(module, StudentLinear):
            module.quantize(settings.reduce_range, settings.per_channel, settings.activations)
        elif isinstance(module, StudentEmbedding) and settings.embeddings != "fp32":
            module.fake_quant = settings.embeddings
        else:
            continue
        count += 1
    return count


def snap_word_embeddings(model: MultiTaskModel, bits: int) -> None:
    """Make the word-embedding table read (and save) as `bits`-bit values with one scale per row, from the first
    step on: the student learns around the rounding, and the export stores the table at that width exactly."""
    table = model.encoder.get_input_embeddings()
    if not isinstance(table, StudentEmbedding):
        table = StudentEmbedding(table)
        model.encoder.set_input_embeddings(table)
    table.snap_bits = bits


def qat_hook(settings: QatSettings):
    """An on_epoch_start hook for train_loop that turns fake quantization on at `settings.start_epoch`."""

    enabled = False

    def on_epoch_start(epoch: int, model: nn.Module) -> None:
        nonlocal enabled
        if epoch >= settings.start_epoch and not enabled:  # >=: a run resumed after the start epoch too
            enabled = True
            count = enable_fake_quant(model, settings)
            log.info("epoch %d: quantization-aware training on (%d modules fake-quantized)", epoch, count)

    return on_epoch_start
