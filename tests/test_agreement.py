"""Counted and expected label agreement between a model and its int8 graph."""

import numpy as np
import pytest

from distill.data.tasks import IGNORE_INDEX, EncodedSplit, TaskData, TaskInfo
from distill.export.agreement import decision_margins, expected_agreement, label_agreement

CLS = TaskInfo("cls", "sequence_classification", ["a", "b", "c"], "accuracy")


def _task(info, labels):
    return TaskData(info, {}, {"dev": EncodedSplit([np.zeros(2, np.int64)] * len(labels), labels)})


def _cls_logits(margins):
    return [np.array([m, 0.0, -1.0]) for m in margins]


def test_no_shift_means_full_agreement():
    task = _task(CLS, [0, 0, 0])
    logits = {"cls": _cls_logits([0.1, 1.0, 2.0])}
    assert expected_agreement([task], "dev", logits, logits) == {"cls": 1.0}


def test_every_shift_is_applied_to_every_margin():
    # margins 0.1, 1, 2, 3; one example's margin moved by -1.5 and the rest by nothing: that shift would flip
    # the margins 0.1 and 1 (2 of 4), and it is one of 4 shifts, so 2/16 decisions are expected to flip
    task = _task(CLS, [0, 0, 0, 0])
    fp32 = {"cls": _cls_logits([0.1, 1.0, 2.0, 3.0])}
    int8 = {"cls": _cls_logits([0.1, 1.0, 2.0, 1.5])}
    assert label_agreement([task], "dev", fp32, int8) == {"cls": 1.0}, "no label flipped on these examples"
    assert expected_agreement([task], "dev", fp32, int8)["cls"] == pytest.approx(1 - 2 / 16)


def test_a_flip_to_a_third_class_counts():
    info = CLS
    fp32 = {"cls": [np.array([1.0, 0.0, 0.5])]}
    int8 = {"cls": [np.array([1.0, 0.0, 1.2])]}
    margin, shift = decision_margins(info, EncodedSplit([], [0]), fp32["cls"], int8["cls"])
    assert margin.tolist() == [0.5] and shift.tolist() == pytest.approx([-0.7])
    assert expected_agreement([_task(info, [0])], "dev", fp32, int8) == {"cls": 0.0}


def test_token_tasks_use_the_labelled_tokens_only():
    info = TaskInfo("tag", "token_classification", ["O", "B"], "entity_f1")
    labels = [np.array([0, IGNORE_INDEX, 1])]
    fp32 = {"tag": [np.array([[1.0, 0.0], [0.0, 0.1], [0.0, 2.0]])]}
    int8 = {"tag": [np.array([[1.0, 0.0], [0.0, 9.0], [0.0, 2.0]])]}  # only the ignored token moved
    assert expected_agreement([_task(info, labels)], "dev", fp32, int8) == {"tag": 1.0}
    margin, _ = decision_margins(info, EncodedSplit([], labels), fp32["tag"], int8["tag"])
    assert margin.tolist() == [1.0, 2.0]


def test_multi_label_margins_are_the_distance_from_zero():
    info = TaskInfo("tags", "multi_label_classification", ["x", "y"], "micro_f1")
    fp32 = {"tags": [np.array([0.5, -2.0])]}
    int8 = {"tags": [np.array([-0.5, -2.0])]}  # x flips (shift -1 against margin 0.5), y stays
    margin, shift = decision_margins(info, EncodedSplit([], [None]), fp32["tags"], int8["tags"])
    assert margin.tolist() == [0.5, 2.0] and shift.tolist() == [-1.0, 0.0]
    # shift -1 flips the 0.5 margin only: 1 of 4 pairs
    assert expected_agreement([_task(info, [None])], "dev", fp32, int8)["tags"] == pytest.approx(0.75)


def test_regression_is_counted_within_the_tolerance():
    info = TaskInfo("score", "regression", [], "pearson")
    task = _task(info, [0.0, 10.0])
    fp32 = {"score": [np.array([1.0]), np.array([2.0])]}
    int8 = {"score": [np.array([1.1]), np.array([5.0])]}
    assert expected_agreement([task], "dev", fp32, int8) == label_agreement([task], "dev", fp32, int8) == {"score": 0.5}
