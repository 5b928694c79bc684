"""`textclf predict` misused, as a user having a bad day does it, through the installed command.

Every case runs against a copy of one finished 2-fold tiny run (the session's kfold_run, copied once per module so
that a check that failed to refuse could not damage the run other tests read). A REFUSED case exits 2 with one
`textclf: error:` line naming the option, file or column at fault and what to do, no traceback, and leaves the
files it was about untouched (the input table, the run's own files). ACCEPTED cases are awkward but fine.

One line per case: name -> (make the files in the case folder, predict's arguments, patterns the output must
contain). In the arguments RUN stands for the copied run folder.
"""
from __future__ import annotations

import re
import shutil

import pytest
from conftest import (assert_refused_clearly, describe, file_hashes, make_frame,
                      run_concurrently, run_textclf, selected_cases, write_frame)

pytestmark = pytest.mark.slow

RUN = "<RUN>"
NO_MODEL = "/nonexistent/textclf-misuse-model"  # never given: assert_refused_clearly only checks it does not show


def new_table(d, name="new.csv", edit=None, n=12):
    frame = make_frame(n, seed=11)
    if edit:
        frame = edit(frame)
    write_frame(frame, d / name)


def sweep_folder(d):
    """multirun/<day>/<time>/<job>/: a sweep of two runs (copies of the run)."""
    for job in ("0_pooling=mean", "1_pooling=cls"):
        shutil.copytree(d.parent / "run", d / "multirun" / "2026-12-01" / "10-00-00" / job)
    new_table(d)


