"""trainer.time_limit end to end through the installed command (CPU, the tiny model): the plan is measured, logged
and kept in the run folder; a budget too small for one epoch of one fold is refused before training; a value that is
not a duration is refused by the config check."""
from __future__ import annotations

import json

from conftest import describe, file_hashes, make_frame, run_textclf, tiny_overrides, write_frame

from textclf.run import folder


def _table(cwd):
    cwd.mkdir(exist_ok=True)
    write_frame(make_frame(90, seed=0), cwd / "train.csv")
    write_frame(make_frame(24, seed=1), cwd / "test.csv")


def _args(tiny_bert, run_dir, *extra):
    return ["train", "data=csv", "data.train_file=train.csv", "data.test_file=test.csv", "kfold=stratified",
            "kfold.n_splits=2", *tiny_overrides(tiny_bert, run_dir), *extra]


def test_a_run_with_room_to_spare_plans_every_epoch_and_keeps_the_plan(tmp_path, tiny_bert):
    _table(tmp_path)
    run_dir = tmp_path / "run"
    result = run_textclf(_args(tiny_bert, run_dir, "trainer.epochs=2", "trainer.time_limit=1h"), tmp_path)
    rc, out, err = result
    assert rc == 0, describe(result)
    plan = json.loads((run_dir / folder.TIME_PLAN).read_text())
    assert (plan["epochs"], plan["folds"], plan["asked_epochs"], plan["asked_folds"]) == (2, 2, 2, 2)
    assert plan["budget_s"] == 3600 and 0 < plan["step_s"] < 60 and plan["planned_s"] < 3600
    log = (run_dir / folder.LOG).read_text()
    assert "time_limit 1.00 h:" in log and "the whole run fits" in log
    metrics = json.loads((run_dir / folder.METRICS).read_text())
    assert len(metrics["folds"]) == 2
    manifest = json.loads((run_dir / folder.MANIFEST).read_text())
    assert folder.TIME_PLAN in json.dumps(manifest), "run.json covers the plan like the run's other files"


def test_the_measurement_runs_the_tricks_as_the_fold_will(tmp_path, tiny_bert):
    """The timed steps are real steps of the fold's trainer: with FGM, EMA and weight averaging on, they run
    through the hooks (started as a fit starts them), and the run trains to its end."""
    _table(tmp_path)
    run_dir = tmp_path / "run"
    rc, out, err = result = run_textclf(_args(tiny_bert, run_dir, "trainer.time_limit=30m", "adversarial=fgm",
                                              "ema=default", "trainer.average=last"), tmp_path)
    assert rc == 0, describe(result)
    log = (run_dir / folder.LOG).read_text()
    assert "time_limit 30.0 min:" in log
    assert log.count("average=last: the weights of EMA's shadow") == 2, "once per fold, none for the measurement"


def test_a_budget_too_small_for_one_epoch_of_one_fold_is_refused_before_training(tmp_path, tiny_bert):
    _table(tmp_path)
    before = file_hashes(tmp_path)
    rc, out, err = result = run_textclf(_args(tiny_bert, tmp_path / "run", "trainer.time_limit=1s"), tmp_path)
    assert rc == 2, describe(result)
    assert "Traceback" not in out + err, describe(result)
    assert err.count("textclf: error:") == 1, describe(result)
    assert "trainer.time_limit=1 s does not fit one epoch of one fold" in err and "per optimizer step" in err
    assert not (tmp_path / "run" / "fold_0" / folder.WEIGHTS).exists(), "no fold was trained"
    assert {k: v for k, v in file_hashes(tmp_path).items() if not k.startswith("run/")} == before


def test_a_time_limit_that_is_not_a_duration_is_refused_by_the_config_check(tmp_path, tiny_bert):
    _table(tmp_path)
    rc, out, err = result = run_textclf(_args(tiny_bert, tmp_path / "run", "trainer.time_limit=soon"), tmp_path)
    assert rc == 2, describe(result)
    assert "trainer.time_limit" in err and "20m" in err and "Traceback" not in out + err, describe(result)
