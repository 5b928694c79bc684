"""Bad input through the installed command: a non-zero exit, one message naming what is at fault, no traceback.

Every training case points model.name_or_path at a folder that does not exist: if the data or config check
ran after the model was loaded, the message would be about the model instead. The processes are started
concurrently (each takes a few seconds of imports), once for the whole module.
"""
from __future__ import annotations

import pytest
from conftest import assert_refused_clearly, make_frame, run_concurrently, run_textclf, selected_cases, write_frame

NO_MODEL = "/nonexistent/textclf-test-model"
BASE = ["train", "data=csv", "data.train_file=train.csv", f"model.name_or_path={NO_MODEL}", "trainer.device=cpu",
        "hydra.run.dir=run"]


def _table(path, *, edit=None):
    frame = make_frame(30, seed=7)
    if edit:
        frame = edit(frame)
    write_frame(frame, path)


def _set(row, col, value):
    def edit(frame):
        frame = frame.astype(object)
        frame.loc[row, col] = value
        return frame

    return edit


def _add_rare_class(frame):
    import pandas as pd

    return pd.concat([frame, pd.DataFrame([{"text": "sunny rain cloud", "label": "weather"}])], ignore_index=True)


def _bad_bytes(path):
    path.write_bytes(b"text,label\ngoal match team,sport\nstock bank \xff\xfe price,business\nvote party,politics\n"
                     b"score goal,sport\nmarket price,business\nelection vote,politics\n")


# name -> (make the files in cwd, extra args, patterns that the console output must contain)
CASES = {
    "missing_train_file": (None, ["data.train_file=nothere/missing.csv"], ["nothere/missing.csv", "does not exist"]),
    "missing_text_column": (lambda d: _table(d / "train.csv"), ["data.text_col=review"],
                            ["review", r"columns.*\btext\b.*\blabel\b"]),
    "missing_label_column": (lambda d: _table(d / "train.csv"), ["data.label_col=stars"],
                             ["stars", r"columns.*\btext\b.*\blabel\b"]),
    # data row 7 (1-based, after the header) = frame index 6
    "empty_text_cell": (lambda d: _table(d / "train.csv", edit=_set(6, "text", "")), [],
                        ["'text'", r"row\S* 7\b"]),
    "blank_text_cell": (lambda d: _table(d / "train.csv", edit=_set(6, "text", "   ")), [],
                        ["'text'", r"row\S* 7\b"]),
    "missing_label": (lambda d: _table(d / "train.csv", edit=_set(4, "label", None)), [],
                      ["'label'", r"row\S* 5\b"]),
    "class_smaller_than_n_splits": (lambda d: _table(d / "train.csv", edit=_add_rare_class),
                                    ["kfold=stratified", "kfold.n_splits=3"], ["weather", "n_splits"]),
    "class_with_one_row_holdout": (lambda d: _table(d / "train.csv", edit=_add_rare_class), [], ["weather"]),
    "unknown_label_in_valid_file": (
        lambda d: (_table(d / "train.csv"), _table(d / "valid.csv", edit=_set(2, "label", "cooking"))),
        ["data.valid_file=valid.csv"], ["valid.csv", "cooking", r"row 3\b"]),
    "invalid_utf8_strict": (lambda d: _bad_bytes(d / "train.csv"), ["data.encoding_errors=strict"],
                            ["train.csv", "utf-8", "encoding"]),
    "unknown_option": (lambda d: _table(d / "train.csv"), ["pooling=nope"], ["pooling", "nope"]),
    "unknown_key": (lambda d: _table(d / "train.csv"), ["trainer.epochz=1"], ["epochz"]),
    "added_unknown_key": (lambda d: _table(d / "train.csv"), ["+trainer.foo=1"], ["trainer.foo"]),
    "added_unknown_group_key": (lambda d: _table(d / "train.csv"), ["+loss.gamma=2"], ["loss.gamma"]),
    "bad_precision": (lambda d: _table(d / "train.csv"), ["trainer.precision=fp64"], ["trainer.precision", "fp64"]),
    "several_problems_at_once": (lambda d: _table(d / "train.csv"),
                                 ["trainer.precision=fp64", "+trainer.foo=1", "trainer.batch_size=0"],
                                 ["trainer.precision", "trainer.foo", "trainer.batch_size"]),
    "monitor_not_computed_for_task": (lambda d: _table(d / "train.csv"), ["trainer.monitor=f1"],
                                      ["trainer.monitor", "f1"]),
    "predict_missing_run_dir": (lambda d: _table(d / "new.csv"),
                                ["@predict", "run_dir=runs/never-trained", "input=new.csv"], ["runs/never-trained"]),
    "predict_run_dir_not_a_run": (lambda d: _table(d / "new.csv"), ["@predict", "run_dir=.", "input=new.csv"],
                                  ["not a finished textclf run", "config.yaml"]),
}

XFAIL: dict[str, str] = {}  # case name -> reason, for a known bug


#: more of the same kind, also covered in-process by tests/unit and tests/config: run with the slow tests
SLOW = {"missing_label_column", "blank_text_cell", "class_with_one_row_holdout", "unknown_label_in_valid_file",
        "invalid_utf8_strict", "added_unknown_group_key", "several_problems_at_once", "predict_run_dir_not_a_run"}


def _args(extra):
    if extra and extra[0] == "@predict":
        return ["predict", *extra[1:]]
    return [*BASE, *extra]


def _run_case(name, root):
    setup, extra, _ = CASES[name]
    cwd = root / name
    cwd.mkdir()
    if setup:
        setup(cwd)
    return run_textclf(_args(extra), cwd, timeout=120)


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    """Run the cases selected in this session, a few at a time (most of each is import time)."""
    root = tmp_path_factory.mktemp("bad_input")
    return run_concurrently(selected_cases(request), lambda name: _run_case(name, root))


def _param(name):
    marks = [pytest.mark.slow] if name in SLOW else []
    if name in XFAIL:
        marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[name]))
    return pytest.param(name, marks=marks)


@pytest.mark.parametrize("case", [_param(n) for n in CASES])
def test_bad_input_fails_with_one_clear_message(results, case):
    rc, out, err = results[case]
    # textclf's own errors are printed once, on stderr; the data and config checks come before the model
    assert_refused_clearly(rc, out, err, CASES[case][2], no_model=NO_MODEL, own_error=None)

