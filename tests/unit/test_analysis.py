"""Error analysis (textclf.observe.analysis) on crafted data: duplicates and near duplicates within the training table,
training texts leaking into the test table, conflicting labels flagged, texts cut to max_length per class, class
balance, label issues found on probability matrices with a few obviously flipped rows (multiclass, binary,
multilabel), the largest regression residuals, and a run without cleanlab."""
from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest

from textclf.data.tables import Encoded
from textclf.data.tasks import LabelSpace
from textclf.observe import analysis
from textclf.observe.analysis import (Rows, class_balance, data_checks, duplicates, examine_labels, label_issues,
                                      label_strings, leakage, normalise, over_max_length, residuals,
                                      truncation_report)

LABEL_ISSUE_COLUMNS = ["row", "text", "given_label", "suggested_label", "score"]


# ----------------------------------------------------------------------------- normalising
@pytest.mark.parametrize("a, b", [
    ("Hello, World!", "hello world"),
    ("  many   spaces\there\n", "many spaces here"),
    ("ﬁne Ｆｕｌｌ width", "fine full width"),  # NFKC: the ligature and full-width letters
    ("«Quoted» — text…", "quoted text"),
    ("Straße", "strasse"),  # casefolded
])
def test_normalise_makes_near_duplicates_equal(a, b):
    assert normalise(a) == normalise(b)


def test_normalise_keeps_words_apart():
    assert normalise("the match") != normalise("the market")


# ----------------------------------------------------------------------------- duplicates within a table
def test_exact_and_near_duplicates_within_the_training_table():
    texts = ["Goal for the team", "stock market falls", "goal for the team!", "Goal for the team",
             "vote today", "STOCK   market falls", "vote today", "unique text"]
    labels = ["sport", "business", "sport", "sport", "politics", "business", "sport", "tech"]
    found = duplicates(Rows(texts, labels=labels))
    exact, near = found["exact"], found["near"]
    # exact: rows 0 and 3 (same label), rows 4 and 6 (labels differ: conflicting, listed first)
    assert exact["groups"] == 2 and exact["rows"] == 4 and exact["conflicting_groups"] == 1
    assert [g["rows"] for g in exact["shown"]] == [[4, 6], [0, 3]]
    assert exact["shown"][0]["conflicting"] and exact["shown"][0]["labels"] == {"politics": 1, "sport": 1}
    assert not exact["shown"][1]["conflicting"]
    # near: rows written differently that normalise alike: 0, 2, 3 and 1, 5; rows 4 and 6 are only exact
    assert near["groups"] == 2 and near["rows"] == 5 and near["conflicting_groups"] == 0
    assert sorted(g["rows"] for g in near["shown"]) == [[0, 2, 3], [1, 5]]
    assert found["duplicate_rows"] == 2


def test_duplicate_groups_use_the_data_row_numbers_and_pairs():
    texts, pairs = ["a b", "a b", "a b"], ["x", "y", "x"]
    found = duplicates(Rows(texts, pairs=pairs, labels=["1", "0", "0"], numbers=np.array([3, 7, 9])))
    (group,) = found["exact"]["shown"]  # the pair is part of the key: rows 0 and 2 only
    assert group["rows"] == [3, 9] and group["conflicting"] and "x" in group["text"]


def test_duplicate_groups_are_capped_with_their_totals(monkeypatch):
    monkeypatch.setattr(analysis, "MAX_GROUPS", 3)
    monkeypatch.setattr(analysis, "MAX_ROWS_PER_GROUP", 2)
    texts = [f"text {i // 4}" for i in range(40)]  # 10 groups of 4
    found = duplicates(Rows(texts, labels=["a"] * 40))["exact"]
    assert found["groups"] == 10 and found["rows"] == 40 and len(found["shown"]) == 3
    assert all(g["size"] == 4 and len(g["rows"]) == 2 for g in found["shown"])


def test_unlabelled_rows_have_no_conflicts():
    found = duplicates(Rows(["x", "x"]))["exact"]
    assert found["groups"] == 1 and found["shown"][0]["labels"] is None and not found["shown"][0]["conflicting"]


