"""Training-time stand-ins for nn.Embedding and nn.Linear, and the swap back to the plain modules for saving.

Each stand-in shares the Parameter objects of the module it replaces, so optimizer state and state_dict
names are untouched: swapping in at an epoch start (QAT) and swapping out for saving are both free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.int8_presets import INT8_MAX, INT8_MAX_REDUCED

UINT8_MAX = 255


def fake_quant_int8(weight: torch.Tensor, reduce_range: bool, per_channel: bool) -> torch.Tensor:
    """Symmetric int8 round trip as onnxruntime quantizes weights (scale = max|w| / qmax), straight-through grad."""
    qmax = INT8_MAX_REDUCED if reduce_range else INT8_MAX
    if per_channel:
        scale = (weight.detach().abs().amax(dim=1) / qmax).clamp_min(1e-12)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -qmax, qmax)
    scale = (weight.detach().abs().max() / qmax).clamp_min(1e-12).reshape(1)
    zero = torch.zeros(1, dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_tensor_affine(weight, scale, zero, -qmax, qmax)


def fake_quant_uint8(values: torch.Tensor) -> torch.Tensor:
    """Asymmetric uint8 round trip over the tensor's range including 0 (onnxruntime DynamicQuantizeLinear)."""
    low = values.detach().min().clamp_max(0)
    high = values.detach().max().clamp_min(0)
    scale = ((high - low) / UINT8_MAX).clamp_min(1e-12).reshape(1)
    zero = torch.round(-low / scale).clamp(0, UINT8_MAX).to(torch.int32).reshape(1)
    return torch.fake_quantize_per_tensor_affine(values, scale, zero, 0, UINT8_MAX)


def fake_quant_tokens(values: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 round trip with one scale per token (row of the last axis), as the export's per-token
    dynamic int8 quantizes a Linear's input (see distill.export.per_token); straight-through gradient."""
    scale = values.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / INT8_MAX
    return values + ((values / scale).round().clamp(-INT8_MAX - 1, INT8_MAX) * scale - values).detach()


def fake_quant_rows(table: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric `bits`-bit round trip with one scale per row (the export's per_row embedding tables): scale =
    max|row| / (2^(bits-1) - 1), straight-through gradient."""
    qmax = 2 ** (bits - 1) - 1
    scale = table.detach().abs().amax(dim=1) / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(table, scale, zero, 0, -qmax, qmax)


class StudentEmbedding(nn.Embedding):
    """An embedding that takes teacher token ids (mapped through `id_map` to the kept rows) and can fake-quantize
    its table the way the int8 export stores it: `per_row` (int8, a scale per row) or `per_tensor` (onnxruntime's
    uint8 Gather). With `snap_bits`, the table always reads as `snap_bits`-bit values with a scale per row (and
    is saved so): the export then stores it at that width without any rounding of its own."""

    def __init__(self, source: nn.Embedding, id_map: torch.Tensor | None = None, fake_quant: str | None = None,
                 snap_bits: int | None = None):
        super().__init__(source.num_embeddings, source.embedding_dim, source.padding_idx, device="meta")
        self.weight = source.weight  # the same Parameter object, so optimizer state follows it
        self.register_buffer("id_map", id_map, persistent=False)
        self.fake_quant = fake_quant
        self.snap_bits = snap_bits

    def snapped_weight(self) -> torch.Tensor:
        """The table as the forward reads it without QAT: snapped to `snap_bits` per row, or as it is."""
        return fake_quant_rows(self.weight, self.snap_bits) if self.snap_bits else self.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.id_map is not None:
            ids = self.id_map[ids]
        if self.fake_quant == "per_tensor" and not self.snap_bits:
            return F.embedding(ids, fake_quant_uint8(self.weight), self.padding_idx)
        rows = F.embedding(ids, self.weight, self.padding_idx)
        # a row's scale is its own: rounding the looked-up rows equals looking up the rounded table, for a
        # batch's rows instead of the whole vocabulary. A snapped table is already on a grid as coarse as (or
        # coarser than) the int8 rows QAT would simulate.
        bits = self.snap_bits or (8 if self.fake_quant == "per_row" else None)
        if bits is None:
            return rows
        return fake_quant_rows(rows.reshape(-1, rows.shape[-1]), bits).reshape(rows.shape)


class StudentLinear(nn.Linear):
    """nn.Linear with an optional output mask (units being pruned gradually) and optional int8 fake quantization
    of its weight (and input) as the export will quantize it."""

    def __init__(self, source: nn.Linear, mask: torch.Tensor | None = None):
        super().__init__(source.in_features, source.out_features, source.bias is not None, device="meta")
        self.weight, self.bias = source.weight, source.bias
        self.register_buffer("mask", mask)
        self.fake_quant = False
        self.reduce_range = self.per_channel = False
        self.activations: str | None = None

    def quantize(self, reduce_range: bool, per_channel: bool, activations: str | None) -> None:
        """Fake int8 weights from now on; `activations` per_token or per_tensor also fakes the input's dynamic
        int8 as the export quantizes it (None: the input stays float)."""
        self.fake_quant = True
        self.reduce_range, self.per_channel, self.activations = reduce_range, per_channel, activations

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.fake_quant:
            if self.activations == "per_token":
                inputs = fake_quant_tokens(inputs)
            elif self.activations == "per_tensor":
                inputs = fake_quant_uint8(inputs)
            weight = fake_quant_int8(weight, self.reduce_range, self.per_channel)
        out = F.linear(inputs, weight, self.bias)
        return out if self.mask is None else out * self.mask


def replace_modules(root: nn.Module, kind: type[nn.Module], factory) -> int:
    """Replace every submodule of exactly type `kind` by `factory(module)`; returns how many were replaced."""
    count = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is kind:
                setattr(parent, name, factory(child))
                count += 1
    return count


def plain_modules(root: nn.Module) -> None:
    """Swap the stand-ins back to nn.Embedding / nn.Linear holding the same weights (masks must be applied first;
    a snapped embedding keeps its snapped values)."""

    def embedding(module: StudentEmbedding) -> nn.Embedding:
        plain = nn.Embedding(module.num_embeddings, module.embedding_dim, module.padding_idx, device="meta")
        plain.weight = module.weight if not module.snap_bits else nn.Parameter(module.snapped_weight().detach())
        return plain

    def linear(module: StudentLinear) -> nn.Linear:
        plain = nn.Linear(module.in_features, module.out_features, module.bias is not None, device="meta")
        plain.weight, plain.bias = module.weight, module.bias
        return plain

    replace_modules(root, StudentEmbedding, embedding)
    replace_modules(root, StudentLinear, linear)