REFUSED = {
    # user sees: run_dir '.../multirun/2026-12-01' holds 2 run(s) (a sweep or outputs folder), not one run: give one
    # of them, e.g. run_dir=.../10-00-00/0_pooling=mean (runs: ...; `textclf report ...` ranks them)
    "sweep_folder_as_run_dir": (sweep_folder, ["run_dir=multirun/2026-12-01", "input=new.csv"],
                                [r"holds 2 run\(s\)", "not one run", "textclf report"]),
    # user sees: run_dir '.../run/fold_1' is one fold of a run: give the run folder itself, run_dir=.../run
    # (folds=[1] uses only this fold)
    "fold_folder_as_run_dir": (new_table, [f"run_dir={RUN}/fold_1", "input=new.csv"],
                               ["is one fold of a run", r"folds=\[1\] uses only this fold"]),
    # user sees: run_dir '.../new.csv' is a file, not a folder: give the run folder textclf train wrote (...)
    "table_as_run_dir": (new_table, ["run_dir=new.csv", "input=new.csv"], ["new.csv' is a file, not a folder"]),
    # user sees: invalid options: - input: required (textclf predict run_dir=<run folder> input=<table> ...)
    "input_missing": (new_table, [f"run_dir={RUN}"], ["input: required", "input=<table>"]),
    # user sees: output 'new.csv' is the input table: the predictions would overwrite your data; choose another
    # output, e.g. output=predictions.csv
    "output_is_the_input": (new_table, [f"run_dir={RUN}", "input=new.csv", "output=new.csv"],
                            ["output 'new.csv' is the input table", "overwrite your data"]),
    # the same file by another name
    "output_is_the_input_by_another_path": (new_table, [f"run_dir={RUN}", "input=new.csv", "output=./sub/../new.csv"],
                                            ["is the input table"]),
    # user sees: output 'out' is a folder: give a file name, e.g. output=out/predictions.csv
    "output_is_a_folder": (lambda d: (new_table(d), (d / "out").mkdir()), [f"run_dir={RUN}", "input=new.csv",
                                                                           "output=out"],
                           ["output 'out' is a folder", "output=out/predictions.csv"]),
    # user sees: output '.../run/oof.csv' is a file of the run itself (oof.csv): writing predictions there would
    # break the run; choose another output, e.g. output=.../run/predictions.csv
    "output_overwrites_the_run": (new_table, [f"run_dir={RUN}", "input=new.csv", f"output={RUN}/oof.csv"],
                                  [r"is a file of the run itself \(oof.csv\)"]),
    "output_overwrites_the_run_config": (new_table, [f"run_dir={RUN}", "input=new.csv", f"output={RUN}/config.yaml"],
                                         [r"is a file of the run itself \(config.yaml\)"]),
    # user sees: output 'preds.parquet': predict writes CSV, but the name ends in '.parquet'; name it preds.csv
    "output_named_parquet": (new_table, [f"run_dir={RUN}", "input=new.csv", "output=preds.parquet"],
                             ["predict writes CSV", "name it preds.csv"]),
    # user sees: input 'new.csv': no column text_col='txet'; its columns are: text, label; did you mean text_col='text'?
    "text_col_typo": (new_table, [f"run_dir={RUN}", "input=new.csv", "text_col=txet"],
                      ["no column text_col='txet'", "did you mean text_col='text'"]),
    # user sees: text_col and label_col (the run's data.label_col): both name column 'label', but a column can have
    # only one role: point text_col at the column that holds the texts, or label_col (...) at the one that holds ...
    "text_col_is_the_label_col": (new_table, [f"run_dir={RUN}", "input=new.csv", "text_col=label"],
                                  [r"text_col and label_col \(the run's data.label_col\)", "column 'label'",
                                   "only one role"]),
    # user sees: text_col and label_col: both name column 'text', ...
    "label_col_is_the_text_col": (new_table, [f"run_dir={RUN}", "input=new.csv", "label_col=text"],
                                  ["text_col", "label_col", "column 'text'", "only one role"]),
    # user sees: text_pair_col=hypothesis: the run was trained on single texts (no data.text_pair_col), so it cannot
    # read text pairs; drop text_pair_col
    "pair_col_for_a_single_text_run": (lambda d: new_table(d, edit=lambda f: f.assign(hypothesis=f.text)),
                                       [f"run_dir={RUN}", "input=new.csv", "text_pair_col=hypothesis"],
                                       ["trained on single texts", "drop text_pair_col"]),
    # user sees: input 'renamed.csv': no column text_col='text'; its columns are: body, label; set text_col to the
    # column to use
    "input_with_other_column_names": (lambda d: new_table(d, "renamed.csv",
                                                          lambda f: f.rename(columns={"text": "body"})),
                                      [f"run_dir={RUN}", "input=renamed.csv"],
                                      ["renamed.csv", "no column text_col='text'", "body, label", "set text_col"]),
    # user sees: folds=[7]: the run has no fold(s) 7; it has fold(s) 0, 1 (folds=null uses them all)
    "fold_that_does_not_exist": (new_table, [f"run_dir={RUN}", "input=new.csv", "folds=[7]"],
                                 [r"folds=\[7\]", "has fold\\(s\\) 0, 1"]),
    # user sees: folds=[] picks no fold; the run has fold(s) 0, 1: pick some, or folds=null for all
    "no_folds": (new_table, [f"run_dir={RUN}", "input=new.csv", "folds=[]"], [r"folds=\[\] picks no fold"]),
    # user sees: invalid options: - batch_size: must be an integer >= 1, got 0
    "zero_batch_size": (new_table, [f"run_dir={RUN}", "input=new.csv", "batch_size=0"], ["batch_size", ">= 1"]),
    # user sees: input 'empty.csv' has no rows (only a header)
    "empty_table": (lambda d: (d / "empty.csv").write_text("text,label\n"), [f"run_dir={RUN}", "input=empty.csv"],
                    ["empty.csv", "no rows"]),
    # user sees: input 'new.csv': data row 1 has label 'cooking', which the training data does not have; known ...
    "label_the_run_never_saw": (lambda d: new_table(d, edit=lambda f: f.assign(label="cooking")),
                                [f"run_dir={RUN}", "input=new.csv"], ["cooking", "known labels"]),
    # user sees (CPU machine): device=cuda:5 but no CUDA device is available; use device=cpu or auto
    # (a machine with fewer GPUs: device=cuda:5 but this machine has 1 CUDA device(s) (cuda:0); ...)
    "missing_gpu": (new_table, [f"run_dir={RUN}", "input=new.csv", "device=cuda:5"], [r"(?<!trainer\.)device=cuda:5"]),
}

