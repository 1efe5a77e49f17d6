import math

import pytest
import torch

from distill.core.errors import DistillInputError
from distill.train.losses import (
    attention_transfer,
    cross_entropy,
    hidden_cosine,
    hidden_mse,
    kd_kl,
    kd_mse,
    relation_kl,
)


def test_kd_kl_matches_hand_computation():
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0]])
    t = 2.0
    p = [math.exp(0) / (math.exp(0) + math.exp(0.5)), math.exp(0.5) / (math.exp(0) + math.exp(0.5))]
    q = [math.exp(0.5) / (math.exp(0.5) + math.exp(0)), math.exp(0) / (math.exp(0.5) + math.exp(0))]
    expected = t * t * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    assert math.isclose(kd_kl(student, teacher, t).item(), expected, rel_tol=1e-6)


def test_kd_kl_is_zero_for_equal_logits_and_has_gradient():
    logits = torch.randn(3, 4)
    assert kd_kl(logits, logits, 1.5).abs().item() < 1e-6
    student = torch.zeros(1, 2, requires_grad=True)
    kd_kl(student, torch.tensor([[0.0, 2.0]]), 1.0).backward()
    # d/ds KL(p || softmax(s)) = softmax(s) - p (times T for T = 1)
    p = torch.softmax(torch.tensor([0.0, 2.0]), -1)
    assert torch.allclose(student.grad[0], torch.tensor([0.5, 0.5]) - p, atol=1e-6)


def test_kd_kl_ignores_masked_tokens():
    student = torch.zeros(1, 3, 2)
    teacher = torch.zeros(1, 3, 2)
    teacher[0, 2] = torch.tensor([5.0, -5.0])
    mask = torch.tensor([[1, 1, 0]])
    assert kd_kl(student, teacher, 1.0, mask).item() == 0.0
    assert kd_kl(student, teacher, 1.0).item() > 0.0