# ----------------------------------------------------------------------------- leakage
def test_leakage_from_the_training_table_into_the_test_table():
    train = Rows(["Goal for the team", "stock market falls", "vote today", "tech news"],
                 labels=["sport", "business", "politics", "tech"], numbers=np.array([0, 1, 5, 6]))
    test = Rows(["goal for the team", "Goal for the team", "vote today", "something else", "TECH news!"],
                labels=["sport", "sport", "sport", "tech", "tech"])
    found = leakage(train, test)
    exact, near = found["exact"], found["near"]
    assert exact["groups"] == 2 and exact["train_rows"] == 2 and exact["other_rows"] == 2
    # "vote today" is politics in training and sport in the test table: conflicting, first
    assert exact["shown"][0]["train_rows"] == [5] and exact["shown"][0]["other_rows"] == [2]
    assert exact["shown"][0]["conflicting"] and exact["conflicting_groups"] == 1
    assert exact["shown"][1]["train_rows"] == [0] and exact["shown"][1]["other_rows"] == [1]
    # near: "goal for the team" (test rows 0, 1 with training row 0) and "TECH news!" (test row 4, training row 6)
    assert near["groups"] == 2 and sorted(g["other_rows"] for g in near["shown"]) == [[0, 1], [4]]
    assert sorted(g["train_rows"] for g in near["shown"]) == [[0], [6]]
    assert found["other_rows_leaked"] == 4 and found["other_table_rows"] == 5


def test_leakage_into_an_unlabelled_test_table_is_never_conflicting():
    found = leakage(Rows(["a", "b"], labels=["x", "y"]), Rows(["a", "c"]))
    (group,) = found["exact"]["shown"]
    assert group["other_labels"] is None and not group["conflicting"] and group["train_labels"] == {"x": 1}


# ----------------------------------------------------------------------------- lengths and classes
def test_over_max_length_from_the_runs_tokenization():
    lengths = np.array([5, 8, 3, 8, 2])  # max_length 8: rows 1 and 3 were cut
    encoded = Encoded(np.zeros(lengths.sum(), np.int32), np.concatenate([[0], np.cumsum(lengths)]))
    assert over_max_length(encoded, 4, 8).tolist() == [False, True, False, True]
    windows = Encoded(np.zeros(10, np.int32), np.arange(0, 12, 2), doc=np.array([0, 0, 1, 2, 2]))
    assert over_max_length(windows, 3, 8).tolist() == [True, False, True]


def test_truncation_per_class_and_for_multilabel_rows():
    multiclass = LabelSpace("multiclass", ["a", "b", "c"])
    over = np.array([True, False, True, True])
    y = np.array([0, 0, 1, 1])
    report = truncation_report(over, analysis.row_classes(multiclass, y), multiclass.names, 16, "head")
    assert report["cut"] == 3 and report["share"] == 0.75 and report["rows"] == 4
    assert report["per_class"] == {"a": {"rows": 2, "cut": 1, "share": 0.5}, "b": {"rows": 2, "cut": 2, "share": 1.0},
                                   "c": {"rows": 0, "cut": 0, "share": None}}
    multilabel = LabelSpace("multilabel", ["x", "y"])
    y = np.array([[1, 1], [0, 1], [0, 0]], dtype=np.float32)
    report = truncation_report(np.array([True, False, True]), analysis.row_classes(multilabel, y), ["x", "y"], 8,
                               "window")
    assert report["per_class"]["x"] == {"rows": 1, "cut": 1, "share": 1.0}
    assert report["per_class"]["y"] == {"rows": 2, "cut": 1, "share": 0.5} and "window" in report["meaning"]


def test_class_balance_counts_every_class_in_order():
    space = LabelSpace("multilabel", ["x", "y", "z"])
    y = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
    balance = class_balance(analysis.row_classes(space, y), space.names)
    assert balance["counts"] == {"x": 1, "y": 2, "z": 0} and balance["rows_without_label"] == 1
    assert label_strings(space, y) == ["x|y", "y", ""]


# ----------------------------------------------------------------------------- label issues
def flipped(n: int, k: int, flips: dict[int, int], seed: int = 0):
    """n rows cycling over k classes, probabilities confidently on each row's true class (0.9 and a little noise);
    `flips` row -> the wrong label given to it, a row the model is sure about (0.98 on its true class)."""
    rng = np.random.default_rng(seed)
    y_true = np.arange(n) % k
    probs = np.full((n, k), 0.04) + rng.uniform(0, 0.02, (n, k))
    probs[np.arange(n), y_true] = 0.9
    given = y_true.copy()
    for row, label in flips.items():
        given[row] = label
        probs[row] = 0.01
        probs[row, y_true[row]] = 0.98
    probs /= probs.sum(axis=1, keepdims=True)
    return given, probs, y_true


