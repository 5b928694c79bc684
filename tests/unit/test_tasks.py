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


# ----------------------------------------------------------------------------- how labels are read
NFC, NFD = "caf\u00e9", "cafe\u0301"  # the same word; NFD is how macOS may save it


@pytest.mark.parametrize("labels, classes", [
    (["2", "10", "2"], [2, 10]),  # every label a number: numbers, sorted as numbers
    (["01", "02", "01"], [1, 2]),  # one spelling per number: fine
    (["01", "1", "x"], ["01", "1", "x"]),  # one label is text, so all are: '01' and '1' are two classes
    (["True", "False", "True"], ["False", "True"]),  # text, never booleans
    ([NFD, NFC, "tea"], [NFC, "tea"]),  # Unicode forms of one word: one class, in NFC
])
def test_labels_are_numbers_only_when_every_label_is_one(labels, classes):
    assert LabelSpace.fit(labels).classes == classes


@pytest.mark.parametrize("labels, a, b, why", [
    (["01", "1", "2"], "01", "1", "read as numbers"),
    (["1.0", "1", "2"], "1.0", "1", "read as numbers"),
    (["True", "true", "False"], "True", "true", "read as true/false"),
])
def test_spellings_of_one_value_are_refused_naming_both(labels, a, b, why):
    with pytest.raises(TextclfError, match=rf"data.train_file 't.csv': labels '{a}' and '{b}' would be the same "
                                           rf"class once {why}.*; write them one way"):
        LabelSpace.fit(labels, where="data.train_file 't.csv'")


def test_regression_targets_may_be_written_two_ways():
    space = LabelSpace.fit(["1.0", "1", "2.5", "1e-05"])
    assert space.task == "regression"
    assert space.encode(["1.0", "1", "2.5", "1e-05"], "t")[:, 0].tolist() == pytest.approx([1, 1, 2.5, 1e-05])


def test_encode_reads_every_file_as_fit_read_the_training_file():
    numbers = LabelSpace.fit([1, 2, 1])  # a CSV run: classes 1 and 2
    assert numbers.encode(["1", "2", 2.0, "02"], "input 'new.jsonl'").tolist() == [0, 1, 1, 1]
    with pytest.raises(TextclfError, match=r"row 1 has label '3'.*known labels: 1, 2"):
        numbers.encode(["3"], "input 'new.jsonl'")
    texts = LabelSpace.fit(["01", "1", "x"])
    assert texts.encode(["01", "1", 1], "t").tolist() == [0, 1, 1]
    assert LabelSpace.fit([NFC, "tea"]).encode([NFD, f" {NFC} "], "t").tolist() == [0, 0]
    old_run = LabelSpace("binary", [NFD, "tea"])  # labels.json of a run trained before labels were NFC
    assert old_run.encode([NFC], "t").tolist() == [0]
    multilabel = LabelSpace.fit([f"{NFC}|tea", "tea"])
    assert multilabel.encode([f"{NFD}|tea", [NFD]], "t").tolist() == [[1, 1], [1, 0]]
