"""How often two models (fp32 and its int8 graph) give the same label: counted, and expected.

Counted (`label_agreement`) is what the manifest reports on test. At a flip rate near 0.5 %, though, a dev
split of 1,281 examples sees 3 flips one time and 9 the next: counting cannot tell a graph that flips 0.3 %
from one that flips 0.7 %. The int8 noise itself is measured on every example. For each decision, take its
fp32 margin (top class minus runner-up; for a multi-label output, the logit's distance from 0) and how far
int8 moved that margin; the label flips where margin + shift < 0. Applying to each margin the shifts int8 made
on the decisions nearest to it in margin (`NEIGHBOURS`) gives the expected share of flipped labels from n × k
pairs instead of n (`expected_agreement`, what `export.int8_agreement: expected` searches on). The neighbours
matter: int8 moves borderline decisions further than confident ones (the full demo's teacher: median |shift|
0.116 where the margin is below 0.3, 0.042 over all), and pairing every margin with every shift expected 0.24 %
of sentiment test labels to flip where 0.86 % did."""

from __future__ import annotations

import numpy as np

from distill.data.metrics import multi_label_decisions
from distill.data.tasks import IGNORE_INDEX, EncodedSplit, TaskData, TaskInfo

REGRESSION_TOLERANCE = 0.05  # regression outputs "agree" within this share of the gold values' std
# each margin meets the shifts of this share of the decisions nearest to it in margin, within these bounds
NEIGHBOUR_SHARE, NEIGHBOURS = 0.1, (64, 512)


def label_agreement(tasks: list[TaskData], split: str, a: dict[str, list[np.ndarray]],
                    b: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """Share of predictions two models agree on, per task (see `_agreement`)."""
    out = {}
    for task in tasks:
        name = task.info.name
        same, total = _agreement(task.info, task.encoded[split], a[name], b[name])
        out[name] = same / max(total, 1)
    return out


def _agreement(info: TaskInfo, split: EncodedSplit, a: list[np.ndarray], b: list[np.ndarray]) -> tuple[int, int]:
    """(agreeing, compared) decisions: labels (token tasks: the labelled first sub-tokens), each label's yes/no
    (multi-label), or values within REGRESSION_TOLERANCE × the gold values' std (regression)."""
    if not a:
        return 0, 0
    if info.type == "regression":
        tolerance = REGRESSION_TOLERANCE * (float(np.std(split.labels)) or 1.0)
        close = np.abs(np.ravel(np.stack(a)) - np.ravel(np.stack(b))) <= tolerance
        return int(close.sum()), close.size
    if info.type == "multi_label_classification":
        same = multi_label_decisions(np.stack(a)) == multi_label_decisions(np.stack(b))
        return int(same.sum()), same.size
    if info.type == "sequence_classification":
        same = np.argmax(np.stack(a), -1) == np.argmax(np.stack(b), -1)
        return int(same.sum()), same.size
    agree = total = 0
    for labels, x, y in zip(split.labels, a, b, strict=True):
        keep = np.asarray(labels) != IGNORE_INDEX
        agree += int((np.argmax(x, -1)[keep] == np.argmax(y, -1)[keep]).sum())
        total += int(keep.sum())
    return agree, total


def expected_agreement(tasks: list[TaskData], split: str, fp32: dict[str, list[np.ndarray]],
                       int8: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """Per task, 1 − the expected share of decisions whose fp32 margin the int8 shifts of the decisions nearest
    to it in margin would reverse (see the module docstring); regression: the share of outputs within the
    tolerance."""
    return {t.info.name: _expected(t.info, t.encoded[split], fp32[t.info.name], int8[t.info.name]) for t in tasks}


def _expected(info: TaskInfo, split: EncodedSplit, fp32: list[np.ndarray], int8: list[np.ndarray]) -> float:
    if not fp32:
        return 1.0
    if info.type == "regression":  # no margin to a decision: counted
        same, total = _agreement(info, split, fp32, int8)
        return same / max(total, 1)
    margin, shift = decision_margins(info, split, fp32, int8)
    if margin.size == 0:
        return 1.0
    return 1.0 - float(expected_flips(margin, shift).mean())


def expected_flips(margin: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Per decision, the share of the shifts of its k nearest decisions in margin (itself included; k from
    NEIGHBOUR_SHARE and NEIGHBOURS, at most all) that would reverse its margin."""
    n = margin.size
    k = min(n, max(NEIGHBOURS[0], min(NEIGHBOURS[1], int(NEIGHBOUR_SHARE * n))))
    order = np.argsort(margin, kind="stable")
    ranked_margin, ranked_shift = margin[order], shift[order]
    start = np.clip(np.arange(n) - k // 2, 0, n - k)  # a window of k decisions centred on each, inside the list
    flips = np.empty(n)
    for begin in range(0, n, 4096):  # windows of 4,096 decisions at a time bound the memory at 4,096 × k
        rows = slice(begin, min(n, begin + 4096))
        window = ranked_shift[start[rows, None] + np.arange(k)]
        flips[rows] = (window < -ranked_margin[rows, None]).mean(axis=1)
    out = np.empty(n)
    out[order] = flips
    return out


def decision_margins(info: TaskInfo, split: EncodedSplit, fp32: list[np.ndarray],
                     int8: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(fp32 margin ≥ 0, int8 margin − fp32 margin) per decision; int8 flips the decision where their sum < 0.
    Token tasks: the labelled first sub-tokens only, as in the label agreement."""
    if info.type == "multi_label_classification":
        a, b = np.stack(fp32).ravel(), np.stack(int8).ravel()
        positive = a > 0
        margin = np.where(positive, a, -a)
        return margin, np.where(positive, b, -b) - margin
    if info.type == "sequence_classification":
        a, b = np.stack(fp32), np.stack(int8)
    else:
        keep = [np.asarray(labels) != IGNORE_INDEX for labels in split.labels]
        a = np.concatenate([x[k] for x, k in zip(fp32, keep, strict=True)])
        b = np.concatenate([x[k] for x, k in zip(int8, keep, strict=True)])
    top = a.argmax(-1)
    margin = _top_margin(a, top)
    return margin, _top_margin(b, top) - margin


def _top_margin(logits: np.ndarray, top: np.ndarray) -> np.ndarray:
    """logit of class `top` minus the largest other logit, per row."""
    rows = np.arange(len(logits))
    others = logits.astype(np.float64, copy=True)
    others[rows, top] = -np.inf
    return logits[rows, top] - others.max(-1)
