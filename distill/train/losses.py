"""Distillation losses as plain functions of tensors (no model classes involved).

Shapes: logits [B, C] (sequence tasks) or [B, L, C] (token tasks); hidden states, queries, keys and values
[B, L, H]; `mask` [B, L] is 1 on real tokens and 0 on padding, which every loss leaves out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from distill.core.errors import DistillInputError
from distill.data.tasks import IGNORE_INDEX
from distill.model.attention import split_heads


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gold-label cross-entropy −log softmax(z)_y, averaged over labelled items; items labelled -100 (padding,
    later word pieces, transfer examples) are ignored, and a batch without any label costs 0."""
    flat = labels.reshape(-1)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (flat != IGNORE_INDEX).sum().clamp_min(1)


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """T² · Σ_c p_c (log p_c − log q_c), p = softmax(teacher/T), q = softmax(student/T); mean over examples
    (or real tokens)."""
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    per_item = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return t * t * _masked_mean(per_item, mask)


def kd_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean_c (student_c − teacher_c)² on raw logits, mean over examples (or real tokens)."""
    per_item = (student_logits - teacher_logits).pow(2).mean(-1)
    return _masked_mean(per_item, mask)


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean_h (student_h − teacher_h)², mean over real tokens."""
    per_token = (student_hidden - teacher_hidden).pow(2).mean(-1)
    return _masked_mean(per_token, mask)


def hidden_cosine(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 − s·t / (‖s‖ ‖t‖) per token, mean over real tokens."""
    per_token = 1 - F.cosine_similarity(student_hidden, teacher_hidden, dim=-1, eps=1e-8)
    return _masked_mean(per_token, mask)


def attention_transfer(student_query: torch.Tensor, student_key: torch.Tensor, teacher_query: torch.Tensor,
                       teacher_key: torch.Tensor, student_heads: int, teacher_heads: int,
                       mask: torch.Tensor) -> torch.Tensor:
    """Attention-distribution transfer: Σ_k A_t log(A_t / A_s) per head and real query row, mean over heads
    and real rows; A = softmax(Q_h K_hᵀ / √d_h) over real keys.

    KL rather than MSE: each row is a distribution, and KL does not shrink as rows get longer (an MSE
    on probabilities of ~1/L each does). Heads are compared one to one, so their counts must match."""
    if student_heads != teacher_heads:
        raise DistillInputError(
            f"distillation.losses.attention needs as many student heads as teacher heads (student {student_heads}, "
            f"teacher {teacher_heads}); use `relations` (self-attention relations), which work with any head count")
    student = _scaled_dot_log_softmax(student_query, student_key, student_heads, mask)
    teacher = _scaled_dot_log_softmax(teacher_query, teacher_key, teacher_heads, mask)
    return _row_kl(teacher, student, mask)


def relation_kl(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor], heads: int,
                mask: torch.Tensor) -> torch.Tensor:
    """MiniLMv2 self-attention relations: for each of Q-Q, K-K, V-V, R = softmax(X_r X_rᵀ / √d_r) per relation
    head r over real keys, KL(R_teacher ‖ R_student) per real query row; mean over rows, heads and the three.

    Both sides are split into the same `heads` relation heads (d_r = width / heads on each side), so the
    student and the teacher may differ in width and in attention heads."""
    losses = []
    for student, teacher in zip(student_states, teacher_states, strict=True):
        for width in (student.shape[-1], teacher.shape[-1]):
            if width % heads:
                raise DistillInputError(f"distillation.relation_heads: width {width} does not split into {heads} "
                                        "relation heads; choose a count that divides the student and teacher widths")
        losses.append(_row_kl(_scaled_dot_log_softmax(teacher, teacher, heads, mask),
                              _scaled_dot_log_softmax(student, student, heads, mask), mask))
    return torch.stack(losses).mean()


def _scaled_dot_log_softmax(left: torch.Tensor, right: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """log softmax(left_h right_hᵀ / √d_h) per head, [B, heads, L, L], with padded keys at ~zero probability."""
    a, b = split_heads(left, heads), split_heads(right, heads)
    scores = a @ b.transpose(-1, -2) / a.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.log_softmax(-1)


def _row_kl(teacher_log: torch.Tensor, student_log: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_k p (log p − log q) over real keys for each [B, heads, L, ·] row, mean over heads and real query rows."""
    keys = mask.bool()[:, None, None, :]
    per_row = torch.where(keys, teacher_log.exp() * (teacher_log - student_log), 0.0).sum(-1)
    rows = mask[:, None, :].expand_as(per_row)
    return _masked_mean(per_row, rows)


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


def _labelled_only(loss, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`loss` over the examples with a gold label (transfer examples carry NaN); 0 when none has one."""
    labelled = ~torch.isnan(labels.reshape(len(labels), -1)).any(-1)
    if labelled.all():
        return loss(logits, labels)
    if not labelled.any():
        return logits.sum() * 0.0
    return loss(logits[labelled], labels[labelled])


def task_losses(task_type: str, logits: torch.Tensor, labels: torch.Tensor,
                teacher_logits: torch.Tensor | None = None, temperature: float = 1.0,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(gold loss, KD loss) for one batch of a task, by task type; KD is None without teacher logits.

    Classification: cross-entropy and T²·KL; multi-label: BCE against the labels and against the teacher's
    sigmoid(·/T) (×T²); regression: MSE to the gold value and to the teacher's value. The gold loss covers the
    labelled examples only (transfer examples have none), KD every example. Targets move to the logits' device
    and losses are computed in fp32."""
    device = logits.device
    logits = logits.float()
    labels = labels.to(device)
    teacher = None if teacher_logits is None else teacher_logits.to(device).float()
    if task_type == "multi_label_classification":
        gold = _labelled_only(multilabel_bce, logits, labels.float())
        kd = None if teacher is None else multilabel_bce(logits, torch.sigmoid(teacher / temperature), temperature)
    elif task_type == "regression":
        gold = _labelled_only(regression_mse, logits, labels.float())
        kd = None if teacher is None else regression_mse(logits, teacher)
    else:
        gold = cross_entropy(logits, labels)
        kd = None if teacher is None else kd_kl(logits, teacher, temperature,
                                                None if mask is None else mask.to(device))
    return gold, kd
