"""Counted and expected label agreement between a model and its int8 graph."""

import numpy as np
import pytest

from distill.data.tasks import IGNORE_INDEX, EncodedSplit, TaskData, TaskInfo
from distill.export.agreement import NEIGHBOURS, decision_margins, expected_agreement, expected_flips, label_agreement

CLS = TaskInfo("cls", "sequence_classification", ["a", "b", "c"], "accuracy")


def _task(info, labels):
    return TaskData(info, {}, {"dev": EncodedSplit([np.zeros(2, np.int64)] * len(labels), labels)})


def _cls_logits(margins):
    return [np.array([m, 0.0, -1.0]) for m in margins]


def test_no_shift_means_full_agreement():
    task = _task(CLS, [0, 0, 0])
    logits = {"cls": _cls_logits([0.1, 1.0, 2.0])}
    assert expected_agreement([task], "dev", logits, logits) == {"cls": 1.0}


def test_every_shift_is_applied_to_every_margin_of_a_small_split():
    # fewer decisions than NEIGHBOURS[0]: each margin meets every shift. Margins 0.1, 1, 2, 3; one example's
    # margin moved by -1.5 and the rest by nothing: that shift would flip the margins 0.1 and 1 (2 of 4), and it
    # is one of 4 shifts, so 2/16 decisions are expected to flip
    task = _task(CLS, [0, 0, 0, 0])
    fp32 = {"cls": _cls_logits([0.1, 1.0, 2.0, 3.0])}
    int8 = {"cls": _cls_logits([0.1, 1.0, 2.0, 1.5])}
    assert label_agreement([task], "dev", fp32, int8) == {"cls": 1.0}, "no label flipped on these examples"
    assert expected_agreement([task], "dev", fp32, int8)["cls"] == pytest.approx(1 - 2 / 16)


def test_borderline_margins_meet_the_shifts_of_borderline_decisions():
    # int8 moves the borderline decisions (margin 0.1) by -0.2 or +0.2 and the confident ones (margin 5) by 0.01:
    # half the borderline labels flip. Pairing every margin with every shift would expect a quarter of them to;
    # the shifts of the nearest margins expect half, as counted
    n = 4 * NEIGHBOURS[0]
    margin = np.r_[np.full(n, 0.1), np.full(n, 5.0)]
    shift = np.r_[np.tile([-0.2, 0.2], n // 2), np.full(n, 0.01)]
    counted = float((margin + shift < 0).mean())
    every_pair = float((np.sort(shift)[None, :] < -margin[:, None]).mean())
    assert counted == 0.25 and every_pair == pytest.approx(0.125)
    assert float(expected_flips(margin, shift).mean()) == pytest.approx(counted, abs=0.01)
    assert expected_flips(margin, shift)[n:].max() == 0.0, "a confident decision meets only small shifts"


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