def test_label_issues_multiclass_finds_the_flipped_rows_first():
    pytest.importorskip("cleanlab")
    space = LabelSpace("multiclass", ["business", "politics", "sport"])
    given, probs, y_true = flipped(90, 3, {4: 0, 17: 0, 50: 1})
    texts = [f"text {i}" for i in range(90)]
    table = label_issues(space, given, probs, np.arange(90), texts)
    assert list(table.columns) == LABEL_ISSUE_COLUMNS
    assert sorted(table["row"][:3]) == [4, 17, 50] and len(table) == 3
    assert table["score"].is_monotonic_increasing  # ranked: most likely wrong first
    row = table.set_index("row").loc[4]
    assert row["text"] == "text 4" and row["given_label"] == "business" and row["suggested_label"] == "politics"


def test_label_issues_binary():
    pytest.importorskip("cleanlab")
    space = LabelSpace("binary", ["neg", "pos"])
    given, probs, _ = flipped(60, 2, {3: 0, 10: 1})
    table = label_issues(space, given, probs, np.arange(60), [f"t{i}" for i in range(60)])
    assert sorted(table["row"]) == [3, 10]
    assert dict(zip(table["row"], table["suggested_label"])) == {3: "pos", 10: "neg"}


def test_label_issues_multilabel_joins_labels_with_the_separator():
    pytest.importorskip("cleanlab")
    space = LabelSpace("multilabel", ["a", "b", "c"], sep=";")
    n = 60
    truth = np.zeros((n, 3), dtype=np.float32)
    truth[np.arange(n), np.arange(n) % 3] = 1
    truth[::4, (np.arange(n)[::4] + 1) % 3] = 1  # every fourth row has two labels
    probs = np.where(truth == 1, 0.95, 0.05)
    given = truth.copy()
    given[5] = [1, 0, 0]  # truly c: given a
    given[22] = [0, 1, 1]  # truly b: given b and c
    table = label_issues(space, given, probs, np.arange(n), [f"t{i}" for i in range(n)])
    assert set(table["row"]) == {5, 22}
    by_row = table.set_index("row")
    assert by_row.loc[22, "given_label"] == "b;c" and by_row.loc[22, "suggested_label"] == "b"
    assert by_row.loc[5, "given_label"] == "a" and by_row.loc[5, "suggested_label"] == "c"


def test_examine_labels_leaves_valid_file_rows_out_and_numbers_rows_as_oof(caplog):
    """Positions 0..59 are training rows (data rows 100..159), 60..69 validation-file rows; only half the training
    rows were validated (a holdout): those are examined, and the summary and log say so."""
    pytest.importorskip("cleanlab")
    space = LabelSpace("multiclass", ["a", "b", "c"])
    given, probs, _ = flipped(70, 3, {4: 0, 62: 0})
    scored = np.concatenate([np.arange(0, 30), np.arange(60, 70)])
    with caplog.at_level(logging.INFO, logger="textclf.observe.analysis"):
        examined = examine_labels(space, given, scored, probs[scored], 60, [f"t{i}" for i in range(60)],
                                  numbers=np.arange(100, 160))
    assert examined.table["row"].tolist() == [104]  # row 62, a validation-file row, is not examined
    assert examined.table["text"].tolist() == ["t4"]
    summary = examined.summary
    assert summary["examined_rows"] == 30 and summary["train_rows"] == 60 and summary["valid_file_rows_left_out"] == 10
    assert not summary["all_train_rows_examined"] and "30 of the 60" in summary["scope"]
    assert summary["issues"] == 1 and "30 of the 60" in caplog.text


def test_no_training_row_validated_writes_a_table_with_its_header_only():
    pytest.importorskip("cleanlab")
    space = LabelSpace("multiclass", ["a", "b", "c"])
    given, probs, _ = flipped(12, 3, {})
    examined = examine_labels(space, given, np.arange(6, 12), probs[6:], 6, ["t"] * 6)
    assert examined.table is not None and examined.table.empty
    assert list(examined.table.columns) == LABEL_ISSUE_COLUMNS


