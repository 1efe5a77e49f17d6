"""Learnt task weights: homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018)."""

from __future__ import annotations

import torch
from torch import nn


class UncertaintyWeighting(nn.Module):
    """One learnable log-variance s_t per task; a task's loss L_t becomes exp(-s_t) · L_t + s_t.

    The same form for every task type (the paper's 1/2 factors for regression only rescale s_t). The
    parameters are trained with the model and checkpointed, but never saved into the model."""

    def __init__(self, tasks: list[str]):
        super().__init__()
        self.index = {task: i for i, task in enumerate(tasks)}
        self.log_variances = nn.Parameter(torch.zeros(len(tasks)))

    def forward(self, task: str, loss: torch.Tensor) -> torch.Tensor:
        s = self.log_variances[self.index[task]]
        return torch.exp(-s) * loss + s

    def weights(self) -> dict[str, float]:
        """exp(-s_t) per task: the factor each task's loss currently gets."""
        values = torch.exp(-self.log_variances.detach().float().cpu()).tolist()
        return {task: values[i] for task, i in self.index.items()}
