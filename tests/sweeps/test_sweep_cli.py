"""Sweeps end to end with the installed command on the tiny model: a failed job is recorded and the sweep goes
on, `textclf report` ranks the jobs, Optuna and joblib sweeps complete, group folds with repeats, folds.csv
reuse, and `textclf ensemble` of two runs."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import describe, make_frame, run_textclf, tiny_overrides, write_frame
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow


def sweep_args(tiny_bert: Path, sweep_dir: Path, *overrides: str) -> list[str]:
    tiny = [o for o in tiny_overrides(tiny_bert, sweep_dir) if not o.startswith("hydra.run.dir")]
    return ["train", "-m", "data=csv", "data.train_file=train.csv", *overrides, *tiny, f"hydra.sweep.dir={sweep_dir}"]


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: int(p.name.split("_")[0]))


def status(folder: Path) -> dict:
    return json.loads((folder / "status.json").read_text())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sweep_data")
    frame = make_frame(60, seed=0)
    write_frame(frame, folder / "train.csv")
    frame.assign(author=[f"w{i // 3:02d}" for i in range(len(frame))]).to_csv(folder / "grouped.csv", index=False)
    return folder


# ----------------------------------------------------------------------------- a sweep with a failing job
@pytest.fixture(scope="module")
def failing_sweep(data_dir, tiny_bert, tmp_path_factory):
    """`-m loss=ce,mse` on a multiclass table: mse does not fit the task, so job 1 fails before training."""
    sweep_dir = tmp_path_factory.mktemp("failing") / "sweep"
    result = run_textclf(sweep_args(tiny_bert, sweep_dir, "loss=ce,mse", "kfold=stratified", "kfold.n_splits=2"),
                         data_dir)
    return SimpleNamespace(sweep_dir=sweep_dir, result=result)


def test_a_failed_job_is_recorded_and_the_sweep_finishes_the_others(failing_sweep):
    rc, out, err = failing_sweep.result
    assert rc == 0, describe(failing_sweep.result)
    assert "textclf: job 1 failed: loss=" in err and "does not fit task 'multiclass'" in err
    assert "Traceback" not in out + err
    ok_dir, failed_dir = job_dirs(failing_sweep.sweep_dir)
    ok, failed = status(ok_dir), status(failed_dir)
    metrics = json.loads((ok_dir / "metrics.json").read_text())
    assert ok["status"] == "ok" and ok["metric"] == "macro_f1" and ok["direction"] == "maximize"
    assert ok["score"] == pytest.approx(metrics["mean"]["macro_f1"]) and ok["wall_s"] > 0
    assert failed["status"] == "failed" and "does not fit task" in failed["error"]
    assert failed["error_type"] == "TextclfError" and "loss=mse" in failed["overrides"]
    assert "does not fit task" in (failed_dir / "train.log").read_text()


def test_the_sweep_prints_its_report_when_it_ends(failing_sweep):
    rc, out, err = failing_sweep.result
    assert "2 job(s), 1 ok, 1 failed" in out
    assert (failing_sweep.sweep_dir / "report.csv").exists() and (failing_sweep.sweep_dir / "report.md").exists()


def test_report_command_shows_both_jobs_ranked(failing_sweep):
    rc, out, err = run_textclf(["report", failing_sweep.sweep_dir], failing_sweep.sweep_dir.parent)
    assert rc == 0, describe((rc, out, err))
    rows = [line.split() for line in out.splitlines()]
    first = next(r for r in rows if r[:3] == ["1", "0", "loss=ce"])
    assert first[-1] == "ok"
    failed = next(line for line in out.splitlines() if "loss=mse" in line)
    assert "failed: loss=" in failed and "does not fit task 'multiclass'" in failed
    table = pd.read_csv(failing_sweep.sweep_dir / "report.csv", keep_default_na=False)
    assert list(table["status"]) == ["ok", "failed"] and list(table["rank"]) == ["1", ""]


def test_a_single_run_that_fails_still_exits_2_and_records_it(data_dir, tiny_bert, tmp_path):
    run_dir = tmp_path / "run"
    rc, out, err = run_textclf(["train", "data=csv", "data.train_file=train.csv", "loss=mse",
                                *tiny_overrides(tiny_bert, run_dir)], data_dir)
    assert rc == 2 and err.startswith("textclf: error: loss=") and "Traceback" not in out + err
    assert status(run_dir)["status"] == "failed"


def test_a_sweep_where_every_job_fails_exits_1(data_dir, tiny_bert, tmp_path):
    rc, out, err = run_textclf(sweep_args(tiny_bert, tmp_path / "sweep", "loss=mse,mse_corr"), data_dir)
    assert rc == 1, describe((rc, out, err))
    assert "every job of the sweep failed" in err and "2 job(s), 2 failed" in out


# ----------------------------------------------------------------------------- Optuna and joblib
def test_an_optuna_search_of_three_trials_completes_and_reports_the_best(data_dir, tiny_bert, tmp_path):
    sweep_dir = tmp_path / "optuna"
    result = run_textclf(sweep_args(tiny_bert, sweep_dir, "hparams_search=optuna", "hydra.sweeper.n_trials=3"),
                         data_dir, timeout=600)
    rc, out, err = result
    assert rc == 0, describe(result)
    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 3 and all(status(j)["status"] == "ok" for j in jobs)
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    scores = {j.name.split("_")[0]: status(j)["score"] for j in jobs}
    assert best.best_value == pytest.approx(max(scores.values()))
    report = pd.read_csv(sweep_dir / "report.csv")
    assert report.loc[0, "rank"] == 1 and report.loc[0, "mean"] == pytest.approx(best.best_value)
    assert "3 job(s), 3 ok" in out


def test_parallel_jobs_with_the_joblib_launcher(data_dir, tiny_bert, tmp_path):
    sweep_dir = tmp_path / "joblib"
    result = run_textclf(sweep_args(tiny_bert, sweep_dir, "launcher=joblib", "pooling=mean,cls"), data_dir)
    assert result[0] == 0, describe(result)
    assert "Joblib.Parallel(n_jobs=2" in result[1] + result[2]
    assert [status(j)["status"] for j in job_dirs(sweep_dir)] == ["ok", "ok"]


# ----------------------------------------------------------------------------- group folds, repeats, reuse
@pytest.fixture(scope="module")
def grouped_run(data_dir, tiny_bert, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("grouped") / "run"
    args = ["train", "data=csv", "data.train_file=grouped.csv", "data.group_col=author", "kfold=stratified_group",
            "kfold.n_splits=3", "kfold.repeats=2", *tiny_overrides(tiny_bert, run_dir)]
    result = run_textclf(args, data_dir)
    assert result[0] == 0, describe(result)
    return SimpleNamespace(run_dir=run_dir, args=args)


def test_group_folds_with_repeats_end_to_end(grouped_run, data_dir):
    folds = pd.read_csv(grouped_run.run_dir / "folds.csv")
    authors = pd.read_csv(data_dir / "grouped.csv")["author"]
    assert len(folds) == 2 * len(authors) and sorted(folds["fold"].unique()) == list(range(6))
    folds["author"] = authors.to_numpy()[folds["row"]]
    assert (folds.groupby("author")["fold"].nunique() == 2).all()  # one fold per repeat: never split
    metrics = json.loads((grouped_run.run_dir / "metrics.json").read_text())
    assert [f["fold"] for f in metrics["folds"]] == list(range(6))
    oof = pd.read_csv(grouped_run.run_dir / "oof.csv")
    assert sorted(oof["row"]) == list(range(len(authors)))  # one averaged prediction per row


def test_a_rerun_in_the_same_folder_reuses_its_folds(grouped_run, data_dir):
    before = (grouped_run.run_dir / "folds.csv").read_text()
    result = run_textclf([*grouped_run.args, "pooling=cls", "overwrite=true"], data_dir)  # it replaces a finished run
    assert result[0] == 0, describe(result)
    assert "reusing" in (grouped_run.run_dir / "train.log").read_text()
    assert (grouped_run.run_dir / "folds.csv").read_text() == before


def test_a_folds_csv_for_other_data_is_a_clear_error(data_dir, tiny_bert, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pd.DataFrame({"row": range(10), "fold": [0, 1] * 5}).to_csv(run_dir / "folds.csv", index=False)
    rc, out, err = run_textclf(["train", "data=csv", "data.train_file=train.csv", "kfold=stratified",
                                "kfold.n_splits=2", *tiny_overrides(tiny_bert, run_dir)], data_dir)
    assert rc == 2 and "describes 10 training rows but data.train_file has 60" in err, describe((rc, out, err))


# ----------------------------------------------------------------------------- ensemble
def test_ensemble_of_two_runs(kfold_run, tiny_bert, tmp_path):
    second = tmp_path / "second"
    args = [a for a in kfold_run.args if not a.startswith("hydra.run.dir")] + ["pooling=cls",
                                                                               f"hydra.run.dir={second}"]
    result = run_textclf(args, kfold_run.data_dir)
    assert result[0] == 0, describe(result)
    blend = tmp_path / "blend"
    rc, out, err = run_textclf(["ensemble", kfold_run.run_dir, second, "--output", blend], tmp_path)
    assert rc == 0, describe((rc, out, err))
    assert "ensemble of 2 runs on 90 out-of-fold rows" in out and "blend" in out
    metrics = json.loads((blend / "metrics.json").read_text())
    assert set(metrics["members"]) == {str(kfold_run.run_dir), str(second)} and "macro_f1" in metrics["oof"]
    a, b = (pd.read_csv(r / "test_predictions.csv") for r in (kfold_run.run_dir, second))
    mixed = pd.read_csv(blend / "test_predictions.csv")
    cols = [c for c in a.columns if c.startswith("prob_")]
    assert len(mixed) == len(kfold_run.test)
    pd.testing.assert_frame_equal(mixed[cols], (a[cols] + b[cols]) / 2, atol=1e-9)


def test_help_lists_the_sweep_commands_and_presets(cli):
    rc, out, err = cli("--help")
    assert rc == 0 and "report" in out and "ensemble" in out
    rc, out, err = cli("train", "--help")
    assert rc == 0 and "hparams_search: optuna" in out and "launcher: joblib" in out
    assert "kfold: group, multilabel_stratified, none, stratified, stratified_group" in out
