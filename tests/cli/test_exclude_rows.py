"""data.exclude_rows through the installed command: a run trains without the listed rows of data.train_file, its
oof.csv and folds.csv keep the rows' original numbers, metrics.json and inputs.json record the list, validate
reports it, and each bad list is one clear message (exit 2, no traceback) before any model loads."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from conftest import (assert_refused_clearly, describe, make_frame, run_concurrently,
                      run_textclf, selected_cases, tiny_overrides, write_frame)

NO_MODEL = "/nonexistent/textclf-test-model"
BASE = ["train", "data=csv", "data.train_file=train.csv", f"model.name_or_path={NO_MODEL}", "trainer.device=cpu",
        "hydra.run.dir=run"]
N = 30  # make_frame cycles sport, business, politics: row i is class i % 3


def issues(rows) -> pd.DataFrame:
    """A table shaped like a run's label_issues.csv."""
    rows = list(rows)
    return pd.DataFrame({"row": rows, "text": [f"text, with a comma {r}" for r in rows],
                         "given_label": ["sport"] * len(rows), "suggested_label": ["business"] * len(rows),
                         "score": [0.01] * len(rows)})


def _lines(name: str, text: str):
    return lambda d: (d / name).write_text(text, encoding="utf-8")


# name -> (write the list into cwd, extra args, patterns the console output must contain)
CASES = {
    "missing_file": (None, ["data.exclude_rows=runs/first/label_issues.csv"],
                     [r"data.exclude_rows 'runs/first/label_issues.csv' does not exist"]),
    "no_row_column": (_lines("x.csv", "index,text\n1,a\n"), ["data.exclude_rows=x.csv"],
                      [r"no column 'row'; its columns are: 'index', 'text'"]),
    "not_row_numbers": (_lines("x.csv", "row\n3\nseven\n-1\n"), ["data.exclude_rows=x.csv"],
                        [r"2 value\(s\) are not row numbers", r"'seven' \(data row 2\), '-1' \(data row 3\)"]),
    "beyond_the_table": (lambda d: issues([2, 30, 41]).to_csv(d / "x.csv", index=False), ["data.exclude_rows=x.csv"],
                         [r"2 row\(s\) beyond data.train_file 'train.csv', which has 30 data rows \(0 to 29\): "
                          r"30, 41"]),
    "every_row": (_lines("x.txt", "\n".join(map(str, range(N)))), ["data.exclude_rows=x.txt"],
                  ["leaves out all 30 rows", "nothing is left to train on"]),
    "every_row_of_a_class": (_lines("x.txt", "\n".join(str(i) for i in range(0, N, 3))), ["data.exclude_rows=x.txt"],
                             [r"leaves no row of class\(es\) 'sport' \(all 10 of its rows\)"]),
    "class_too_small_for_the_split": (
        _lines("x.txt", "\n".join(str(i) for i in range(0, 24, 3))), ["data.exclude_rows=x.txt", "kfold=stratified",
                                                                      "kfold.n_splits=3"],
        [r"'sport' \(2 rows\) have fewer rows than kfold.n_splits=3",
         r"8 of data.train_file's 30 rows were left out by data.exclude_rows=x.txt"]),
}


def _run_case(name, root):
    setup, extra, _ = CASES[name]
    cwd = root / name
    cwd.mkdir()
    write_frame(make_frame(N, seed=7), cwd / "train.csv")
    if setup:
        setup(cwd)
    return run_textclf([*BASE, *extra], cwd, timeout=120)


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    """The cases selected in this session, a few at a time (most of each is import time)."""
    root = tmp_path_factory.mktemp("exclude_rows")
    return run_concurrently(selected_cases(request), lambda name: _run_case(name, root))


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_exclude_list_is_one_clear_message(results, case):
    rc, out, err = results[case]
    assert rc == 2, describe(results[case])
    assert_refused_clearly(rc, out, err, CASES[case][2], no_model=NO_MODEL)
    assert len([line for line in err.splitlines() if line.startswith("textclf: error")]) == 1


def test_validate_reports_the_rows_left_out_of_the_training_file_only(tmp_path, tiny_bert):
    write_frame(make_frame(N, seed=0), tmp_path / "train.csv")
    write_frame(make_frame(12, seed=1), tmp_path / "valid.csv")
    issues([4, 1, 4, 25]).to_csv(tmp_path / "label_issues.csv", index=False)
    result = run_textclf(["validate", "data=csv", "data.train_file=train.csv", "data.valid_file=valid.csv",
                          "data.exclude_rows=label_issues.csv", f"model.name_or_path={tiny_bert}",
                          "trainer.device=cpu"], tmp_path, timeout=120)
    rc, out, err = result
    assert rc == 0, describe(result)
    assert re.search(r"train\s+27 rows from train.csv .*3 more left out by data.exclude_rows \(row\(s\) 1, 4, 25\)",
                     out), describe(result)
    assert re.search(r"valid\s+12 rows from valid.csv \([^)]*\)$", out, re.M), describe(result)  # untouched
    assert "3 of the 30 rows of data.train_file 'train.csv' left out of training (row(s) 1, 4, 25)" in out + err


@pytest.mark.slow
def test_a_run_trains_without_the_rows_and_keeps_their_numbers(tmp_path, tiny_bert):
    write_frame(make_frame(60, seed=0), tmp_path / "train.csv")
    write_frame(make_frame(12, seed=1), tmp_path / "test.csv")
    left_out = [0, 7, 8, 31, 59]
    issues([31, 7, 0, 59, 8, 7]).to_csv(tmp_path / "label_issues.csv", index=False)  # duplicates are fine
    run_dir = tmp_path / "run"
    args = ["train", "data=csv", "data.train_file=train.csv", "data.test_file=test.csv",
            "data.exclude_rows=label_issues.csv", "kfold=stratified", "kfold.n_splits=2",
            *tiny_overrides(tiny_bert, run_dir)]
    result = run_textclf(args, tmp_path, timeout=600)
    rc, out, err = result
    assert rc == 0, describe(result)
    kept = [r for r in range(60) if r not in left_out]

    oof = pd.read_csv(run_dir / "oof.csv")
    assert sorted(oof["row"]) == kept and set(oof["source"]) == {"train"}  # the original numbers, every kept row
    truth = make_frame(60, seed=0)["label"]
    assert (oof.set_index("row")["label"] == truth[oof["row"]].to_numpy()).all()  # each row's own label
    folds = pd.read_csv(run_dir / "folds.csv")
    assert folds["row"].tolist() == kept
    trained = [int(n) for n in re.findall(r"fold \d: (\d+) training rows", out + err)]
    assert trained and sum(trained) == len(kept)  # two folds, each trains on the other's rows: none left out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["excluded_rows"] == 5
    assert len(pd.read_csv(run_dir / "test_predictions.csv")) == 12  # the test file is untouched
    entry = json.loads((run_dir / "inputs.json").read_text())["data.exclude_rows"]
    assert entry["file"] == "label_issues.csv" and entry["size"] == (tmp_path / "label_issues.csv").stat().st_size
    log = (run_dir / "train.log").read_text()
    assert "5 of the 60 rows of data.train_file 'train.csv' left out of training (row(s) 0, 7, 8, 31, 59)" in log

    # the finished run, rerun with the list edited in place: refused, naming the list
    issues([31, 7, 0, 59, 9]).to_csv(tmp_path / "label_issues.csv", index=False)
    result = run_textclf(args, tmp_path, timeout=300)
    rc, out, err = result
    assert rc == 2 and "holds a finished run" in err and "data.exclude_rows 'label_issues.csv'" in err, \
        describe(result)
    assert "Traceback" not in out + err
