"""A finished run's error analysis (textclf.observe.analysis through commands/train.py): label_issues.csv numbers its
rows exactly as oof.csv does and agrees with it on each row's label, decision and probability; data_checks.json
finds the duplicates and the leakage put into the tables; run.json covers both; a holdout run examines only its
holdout rows and says so; without cleanlab the run finishes and says so in one line."""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import make_frame, tiny_overrides, write_frame

from textclf.run import folder

pytestmark = pytest.mark.slow


def test_a_kfold_run_writes_label_issues_numbered_as_oof(kfold_run):
    pytest.importorskip("cleanlab")
    run_dir = kfold_run.run_dir
    issues = pd.read_csv(run_dir / folder.LABEL_ISSUES, keep_default_na=False)
    assert list(issues.columns) == ["row", "text", "given_label", "suggested_label", "score"]
    assert len(issues), "a briefly trained model gets some training labels wrong: some rows are flagged"
    assert issues["score"].is_monotonic_increasing, "most likely wrong first"
    oof = pd.read_csv(run_dir / folder.OOF, keep_default_na=False)
    train_rows = oof[oof["source"] == "train"].set_index("row")
    assert set(issues["row"]) <= set(train_rows.index)
    for _, issue in issues.iterrows():
        mine = train_rows.loc[issue["row"]]
        assert issue["text"] == kfold_run.train["text"][issue["row"]]
        assert issue["given_label"] == mine["label"] == kfold_run.train["label"][issue["row"]]
        assert issue["suggested_label"] == mine["pred"]
        # self-confidence: the out-of-fold probability of the given label
        assert issue["score"] == pytest.approx(mine[f"prob_{issue['given_label']}"], abs=1e-6)
    checks = json.loads((run_dir / folder.DATA_CHECKS).read_text(encoding="utf-8"))
    assert checks["label_issues"]["examined_rows"] == checks["label_issues"]["train_rows"] == len(kfold_run.train)
    assert checks["label_issues"]["issues"] == len(issues) and "scope" not in checks["label_issues"]
    assert checks["class_balance"]["train"]["counts"] == kfold_run.train["label"].value_counts().to_dict()
    assert checks["truncation"]["max_length"] == 32 and set(checks["truncation"]["per_class"]) == {
        "business", "politics", "sport"}
    assert "test" in checks["leakage"]
    manifest = json.loads((run_dir / folder.MANIFEST).read_text(encoding="utf-8"))["files"]
    assert folder.LABEL_ISSUES in manifest and folder.DATA_CHECKS in manifest


def test_a_holdout_run_without_cleanlab_finishes_and_checks_its_data(tiny_bert, tmp_path, monkeypatch,
                                                                     in_process_cli):
    """kfold=none: only the holdout rows have out-of-fold outputs. cleanlab hidden: no label_issues.csv, one line in
    the log. A conflicting duplicate, a near duplicate and two test rows from the training table are found."""
    monkeypatch.setitem(sys.modules, "cleanlab", None)  # an import of it fails, as when it is not installed
    train = make_frame(60, seed=0)
    train.loc[60] = {"text": train["text"][0], "label": "politics" if train["label"][0] != "politics" else "sport"}
    train.loc[61] = {"text": train["text"][1].upper() + " !", "label": train["label"][1]}
    test = make_frame(12, seed=1)
    test.loc[0, "text"], test.loc[1, "text"] = train["text"][5], "  " + train["text"][7].title() + "."
    write_frame(train, tmp_path / "train.csv")
    write_frame(test, tmp_path / "test.csv")
    run_dir = tmp_path / "run"
    rc = in_process_cli(["train", "data=csv", "data.train_file=train.csv", "data.test_file=test.csv", "kfold=none",
                         "plots=false", *tiny_overrides(tiny_bert, run_dir)])
    assert rc == 0 and (run_dir / folder.MANIFEST).exists()
    assert not (run_dir / folder.LABEL_ISSUES).exists()
    log_text = (run_dir / folder.LOG).read_text(encoding="utf-8")
    assert log_text.count("label issues need cleanlab: pip install 'textclf[cleanlab]'") == 1
    checks = json.loads((run_dir / folder.DATA_CHECKS).read_text(encoding="utf-8"))
    holdout = int((pd.read_csv(run_dir / folder.FOLDS)["fold"] >= 0).sum())
    summary = checks["label_issues"]
    assert summary["examined_rows"] == holdout < summary["train_rows"] == len(train)
    assert summary["issues"] is None and "have out-of-fold outputs" in summary["scope"]
    assert "have out-of-fold outputs" in log_text
    exact = checks["train"]["duplicates"]["exact"]
    assert exact["conflicting_groups"] == 1 and exact["shown"][0]["rows"] == [0, 60]
    near = checks["train"]["duplicates"]["near"]
    assert near["groups"] == 1 and near["shown"][0]["rows"] == [1, 61]
    leak = checks["leakage"]["test"]
    assert [g["other_rows"] for g in leak["exact"]["shown"]] == [[0]]
    assert leak["exact"]["shown"][0]["train_rows"] == [5]
    assert [g["other_rows"] for g in leak["near"]["shown"]] == [[1]] and leak["other_rows_leaked"] == 2
    manifest = json.loads((run_dir / folder.MANIFEST).read_text(encoding="utf-8"))["files"]
    assert folder.DATA_CHECKS in manifest and folder.LABEL_ISSUES not in manifest
    np.testing.assert_equal(checks["class_balance"]["train"]["rows"], len(train))
