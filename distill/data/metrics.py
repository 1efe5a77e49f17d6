"""Task metrics: accuracy and macro-F1 for classification, entity-level F1 for token tagging, micro/macro-F1 for
multi-label classification (threshold 0.5), Pearson and Spearman correlation for regression."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from seqeval.metrics import f1_score as entity_f1
from sklearn.metrics import accuracy_score, f1_score

from distill.data.tasks import IGNORE_INDEX, EncodedSplit, TaskInfo


def score(info: TaskInfo, split: EncodedSplit, logits: list[np.ndarray]) -> dict[str, float]:
    """Every metric of a task, from per-example logits ([C] per example, or [tokens, C])."""
    if info.type == "sequence_classification":
        gold = np.asarray(split.labels)
        pred = np.asarray([int(np.argmax(x)) for x in logits])
        return {
            "accuracy": float(accuracy_score(gold, pred)),
            "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
        }
    if info.type == "multi_label_classification":
        gold = np.stack(split.labels).astype(np.int64)
        pred = multi_label_decisions(np.stack(logits))
        return {"micro_f1": float(f1_score(gold, pred, average="micro", zero_division=0)),
                "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0))}
    if info.type == "regression":
        gold = np.asarray(split.labels, dtype=np.float64)
        pred = np.asarray([float(np.ravel(x)[0]) for x in logits])
        return {"pearson": _correlation(pearsonr, gold, pred), "spearman": _correlation(spearmanr, gold, pred)}
    gold_tags, pred_tags = [], []
    correct = total = 0
    for labels, example_logits in zip(split.labels, logits, strict=True):
        keep = labels != IGNORE_INDEX
        gold = labels[keep]
        pred = np.argmax(example_logits[: len(labels)], axis=-1)[keep]
        gold_tags.append([info.labels[i] for i in gold])
        pred_tags.append([info.labels[i] for i in pred])
        correct += int((gold == pred).sum())
        total += int(keep.sum())
    return {"entity_f1": float(entity_f1(gold_tags, pred_tags, zero_division=0)),
            "token_accuracy": correct / max(total, 1)}


def multi_label_decisions(logits: np.ndarray) -> np.ndarray:
    """0/1 per label: sigmoid(logit) > 0.5, i.e. logit > 0."""
    return (np.asarray(logits) > 0).astype(np.int64)


def _correlation(measure, gold: np.ndarray, pred: np.ndarray) -> float:
    """A correlation coefficient; 0 where it is undefined (fewer than 2 examples, or a constant side)."""
    if len(gold) < 2 or np.ptp(gold) == 0 or np.ptp(pred) == 0:
        return 0.0
    value = float(measure(gold, pred)[0])
    return value if np.isfinite(value) else 0.0


def mean_score(scores: dict[str, float]) -> float:
    """The unweighted mean of the tasks' primary metrics."""
    return float(np.mean(list(scores.values()))) if scores else 0.0