# awkward but fine: predictions are written
ACCEPTED = {
    # an output folder that does not exist yet is made
    "output_in_a_new_folder": (new_table, [f"run_dir={RUN}", "input=new.csv", "output=out/today/preds.csv"],
                               "out/today/preds.csv"),
    # predictions written inside the run folder under a new name
    "output_inside_the_run": (new_table, [f"run_dir={RUN}", "input=new.csv", f"output={RUN}/new_predictions.csv"],
                              "run/new_predictions.csv"),
}



@pytest.fixture(scope="module")
def run_copy(kfold_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("misuse")
    shutil.copytree(kfold_run.run_dir, root / "run")
    return root / "run"


def _run(name, run_dir):
    setup, args, _ = REFUSED[name] if name in REFUSED else ACCEPTED[name]
    cwd = run_dir.parent / name
    cwd.mkdir()
    if setup:
        setup(cwd)
    before = file_hashes(cwd), file_hashes(run_dir)
    args = [a.replace(RUN, str(run_dir)) for a in args]
    if not any(a.startswith("device=") for a in args):
        args.append("device=cpu")
    result = run_textclf(["predict", *args], cwd, timeout=300)
    return result, cwd, before


@pytest.fixture(scope="module")
def results(request, run_copy):
    names = selected_cases(request) or list(REFUSED) + list(ACCEPTED)
    # refused cases first and together; the accepted ones write into the run folder, so they come after
    out = run_concurrently([n for n in names if n in REFUSED], lambda name: _run(name, run_copy))
    for n in names:
        if n in ACCEPTED:
            out[n] = _run(n, run_copy)
    return out


def test_the_corpus_is_large_enough():
    assert len(REFUSED) + len(ACCEPTED) >= 20


@pytest.mark.parametrize("case", list(REFUSED))
def test_predict_misuse_is_refused_with_one_clear_message(results, run_copy, case):
    (rc, out, err), cwd, (files_before, run_before) = results[case]
    assert rc == 2, describe((rc, out, err))
    assert_refused_clearly(rc, out, err, REFUSED[case][2], no_model=NO_MODEL)
    assert [ln for ln in err.splitlines() if ln.startswith("textclf: error:")], describe((rc, out, err))
    # nothing the case was about changed: the input table, the case's files, the run's own files
    assert {k: v for k, v in file_hashes(cwd).items() if k in files_before} == files_before, "a refused predict wrote"
    assert {k: v for k, v in file_hashes(run_copy).items() if k in run_before} == run_before, "the run was modified"


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_awkward_but_fine_predict_writes_predictions(results, run_copy, case):
    (rc, out, err), cwd, (_, run_before) = results[case]
    assert rc == 0, describe((rc, out, err))
    written = ACCEPTED[case][2]
    path = run_copy.parent / written if written.startswith("run/") else cwd / written
    assert path.is_file(), f"{path} was not written"
    assert len(path.read_text().splitlines()) == 12 + 1
    assert {k: v for k, v in file_hashes(run_copy).items() if k in run_before} == run_before, "the run was modified"


def test_error_lines_name_the_option_not_the_trainer(results):
    """predict's options are run_dir, input, output, device...: its messages must not send the user to trainer.*"""
    for case in REFUSED:
        if case in results:
            (rc, out, err), _, _ = results[case]
            errors = "\n".join(ln for ln in err.splitlines() if ln.startswith("textclf: error:"))
            assert not re.search(r"\btrainer\.", errors), (case, errors)
