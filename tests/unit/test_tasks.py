"""Tasks: what labels mean, how logits become outputs and decisions, and the tables a run writes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from textclf.errors import TextclfError
from textclf.data.metrics import compute_metrics
from textclf.data.tasks import LabelSpace, infer_task, tune_thresholds


@pytest.mark.parametrize("labels, expected", [
    (["a", "b", "a"], "binary"),
    (["a", "b", "c"], "multiclass"),
    (["a|b", "b", "c"], "multilabel"),
    ([["a", "b"], ["c"]], "multilabel"),
    ([0.5, 1.25, 3.0], "regression"),
    ([1, 2, 3, 1], "multiclass"),
])
def test_task_is_inferred_from_the_labels(labels, expected):
    assert infer_task(labels, "|") == expected


def test_several_label_columns_mean_regression():
    space = LabelSpace.fit([[1.0, 2.0], [3.0, 4.5]], target_names=["x", "y"])
    assert space.task == "regression" and space.classes == ["x", "y"]
    assert space.encode([[1.0, 2.0]], "t").tolist() == [[1.0, 2.0]]


def test_multilabel_encoding_is_multi_hot_and_rejects_unknown_labels():
    space = LabelSpace.fit(["sport|news", "news", "tech"])
    assert space.task == "multilabel" and space.classes == ["news", "sport", "tech"]
    assert space.encode(["sport|news", "tech"], "t").tolist() == [[1, 1, 0], [0, 0, 1]]
    with pytest.raises(TextclfError, match="row 2.*'weather'"):
        space.encode(["news", "weather"], "data.valid_file 'v.csv'")


def test_regression_rejects_a_non_numeric_target_naming_the_row():
    space = LabelSpace.fit([0.5, 1.5], task="regression")
    with pytest.raises(TextclfError, match="row 2 has target 'high'"):
        space.encode([0.1, "high"], "data.train_file 't.csv'")


def test_float_labels_with_a_class_task_are_a_clear_error():
    with pytest.raises(TextclfError, match="task=regression"):
        LabelSpace.fit([0.5, 1.5, 2.5], task="multiclass")


def test_single_logit_binary_gives_two_probability_columns():
    space = LabelSpace("binary", ["neg", "pos"], single_logit=True)
    assert space.num_outputs == 1
    probs = space.outputs(np.array([[0.0], [2.0], [-30.0]]))
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs[1, 1], 1 / (1 + np.exp(-2.0)))
    assert space.decide(probs).tolist()[1:] == [1, 0]


def test_multilabel_decisions_follow_the_threshold_per_class():
    space = LabelSpace("multilabel", ["a", "b"], threshold=[0.3, 0.8])
    probs = np.array([[0.4, 0.7], [0.2, 0.9]])
    assert space.decide(probs).tolist() == [[1, 0], [0, 1]]
    table = space.table(probs, y_true=np.array([[1, 0], [0, 0]], dtype=np.float32))
    assert table["pred"].tolist() == ["a", "b"] and table["label"].tolist() == ["a", ""]


def test_tuned_thresholds_do_not_lower_out_of_fold_f1():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < 0.3).astype(np.float32)
    probs = np.clip(y * 0.35 + rng.random((200, 3)) * 0.4, 0, 1)  # positives score higher, but below 0.5
    space = LabelSpace("multilabel", ["a", "b", "c"])
    before = compute_metrics(space, y, probs)["macro_f1"]
    space = dataclasses.replace(space, threshold=tune_thresholds(y, probs))
    after = compute_metrics(space, y, probs)["macro_f1"]
    assert after > before


def test_regression_metrics_match_their_definitions():
    space = LabelSpace("regression", ["target"])
    y = np.array([[1.0], [2.0], [3.0], [4.0]])
    pred = np.array([[1.5], [2.0], [2.5], [5.0]])
    m = compute_metrics(space, y, pred)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((pred - y) ** 2)))
    assert m["mae"] == pytest.approx(0.5)
    assert m["spearman"] == pytest.approx(1.0)
