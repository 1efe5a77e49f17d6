"""Learned linear maps from a narrower student's hidden states to the teacher's width (TinyBERT's W_h).

They are trained with the student (attached as a submodule, so the optimiser sees them) and are never
part of the saved student.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

ATTRIBUTE = "distill_projections"


class HiddenProjections(nn.Module):
    """One nn.Linear(student width -> teacher width) per student hidden layer; identity when widths match."""

    def __init__(self, student_width: int, teacher_width: int, layers: Iterable[int]):
        super().__init__()
        needed = student_width != teacher_width
        self.maps = nn.ModuleDict({str(layer): nn.Linear(student_width, teacher_width)
                                   for layer in sorted(set(layers))} if needed else {})

    def forward(self, layer: int, states: torch.Tensor) -> torch.Tensor:
        """Student hidden states of `layer` [B, L, student width] in the teacher's width."""
        key = str(layer)
        return self.maps[key](states) if key in self.maps else states


@contextmanager
def attached(model: nn.Module, projections: HiddenProjections) -> Iterator[HiddenProjections]:
    """While active the projections are a submodule of `model` (trained with it); removed afterwards."""
    setattr(model, ATTRIBUTE, projections)
    try:
        yield projections
    finally:
        delattr(model, ATTRIBUTE)