def test_cross_entropy_ignores_minus_100():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
    labels = torch.tensor([[0, -100]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert math.isclose(cross_entropy(logits, labels).item(), expected, rel_tol=1e-6)


def test_hidden_mse_over_real_tokens():
    student = torch.zeros(1, 2, 3)
    teacher = torch.tensor([[[1.0, 1.0, 1.0], [9.0, 9.0, 9.0]]])
    assert hidden_mse(student, teacher, torch.tensor([[1, 0]])).item() == 1.0
    assert hidden_mse(student, teacher).item() == 41.0


def test_kd_mse_matches_hand_computation_and_gradient():
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    # ((1² + 2²) / 2 + (0² + 3²) / 2) / 2 = (2.5 + 4.5) / 2
    loss = kd_mse(student, teacher)
    assert math.isclose(loss.item(), 3.5, rel_tol=1e-6)
    loss.backward()
    # d/ds mean_i mean_c (s − t)² = 2 (s − t) / (C · N) = (s − t) / 2 here
    assert torch.allclose(student.grad, torch.tensor([[0.5, 1.0], [0.0, -1.5]]))
    tokens = torch.zeros(1, 2, 2)
    assert kd_mse(tokens, torch.tensor([[[2.0, 0.0], [9.0, 9.0]]]), torch.tensor([[1, 0]])).item() == 2.0


def test_hidden_cosine_matches_hand_computation():
    student = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [-1.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # token 1: 1 − 1/√2, token 2: 1 − 1 = 0 (same direction), token 3 is padding
    expected = (1 - 1 / math.sqrt(2) + 0.0) / 2
    assert math.isclose(hidden_cosine(student, teacher, mask).item(), expected, rel_tol=1e-6)


def _attention_case():
    # one head, width 1, two real tokens and one padded token with wild values
    student_q = torch.tensor([[[1.0], [0.0], [7.0]]])
    student_k = torch.tensor([[[1.0], [2.0], [-9.0]]])
    teacher_q = torch.tensor([[[0.0], [1.0], [3.0]]])
    teacher_k = torch.tensor([[[1.0], [1.0], [8.0]]])
    return student_q, student_k, teacher_q, teacher_k, torch.tensor([[1, 1, 0]])


def test_attention_transfer_matches_hand_computation():
    sq, sk, tq, tk, mask = _attention_case()
    # student rows: q=1 -> softmax([1, 2]) = [1/(1+e), e/(1+e)]; q=0 -> [1/2, 1/2]
    # teacher rows: q=0 -> softmax([0, 0]); q=1 -> softmax([1, 1]): both uniform
    e = math.e
    row0 = 0.5 * math.log(0.5 * (1 + e)) + 0.5 * math.log(0.5 * (1 + e) / e)
    expected = (row0 + 0.0) / 2
    assert math.isclose(attention_transfer(sq, sk, tq, tk, 1, 1, mask).item(), expected, rel_tol=1e-6)
    assert attention_transfer(sq, sk, sq, sk, 1, 1, mask).abs().item() < 1e-7


def test_attention_transfer_needs_equal_heads():
    states = torch.randn(1, 3, 4)
    with pytest.raises(DistillInputError, match="relations"):
        attention_transfer(states, states, states, states, 2, 4, torch.ones(1, 3))


def test_relation_kl_matches_hand_computation():
    mask = torch.tensor([[1, 1, 0]])
    student_q = torch.tensor([[[1.0], [2.0], [6.0]]])
    teacher_q = torch.tensor([[[1.0], [1.0], [-6.0]]])
    values = torch.tensor([[[0.5], [3.0], [0.0]]])
    # Q-Q relations: student [[1, 2], [2, 4]] row-softmaxed; teacher [[1, 1], [1, 1]]: uniform rows
    e = math.e
    row0 = 0.5 * math.log(0.5 * (1 + e)) + 0.5 * math.log(0.5 * (1 + e) / e)
    row1 = 0.5 * math.log(0.5 * (1 + e**2)) + 0.5 * math.log(0.5 * (1 + e**2) / e**2)
    query_kl = (row0 + row1) / 2
    # keys equal the queries (same KL), values are equal on both sides (KL 0): mean of the three
    loss = relation_kl([student_q, student_q, values], [teacher_q, teacher_q, values], 1, mask)
    assert math.isclose(loss.item(), 2 * query_kl / 3, rel_tol=1e-6)


def test_relation_kl_works_across_widths_and_heads():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    student = [torch.randn(2, 4, 4) for _ in range(3)]  # width 4 -> 2 relation heads of 2
    # The teacher (width 6 -> 2 heads of 3) holds each student head scaled by (3/2)^¼ plus a zero column,
    # so X_r X_rᵀ / √3 equals the student's X_r X_rᵀ / √2 and every relation matches: loss 0.
    scale = 1.5 ** 0.25
    teacher = []
    for states in student:
        heads = states.view(2, 4, 2, 2) * scale
        teacher.append(torch.cat([heads, torch.zeros(2, 4, 2, 1)], -1).reshape(2, 4, 6))
    assert relation_kl(student, teacher, 2, mask).abs().item() < 1e-6
    other = [t + torch.randn_like(t) for t in teacher]
    assert relation_kl(student, other, 2, mask).item() > 1e-3
    with pytest.raises(DistillInputError, match="relation_heads"):
        relation_kl(student, teacher, 3, mask)


def test_attention_losses_ignore_padding():
    sq, sk, tq, tk, mask = _attention_case()
    before = attention_transfer(sq, sk, tq, tk, 1, 1, mask)
    before_relations = relation_kl([sq, sk, tq], [tq, tk, sk], 1, mask)
    for states in (sq, sk, tq, tk):
        states[0, 2] = 100.0
    assert torch.allclose(attention_transfer(sq, sk, tq, tk, 1, 1, mask), before)
    assert torch.allclose(relation_kl([sq, sk, tq], [tq, tk, sk], 1, mask), before_relations)


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])

    def student(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    def teacher(*shape):
        return torch.randn(*shape, dtype=torch.float64)

    logits, token_logits, hidden = teacher(2, 3), teacher(2, 4, 3), teacher(2, 4, 6)
    checks = [
        (lambda s: kd_kl(s, logits, 2.0), student(2, 3)),
        (lambda s: kd_kl(s, token_logits, 1.5, mask), student(2, 4, 3)),
        (lambda s: kd_mse(s, token_logits, mask), student(2, 4, 3)),
        (lambda s: hidden_mse(s, hidden, mask), student(2, 4, 6)),
        (lambda s: hidden_cosine(s, hidden, mask), student(2, 4, 6)),
        (lambda q, k: attention_transfer(q, k, hidden, hidden.flip(-1), 2, 2, mask), student(2, 4, 6),
         student(2, 4, 6)),
        (lambda q, k, v: relation_kl([q, k, v], [hidden, hidden.flip(1), hidden * 2], 2, mask), student(2, 4, 4),
         student(2, 4, 4), student(2, 4, 4)),
    ]
    for fn, *inputs in checks:
        assert torch.autograd.gradcheck(fn, tuple(inputs))
