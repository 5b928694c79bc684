"""Learning from a finished run (the teacher: the session's 2-fold run): pseudo_label=default adds its confident
decisions on unlabelled texts as training rows, `textclf distill` trains one model on its outputs; both are refused
clearly when the teacher or the texts they need are wrong."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import describe, make_frame, run_textclf, tiny_overrides, write_frame


@pytest.fixture(scope="module")
def unlabeled(kfold_run):
    return write_frame(make_frame(60, seed=7, labels=False), kfold_run.data_dir / "unlabeled.csv")


def test_pseudo_labels_join_every_fold_training_and_are_recorded(kfold_run, unlabeled, tiny_bert, tmp_path):
    run_dir = tmp_path / "pseudo"
    # the 1-epoch teacher is not sure of much: a low threshold keeps some texts, the cap keeps at most 22 (0.25 x 90) of them
    result = run_textclf(["train", "data=csv", "data.train_file=train.csv", "data.test_file=test.csv",
                          "data.unlabeled_file=unlabeled.csv", "kfold=stratified", "kfold.n_splits=2",
                          "pseudo_label=default", f"pseudo_label.teacher={kfold_run.run_dir}",
                          "pseudo_label.threshold=0.34", "pseudo_label.max_share=0.25",
                          *tiny_overrides(tiny_bert, run_dir)], kfold_run.data_dir)
    assert result[0] == 0, describe(result)
    record = json.loads((run_dir / "pseudo_labels.json").read_text())
    assert record["texts"] == 60 and record["teacher_folds"] == 2 and record["source"] == "unlabeled"
    confident = sum(record["confident_by_class"].values())
    assert record["kept"] == min(confident, 22) == len(record["rows"]) == sum(record["kept_by_class"].values())
    assert record["kept"] > 0, "a threshold below every top probability of 3 classes keeps texts"
    assert set(record["rows"]) <= set(range(60))
    # the teacher's own predictions on those texts decide their labels
    predicted = tmp_path / "teacher_on_unlabeled.csv"
    done = run_textclf(["predict", f"run_dir={kfold_run.run_dir}", "input=unlabeled.csv", f"output={predicted}"],
                       kfold_run.data_dir)
    assert done[0] == 0, describe(done)
    teacher = pd.read_csv(predicted)
    for example in record["examples"]:
        assert teacher.loc[example["row"], "pred"] == example["label"]
    log = (run_dir / "train.log").read_text()
    for fold in (0, 1):  # 45 training rows each, plus every pseudo row
        assert f"fold {fold}: 45 training rows + {record['kept']} pseudo-labelled rows" in log
    oof = pd.read_csv(run_dir / "oof.csv")
    assert len(oof) == 90 and sorted(oof["row"]) == list(range(90)), "pseudo rows are never validated or scored"
    assert "pseudo_labels.json" in json.loads((run_dir / "run.json").read_text())["files"]


def test_distill_trains_one_model_on_the_teacher_outputs_that_predict_uses(kfold_run, unlabeled, tiny_bert, tmp_path):
    run_dir = tmp_path / "student"
    result = run_textclf(["distill", str(kfold_run.run_dir), "data.unlabeled_file=unlabeled.csv",
                          *tiny_overrides(tiny_bert, run_dir)], kfold_run.data_dir)
    assert result[0] == 0, describe(result)
    record = json.loads((run_dir / "distill.json").read_text())
    assert record == {"teacher": str(kfold_run.run_dir.resolve()), "teacher_folds": 2, "alpha": 0.5,
                      "targets": "oof", "training_file_rows": 90, "unlabeled_texts": 60,
                      "unlabeled_file": "unlabeled.csv"}
    assert sorted(p.name for p in run_dir.glob("fold_*")) == ["fold_0"], "one model"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test" in metrics, "the teacher's test file is the student's: the data settings come from the teacher"
    out = tmp_path / "student_predictions.csv"
    done = run_textclf(["predict", f"run_dir={run_dir}", "input=test.csv", f"output={out}"], kfold_run.data_dir)
    assert done[0] == 0, describe(done)
    assert len(pd.read_csv(out)) == len(kfold_run.test)


@pytest.mark.parametrize("args, message", [
    (["pseudo_label=default", "pseudo_label.teacher={teacher}"],
     "pseudo_label.source=unlabeled labels the texts of data.unlabeled_file, which is not set"),
    (["pseudo_label=default", "data.unlabeled_file=unlabeled.csv"], "pseudo_label.teacher: give the run folder"),
    (["pseudo_label=default", "pseudo_label.teacher={missing}", "data.unlabeled_file=unlabeled.csv"],
     "pseudo_label.teacher="),
    (["pseudo_label=default", "pseudo_label.teacher={teacher}", "data.unlabeled_file=unlabeled.csv",
      "pseudo_label.threshold=1.5"], "pseudo_label.threshold must be a probability in (0, 1]"),
    (["pseudo_label=default", "pseudo_label.teacher={teacher}", "data.unlabeled_file=unlabeled.csv",
      "distill=default", "distill.teacher={teacher}"], "pseudo_label and distill both learn from a teacher run"),
    (["distill=default", "distill.teacher={teacher}", "data.train_file=binary.csv"], "a teacher must have this "
                                                                                     "run's labels"),
], ids=["no_texts", "no_teacher", "missing_teacher", "bad_threshold", "both", "other_classes"])
def test_a_wrong_teacher_setting_is_refused_clearly(kfold_run, unlabeled, tiny_bert, tmp_path, args, message):
    frame = make_frame(30, seed=3)
    write_frame(frame.assign(label=np.where(frame.index % 2, "yes", "no")), kfold_run.data_dir / "binary.csv")
    args = [a.format(teacher=kfold_run.run_dir, missing=tmp_path / "nowhere") for a in args]
    rc, out, err = run_textclf(["train", "data=csv", "data.train_file=train.csv", *args,
                                *tiny_overrides(tiny_bert, tmp_path / "run")], kfold_run.data_dir)
    assert rc == 2 and message in err, describe((rc, out, err))
    assert "Traceback" not in err


def test_distill_without_a_run_folder_says_what_it_needs(kfold_run, tmp_path):
    rc, out, err = run_textclf(["distill", str(tmp_path)], kfold_run.data_dir)
    assert rc == 2 and "no finished run there" in err, describe((rc, out, err))
