import numpy as np

from distill.data.metrics import mean_score, score
from distill.data.tasks import EncodedSplit, TaskInfo


def test_classification_metrics():
    info = TaskInfo("t", "sequence_classification", ["a", "b"], "accuracy")
    split = EncodedSplit([np.array([1])] * 4, [0, 0, 1, 1])
    logits = [np.array([1.0, 0.0]), np.array([1.0, 0.0]), np.array([1.0, 0.0]), np.array([0.0, 1.0])]
    result = score(info, split, logits)
    assert result["accuracy"] == 0.75
    assert abs(result["macro_f1"] - (0.8 + 2 / 3) / 2) < 1e-9


def test_entity_f1_counts_whole_spans_on_first_subtokens():
    info = TaskInfo("t", "token_classification", ["O", "B-per", "I-per"], "entity_f1")
    labels = np.array([-100, 1, 2, -100, 0, 1, -100])
    split = EncodedSplit([np.zeros(7)], [labels])
    onehot = np.eye(3)
    # first span right (the ignored sub-token predicts junk), second span missed
    pred = onehot[[0, 1, 2, 0, 0, 0, 0]]
    result = score(info, split, [pred])
    assert abs(result["entity_f1"] - 2 * 1.0 * 0.5 / 1.5) < 1e-9
    assert result["token_accuracy"] == 0.75


def test_mean_score():
    assert mean_score({"a": 0.5, "b": 1.0}) == 0.75
