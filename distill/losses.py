"""Distillation losses as plain functions of tensors (no model classes involved)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.data import IGNORE_INDEX


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gold-label cross-entropy; positions labelled -100 are ignored (token tasks)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """T² · KL(teacher softmax at T ‖ student softmax at T), averaged over examples (or real tokens)."""
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    per_item = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return t * t * _masked_mean(per_item, mask)


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between hidden states [B, L, H], over real tokens only."""
    per_token = (student_hidden - teacher_hidden).pow(2).mean(-1)
    return _masked_mean(per_token, mask)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def multilabel_bce(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T² · binary cross-entropy of sigmoid(logits / T) against target probabilities [B, C]: gold 0/1 labels,
    or a teacher's sigmoid(teacher_logits / T) for knowledge distillation."""
    t = temperature
    return t * t * F.binary_cross_entropy_with_logits(logits / t, targets)


def regression_mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error between one value per example ([B, 1] or [B]) and the targets (gold or teacher)."""
    return F.mse_loss(predictions.reshape(-1), targets.reshape(-1))


def task_losses(task_type: str, logits: torch.Tensor, labels: torch.Tensor,
                teacher_logits: torch.Tensor | None = None, temperature: float = 1.0,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(gold loss, KD loss) for one batch of a task, by task type; KD is None without teacher logits.

    Classification: cross-entropy and T²·KL; multi-label: BCE against the labels and against the teacher's
    sigmoid(·/T) (×T²); regression: MSE to the gold value and to the teacher's value. Targets move to the
    logits' device and losses are computed in fp32."""
    device = logits.device
    logits = logits.float()
    labels = labels.to(device)
    teacher = None if teacher_logits is None else teacher_logits.to(device).float()
    if task_type == "multi_label_classification":
        gold = multilabel_bce(logits, labels.float())
        kd = None if teacher is None else multilabel_bce(logits, torch.sigmoid(teacher / temperature), temperature)
    elif task_type == "regression":
        gold = regression_mse(logits, labels.float())
        kd = None if teacher is None else regression_mse(logits, teacher)
    else:
        gold = cross_entropy(logits, labels)
        kd = None if teacher is None else kd_kl(logits, teacher, temperature,
                                                None if mask is None else mask.to(device))
    return gold, kd
