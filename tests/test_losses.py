import math

import torch

from distill.losses import cross_entropy, hidden_mse, kd_kl


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
