"""The run recipe's events reach every logger in order; step rows, step-level evaluation, batch limits and
debug=fast behave as documented (in-process `train` on the tiny model)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import describe, make_frame, run_textclf, tiny_overrides, write_frame
from hydra import compose, initialize_config_module

from textclf.engine.callbacks import Callback
from textclf.commands.train import train

pytestmark = pytest.mark.slow


class Recorder(Callback):
    """A logger (logger.rec._target_=test_run_events.Recorder) that records every event it gets."""

    events: list = []

    def __init__(self):
        Recorder.events = []

    def on_run_start(self, run): self.events.append(("run_start", run.n_folds, run.task, run.monitor))
    def on_fold_start(self, fold, start_step): self.events.append(("fold_start", fold, start_step))
    def on_step(self, fold, row): self.events.append(("step", fold, dict(row)))
    def on_evaluate(self, fold, row): self.events.append(("evaluate", fold, dict(row)))
    def on_best(self, fold, row): self.events.append(("best", fold, row["step"]))
    def on_checkpoint(self, fold, step): self.events.append(("checkpoint", fold, step))
    def on_fold_end(self, fold, result): self.events.append(("fold_end", fold, result["best_step"]))
    def on_run_end(self, summary): self.events.append(("run_end", summary["score"], summary["artifacts"]))
    def close(self, status): self.events.append(("close", status))


def compose_train(tiny_bert, *extra):
    overrides = ["data=csv", "data.train_file=train.csv", f"model.name_or_path={tiny_bert}", "model.max_length=16",
                 "trainer.epochs=2", "trainer.batch_size=8", "trainer.device=cpu", "kfold=stratified",
                 "kfold.n_splits=2", "+logger.rec._target_=test_run_events.Recorder", *extra]
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_frame(make_frame(48, seed=0), tmp_path / "train.csv")  # 24 rows a fold: 3 batches of 8 an epoch
    return tmp_path


def test_events_arrive_in_order_with_step_rows_and_step_evaluation(tiny_bert, data):
    score = train(compose_train(tiny_bert, "trainer.log_every_steps=2", "trainer.eval_every_steps=2",
                                "trainer.checkpoint_every_steps=2"), run_dir=data / "run")
    kinds = [e[0] for e in Recorder.events]
    assert kinds[0] == "run_start" and Recorder.events[0][1:] == (2, "multiclass", "macro_f1")
    assert kinds[-2:] == ["run_end", "close"] and Recorder.events[-1] == ("close", "ok")
    assert Recorder.events[-2][1] == score
    assert [e[1:] for e in Recorder.events if e[0] == "fold_start"] == [(0, 0), (1, 0)]
    for fold in (0, 1):
        mine = [e for e in Recorder.events if e[0] in ("step", "evaluate", "checkpoint") and e[1] == fold]
        steps = [e[2] for e in mine if e[0] == "step"]
        assert [r["step"] for r in steps] == [2, 4, 6]  # 3 steps an epoch, 2 epochs, a row every 2 steps
        assert set(steps[0]) == {"step", "epoch", "loss", "lr", "grad_norm", "samples_per_s"}
        assert all(r["loss"] > 0 and r["lr"] > 0 and r["grad_norm"] > 0 and r["samples_per_s"] > 0 for r in steps)
        evals = [e[2] for e in mine if e[0] == "evaluate"]
        assert [(r["step"], r["epoch"]) for r in evals] == [(2, 0.6667), (3, 1), (4, 1.3333), (6, 2)]
        assert {"train_loss", "loss", "macro_f1", "accuracy"} <= set(evals[0])
        # mid-epoch checkpoints every 2 steps and one at the end of epoch 1 (the last epoch needs none)
        assert [e[2] for e in mine if e[0] == "checkpoint"] == [2, 3, 4]
    metrics = json.loads((data / "run" / "metrics.json").read_text())
    ends = {e[1]: e[2] for e in Recorder.events if e[0] == "fold_end"}
    assert ends == {f["fold"]: f["best_step"] for f in metrics["folds"]}
    # each best is announced right after its evaluation
    for i, e in enumerate(Recorder.events):
        if e[0] == "best":
            assert Recorder.events[i - 1][0] == "evaluate" and Recorder.events[i - 1][2]["step"] == e[2]
    # the plots, the error analysis and report.html are handed to the loggers as artifacts with metrics.json
    artifacts = {p.rsplit("/", 1)[-1] for p in Recorder.events[-2][2]}
    assert {"confusion_matrix.png", "learning_curves.png", "reliability.png", "metrics.json", "report.html",
            "data_checks.json"} <= artifacts
    assert all((data / "run" / name).exists() for name in artifacts)
    # the csv logger wrote the same rows
    steps_csv = pd.read_csv(data / "run" / "fold_1" / "steps.csv")
    assert steps_csv["step"].tolist() == [2, 4, 6]
    history = pd.read_csv(data / "run" / "fold_1" / "history.csv")
    assert history["step"].tolist() == [2, 3, 4, 6]


class FailsAtFirstEvaluation(Callback):
    def on_evaluate(self, fold, row):
        raise RuntimeError("planted failure")


def test_a_failed_run_closes_its_loggers_as_failed(tiny_bert, data):
    with pytest.raises(RuntimeError, match="planted failure"):
        train(compose_train(tiny_bert, "+logger.boom._target_=test_run_events.FailsAtFirstEvaluation"),
              run_dir=data / "run")
    assert Recorder.events[-1] == ("close", "failed")
    assert not (data / "run" / "run.json").exists()


def test_limit_batches_train_and_evaluate_part_of_each_epoch(tiny_bert, data):
    train(compose_train(tiny_bert, "trainer.limit_train_batches=2", "trainer.limit_eval_batches=1",
                        "trainer.eval_batch_size=4", "trainer.log_every_steps=1"), run_dir=data / "run")
    steps = [e[2]["step"] for e in Recorder.events if e[0] == "step" and e[1] == 0]
    assert steps == [1, 2, 3, 4]  # 2 of the 3 batches an epoch
    oof = pd.read_csv(data / "run" / "oof.csv")
    assert len(oof) == 2 * 4  # one evaluation batch of 4 rows per fold
    train(compose_train(tiny_bert, "trainer.limit_train_batches=0.34", "trainer.log_every_steps=1"),
          run_dir=data / "run2")
    assert [e[2]["step"] for e in Recorder.events if e[0] == "step" and e[1] == 0] == [1, 2]  # int(3 * 0.34) = 1


def test_debug_fast_checks_a_config_end_to_end_in_one_short_fold(tiny_bert, tmp_path):
    write_frame(make_frame(90, seed=0), tmp_path / "train.csv")
    rc, out, err = run_textclf(["train", "data=csv", "data.train_file=train.csv", "kfold=stratified", "debug=fast",
                                *tiny_overrides(tiny_bert, tmp_path / "run"), "trainer.epochs=3"], tmp_path)
    assert rc == 0, describe((rc, out, err))
    run = tmp_path / "run"
    assert [p.name for p in run.glob("fold_*")] == ["fold_0"] and (run / "run.json").exists()
    assert not list(run.glob("*.png")), "debug=fast writes no plots"
    history = pd.read_csv(run / "fold_0" / "history.csv")
    assert history["step"].tolist() == [4, 8, 12]  # 4 batches an epoch; a later override (epochs=3) still wins
