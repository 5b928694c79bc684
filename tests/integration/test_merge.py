"""Fold-parallel runs: one job per fold (a multirun over kfold.folds), then `textclf merge`, equal one sequential
k-fold run file for file (metrics, out-of-fold and test predictions)."""
from __future__ import annotations

import json

import pytest

from conftest import describe, make_frame, run_textclf, write_frame

pytestmark = pytest.mark.slow


def test_three_fold_jobs_merged_equal_one_sequential_run(tmp_path, tiny_bert):
    write_frame(make_frame(90, seed=0), tmp_path / "train.csv")
    write_frame(make_frame(24, seed=1), tmp_path / "test.csv")
    common = ["data=csv", "data.train_file=train.csv", "data.test_file=test.csv", f"model.name_or_path={tiny_bert}",
              "model.max_length=32", "trainer.epochs=1", "trainer.batch_size=8", "trainer.device=cpu",
              "kfold=stratified", "kfold.n_splits=3", "plots=false"]
    seq = run_textclf(["train", *common, f"hydra.run.dir={tmp_path / 'seq'}"], tmp_path)
    assert seq[0] == 0, describe(seq)
    jobs = run_textclf(["train", "-m", *common, "kfold.folds=[0],[2]", f"hydra.sweep.dir={tmp_path / 'jobs'}"], tmp_path)
    assert jobs[0] == 0, describe(jobs)
    # a fold no job trained: refused, naming it
    rc, out, err = run_textclf(["merge", str(tmp_path / "jobs"), "--output", str(tmp_path / "merged")], tmp_path)
    assert rc == 2 and "fold(s) [1] of 3 are not finished" in err and "kfold.folds=[1]" in err, err
    more = run_textclf(["train", *common, "kfold.folds=[1]", f"hydra.run.dir={tmp_path / 'jobs' / 'late'}"], tmp_path)
    assert more[0] == 0, describe(more)
    rc, out, err = run_textclf(["merge", str(tmp_path / "jobs"), "--output", str(tmp_path / "merged")], tmp_path)
    assert rc == 0, err
    assert "merged 3 folds from 3 run(s)" in out
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("seq", "merged"))
    timing = lambda m: {k: v for k, v in m.items() if not k.endswith("_per_s")}
    assert timing(a["mean"]) == timing(b["mean"]) and a["oof"] == b["oof"]
    for name in ("oof.csv", "test_predictions.csv", "folds.csv"):
        assert (tmp_path / "seq" / name).read_text() == (tmp_path / "merged" / name).read_text(), name
    assert (tmp_path / "merged" / "run.json").exists()
    pred = run_textclf(["predict", f"run_dir={tmp_path / 'merged'}", "input=test.csv", "output=p.csv"], tmp_path)
    assert pred[0] == 0, describe(pred)


def fake_job(folder, folds, *, lr=1e-4, split="row,fold\n0,0\n1,1\n2,2\n"):
    from omegaconf import OmegaConf

    folder.mkdir(parents=True)
    cfg = {"kfold": {"n_splits": 3, "folds": folds}, "optimizer": {"lr": lr}, "resume": False}
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (folder / "folds.csv").write_text(split)
    (folder / "inputs.json").write_text("{}")
    for f in folds:
        (folder / f"fold_{f}").mkdir()
        (folder / f"fold_{f}" / "result.json").write_text("{}")
    from textclf.run.manifest import write_manifest

    write_manifest(folder)  # a finished job: merge joins only those
    return folder


@pytest.mark.parametrize("case, message", [
    ("settings", r"trained with other settings than .* \(only kfold.folds may differ"),
    ("split", r"validates on other splits or data than"),
    ("not_a_run", r"holds no textclf run"),
    ("no_output", r"2 runs to merge: say where the merged run goes \(--output <folder>\)"),
])
def test_merge_refuses_jobs_that_are_not_one_run(tmp_path, case, message):
    import re

    from textclf.commands.merge import main

    fake_job(tmp_path / "a", [0, 1])
    other = {"settings": dict(lr=5e-5), "split": dict(split="row,fold\n0,1\n1,0\n2,2\n")}.get(case, {})
    fake_job(tmp_path / "b", [2], **other)
    (tmp_path / "empty").mkdir()
    args = {"not_a_run": [str(tmp_path / "empty"), "-o", str(tmp_path / "m")],
            "no_output": [str(tmp_path / "a"), str(tmp_path / "b")]}.get(
        case, [str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "m")])
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(args) == 2
    assert re.search(message, err.getvalue()), err.getvalue()
    assert not (tmp_path / "m" / "run.json").exists()