def test_without_cleanlab_the_run_goes_on_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "cleanlab", None)  # an import of it fails, as when it is not installed
    space = LabelSpace("multiclass", ["a", "b", "c"])
    given, probs, _ = flipped(30, 3, {4: 0})
    with caplog.at_level(logging.INFO, logger="textclf.observe.analysis"):
        examined = examine_labels(space, given, np.arange(30), probs, 30, ["t"] * 30)
    assert examined.table is None and examined.summary["issues"] is None
    lines = [r.getMessage() for r in caplog.records]
    assert lines.count("label issues need cleanlab: pip install 'textclf[cleanlab]'") == 1


def test_cleanlab_refusing_the_rows_is_a_warning_not_a_failure(caplog):
    pytest.importorskip("cleanlab")
    space = LabelSpace("binary", ["neg", "pos"])
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    with caplog.at_level(logging.WARNING, logger="textclf.observe.analysis"):
        examined = examine_labels(space, np.array([1, 1]), np.arange(2), probs, 2, ["a", "b"])
    assert examined.table is None and "error" in examined.summary and "cleanlab could not" in caplog.text


# ----------------------------------------------------------------------------- regression
def test_regression_writes_the_largest_residuals_first():
    space = LabelSpace("regression", ["target"], target_names=["target"])
    y = np.arange(10, dtype=np.float32).reshape(-1, 1)
    predicted = y.astype(np.float64).copy()
    predicted[3] += 5.0
    predicted[7] -= 2.0
    table = residuals(space, y, predicted, np.arange(10), [f"t{i}" for i in range(10)], top=3,
                      numbers=np.arange(10) * 2)
    assert list(table.columns) == ["row", "text", "given_value", "predicted_value", "residual"]
    assert table["row"].tolist()[:2] == [6, 14] and table["residual"].tolist()[:2] == [5.0, -2.0]
    assert table["text"].tolist()[:2] == ["t3", "t7"] and len(table) == 3


def test_regression_with_several_targets_names_the_target():
    space = LabelSpace("regression", ["x", "y"], target_names=["x", "y"])
    y = np.zeros((5, 2))
    predicted = np.zeros((5, 2))
    predicted[1, 0], predicted[2, 1] = 3.0, -4.0
    examined = examine_labels(space, y, np.arange(5), predicted, 5, list("abcde"))
    table = examined.table
    assert "target" in table.columns and len(table) == 10
    assert table.groupby("target")["row"].first().to_dict() == {"x": 1, "y": 2}
    assert examined.summary["written"] == 10 and "residual" in examined.summary["method"]


# ----------------------------------------------------------------------------- data_checks.json
def test_data_checks_is_plain_json_with_every_section():
    space = LabelSpace("multiclass", ["a", "b"])
    train = Rows(["x one", "X one!", "y two", "z"], labels=["a", "a", "b", "b"])
    test = Rows(["y two", "new"], labels=["a", "b"])
    checks = data_checks(space, train, np.array([0, 0, 1, 1]), np.array([True, False, False, False]), 32, "head",
                         {"test": (test, np.array([0, 1]))}, {"examined_rows": 4})
    assert json.loads(json.dumps(checks)) == checks  # plain values only
    assert checks["train"]["duplicates"]["near"]["groups"] == 1
    assert checks["leakage"]["test"]["exact"]["conflicting_groups"] == 1
    assert checks["truncation"]["per_class"]["a"]["cut"] == 1
    assert checks["class_balance"]["train"]["counts"] == {"a": 2, "b": 2}
    assert checks["class_balance"]["test"]["counts"] == {"a": 1, "b": 1}
    assert checks["label_issues"] == {"examined_rows": 4}


def test_data_checks_for_regression_summarises_the_targets():
    space = LabelSpace("regression", ["target"], target_names=["target"])
    y = np.array([[1.0], [2.0], [3.0]])
    checks = data_checks(space, Rows(["a", "a", "b"], labels=label_strings(space, y)), y, np.zeros(3, bool), 8,
                         "head")
    assert "class_balance" not in checks and checks["targets"]["train"]["target"]["mean"] == 2.0
    assert "per_class" not in checks["truncation"] and checks["train"]["duplicates"]["exact"]["conflicting_groups"] == 1
