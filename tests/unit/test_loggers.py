"""The loggers (textclf.observe.loggers) driven with synthetic events: CSV files, TensorBoard event files read back with
TensorBoard's own reader, MLflow runs read back with MlflowClient; missing optional packages; the logger group's
options compose and instantiate."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from textclf.engine.callbacks import Callbacks, RunContext
from textclf.errors import TextclfError
from textclf.observe.loggers import (CSVLogger, flatten_config, resolve_tracking_uri, stamp_name, summary_metrics)

CONFIG = {"task": "auto", "resume": False, "model": {"name_or_path": "tiny-bert", "max_length": 16},
          "trainer": {"epochs": 2, "batch_size": 8, "monitor": "auto", "early_stopping_patience": None},
          "kfold": {"_target_": "textclf.engine.kfold.StratifiedKFold", "n_splits": 2, "folds": [0, 1]},
          "data": {"text_col": "text", "label_map": {}, "long": "x" * 1000}, "logger": {"csv": {}}}


def step_row(step: int) -> dict:
    return {"step": step, "epoch": 1 + step // 4, "loss": 1.0 / step, "lr": 1e-3 * step,
            "grad_norm": None if step == 1 else 0.5, "samples_per_s": 100.0 + step}


def eval_row(step: int) -> dict:
    return {"step": step, "epoch": step / 4, "train_loss": 1.0 / step, "loss": 2.0 / step, "macro_f1": step / 10,
            "accuracy": step / 12}


STEPS, EVALS = (1, 2, 3, 4, 5, 6), (3, 6)


def summary_for(run_dir: Path) -> dict:
    (run_dir / "metrics.json").write_text("{}", encoding="utf-8")
    (run_dir / "config.yaml").write_text("task: auto\n", encoding="utf-8")
    (run_dir / "confusion_matrix.png").write_bytes(b"\x89PNG fake")
    mean = {"macro_f1": 0.55, "accuracy": 0.5, "loss": 0.4}
    return {"task": "multiclass", "monitor": "macro_f1", "score": 0.55,
            "folds": [{"macro_f1": 0.5, "best_step": 6}, {"macro_f1": 0.6, "best_step": 6}],
            "mean": mean, "std": {"macro_f1": 0.05, "accuracy": 0.0, "loss": 0.01},
            "oof": {"macro_f1": 0.54, "accuracy": 0.5},
            "artifacts": [str(run_dir / n) for n in ("metrics.json", "config.yaml", "confusion_matrix.png")]}


def drive(loggers, run_dir: Path, *, sweep: dict | None = None, status: str = "ok", folds=(0, 1),
          start_step: int = 0, steps=STEPS, evals=EVALS, end: bool = True) -> None:
    """A run of 2 folds: each a few step rows and two evaluations, then the run's end and close."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cbs = Callbacks(loggers)
    cbs.on_run_start(RunContext(run_dir, CONFIG, "multiclass", "macro_f1", 2, ["a", "b", "c"], sweep))
    for fold in folds:
        cbs.on_fold_start(fold, start_step)
        for step in steps:
            if step > start_step:
                cbs.on_step(fold, step_row(step))
            if step in evals and step > start_step:
                cbs.on_evaluate(fold, eval_row(step))
                cbs.on_best(fold, eval_row(step))
        if end:
            cbs.on_fold_end(fold, {"macro_f1": 0.5 + fold / 10, "best_step": 6, "best_epoch": 2})
    if end:
        cbs.on_run_end(summary_for(run_dir))
    cbs.close(status)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- csv
def test_csv_logger_writes_steps_and_history_per_fold(tmp_path):
    drive([CSVLogger()], tmp_path / "run")
    for fold in (0, 1):
        steps = read_csv(tmp_path / "run" / f"fold_{fold}" / "steps.csv")
        assert [int(r["step"]) for r in steps] == list(STEPS)
        assert list(steps[0]) == ["step", "epoch", "loss", "lr", "grad_norm", "samples_per_s"]
        assert steps[0]["grad_norm"] == "" and float(steps[1]["grad_norm"]) == 0.5
        history = read_csv(tmp_path / "run" / f"fold_{fold}" / "history.csv")
        assert [int(r["step"]) for r in history] == list(EVALS)
        assert float(history[1]["macro_f1"]) == 0.6


def test_csv_logger_resume_keeps_rows_up_to_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    drive([CSVLogger()], run_dir, folds=(0,), end=False, status="interrupted")  # steps 1..6 logged, killed
    with open(run_dir / "fold_0" / "steps.csv", "a", encoding="utf-8") as f:
        f.write("7,2,0.1")  # a row the killed process left half written
    drive([CSVLogger()], run_dir, folds=(0,), start_step=4, steps=range(1, 9), evals=(3, 6, 8))
    assert [int(r["step"]) for r in read_csv(run_dir / "fold_0" / "steps.csv")] == list(range(1, 9))
    assert [int(r["step"]) for r in read_csv(run_dir / "fold_0" / "history.csv")] == [3, 6, 8]
    drive([CSVLogger()], run_dir, folds=(0,))  # a fold trained again from step 0 starts its files over
    assert [int(r["step"]) for r in read_csv(run_dir / "fold_0" / "steps.csv")] == list(STEPS)


# ----------------------------------------------------------------------------- helpers
def test_flatten_summary_and_names():
    flat = flatten_config(CONFIG)
    assert flat["model.max_length"] == 16 and flat["trainer.early_stopping_patience"] is None
    assert flat["kfold.folds"] == "[0, 1]" and "data.label_map" not in flat and "logger.csv" not in flat
    metrics = summary_metrics({"monitor": "f1", "mean": {"f1": 0.5}, "test": {"f1": 0.4, "per": {"a": 1}},
                               "oof": {"f1": 0.3, "name": "x"}})
    assert metrics == {"score": 0.5, "mean/f1": 0.5, "test/f1": 0.4, "test/per/a": 1.0, "oof/f1": 0.3}
    assert stamp_name("multirun/2026-12-02/10-00-00") == "2026-12-02_10-00-00"
    assert stamp_name("/x/my-sweep") == "my-sweep"


def test_tracking_uri_relative_paths_resolve_against_the_launch_folder(tmp_path):
    base = tmp_path / "launch"
    assert resolve_tracking_uri(None, base) == f"sqlite:///{base}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///db/m.db", base) == f"sqlite:///{base}/db/m.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db", base) == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("file:./mlruns", base) == (base / "mlruns").as_uri()
    assert resolve_tracking_uri("mlruns", base) == (base / "mlruns").as_uri()
    assert resolve_tracking_uri("file:///abs/mlruns", base) == "file:///abs/mlruns"
    for uri in ("http://127.0.0.1:5000", "databricks", "postgresql://u@h/db"):
        assert resolve_tracking_uri(uri, base) == uri


# ----------------------------------------------------------------------------- missing packages
@pytest.mark.parametrize("name, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_missing_package_names_its_extra(monkeypatch, name, module):
    import textclf.observe.loggers as loggers

    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now fails as for a missing package
    cls = loggers.TensorBoardLogger if name == "tensorboard" else loggers.MLflowLogger
    with pytest.raises(TextclfError) as e:
        cls()
    assert str(e.value) == f"logger={name} needs the {name} package: pip install 'textclf[{name}]'"


# ----------------------------------------------------------------------------- tensorboard
def accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_logger_writes_a_run_per_fold_and_the_hparams_session(tmp_path):
    from tensorboard.plugins.hparams import metadata

    from textclf.observe.loggers import TensorBoardLogger

    run_dir = tmp_path / "run"
    drive([TensorBoardLogger(flush_secs=1)], run_dir)
    root = run_dir / "tensorboard"
    assert sorted(p.name for p in root.iterdir()) == ["fold_0", "fold_1", "hparams"]
    for fold in (0, 1):
        acc = accumulator(root / f"fold_{fold}")
        tags = set(acc.Tags()["scalars"])
        assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/epoch"} <= tags
        assert {"eval/macro_f1", "eval/accuracy", "eval/loss", "eval/train_loss", "eval/epoch"} <= tags
        assert [e.step for e in acc.Scalars("train/loss")] == list(STEPS)
        assert [e.step for e in acc.Scalars("train/grad_norm")] == list(STEPS[1:])  # None: no point
        assert [(e.step, round(e.value, 6)) for e in acc.Scalars("eval/macro_f1")] == [(3, 0.3), (6, 0.6)]
        assert acc.Scalars("train/lr")[-1].value == pytest.approx(6e-3)

    acc = accumulator(root / "hparams")
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    assert set(content) == {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    hp = start.hparams
    assert hp["model.max_length"].number_value == 16 and hp["model.name_or_path"].string_value == "tiny-bert"
    assert hp["kfold.folds"].string_value == "[0, 1]" and hp["resume"].string_value == "false"
    assert "trainer.early_stopping_patience" not in hp  # None: no value
    assert {"score", "mean/macro_f1", "std/macro_f1", "oof/macro_f1"} <= set(acc.Tags()["scalars"])
    assert acc.Scalars("score")[0].value == pytest.approx(0.55)


def test_tensorboard_resumed_fold_purges_points_after_the_checkpoint(tmp_path):
    from textclf.observe.loggers import TensorBoardLogger

    run_dir = tmp_path / "run"
    # the first process logged steps 1..6 (evaluations at 3 and 6) and was killed; its checkpoint was at step 4
    drive([TensorBoardLogger(flush_secs=1)], run_dir, folds=(0,), end=False, status="interrupted")
    (run_dir / "fold_0").mkdir()  # the fold's folder with its checkpoint: the run goes on
    drive([TensorBoardLogger(flush_secs=1)], run_dir, folds=(0,), start_step=4, steps=range(1, 9), evals=(3, 6, 8))
    acc = accumulator(run_dir / "tensorboard" / "fold_0")
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 9))  # none twice, none missing
    assert [e.step for e in acc.Scalars("eval/macro_f1")] == [3, 6, 8]
    # the same fold trained again from step 0 loses its old event files
    drive([TensorBoardLogger(flush_secs=1)], run_dir, folds=(0,))
    assert len(list((run_dir / "tensorboard" / "fold_0").glob("events.out.tfevents.*"))) == 1
    assert [e.step for e in accumulator(run_dir / "tensorboard" / "fold_0").Scalars("train/loss")] == list(STEPS)


def test_tensorboard_run_started_over_drops_stale_fold_runs(tmp_path):
    from textclf.observe.loggers import TensorBoardLogger

    run_dir = tmp_path / "run"
    drive([TensorBoardLogger()], run_dir)  # fold_0/ and fold_1/ of the run folder do not exist: started over
    drive([TensorBoardLogger()], run_dir, folds=(0,))
    assert sorted(p.name for p in (run_dir / "tensorboard").iterdir()) == ["fold_0", "hparams"]


# ----------------------------------------------------------------------------- mlflow
@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A tmp SQLite tracking store through $MLFLOW_TRACKING_URI, and a client on it."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(tracking_uri=uri)


def runs_of(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["textclf.fold"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    return parents, children


def test_mlflow_logger_logs_a_parent_run_with_nested_fold_runs(tmp_path, tracking):
    from textclf.observe.loggers import MLflowLogger

    logger = MLflowLogger()
    assert logger.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    drive([logger], tmp_path / "run")
    assert logger.failures == []
    parents, children = runs_of(tracking, "textclf")
    assert len(parents) == 1 and sorted(children) == ["0", "1"]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "run"
    params = parent.data.params
    assert params["model.max_length"] == "16" and params["resume"] == "false" and params["kfold.folds"] == "[0, 1]"
    assert params["trainer.early_stopping_patience"] == "null" and len(params["data.long"]) == 500
    metrics = parent.data.metrics
    assert metrics["score"] == pytest.approx(0.55) and metrics["mean/accuracy"] == pytest.approx(0.5)
    assert metrics["std/macro_f1"] == pytest.approx(0.05) and metrics["oof/macro_f1"] == pytest.approx(0.54)
    assert parent.data.tags["textclf.task"] == "multiclass" and parent.data.tags["textclf.monitor"] == "macro_f1"
    assert sorted(a.path for a in tracking.list_artifacts(parent.info.run_id)) == [
        "config.yaml", "confusion_matrix.png", "metrics.json"]
    for fold, child in children.items():
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
        assert child.info.run_name == f"fold_{fold}"
        history = tracking.get_metric_history(child.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(STEPS)
        evals = sorted((m.step, round(m.value, 6)) for m in tracking.get_metric_history(child.info.run_id,
                                                                                        "eval/macro_f1"))
        assert evals == [(3, 0.3), (6, 0.6)]
        assert child.data.metrics["best/macro_f1"] == pytest.approx(0.5 + int(fold) / 10)
    state = json.loads((tmp_path / "run" / "mlflow_run.json").read_text())
    assert state["run_id"] == parent.info.run_id and set(state["folds"]) == {"0", "1"}


@pytest.mark.parametrize("status, want", [("failed", "FAILED"), ("interrupted", "KILLED")])
def test_mlflow_run_ends_failed_or_killed(tmp_path, tracking, status, want):
    from textclf.observe.loggers import MLflowLogger

    drive([MLflowLogger(experiment="mine")], tmp_path / "run", folds=(0,), end=False, status=status)
    parents, children = runs_of(tracking, "mine")
    assert parents[0].info.status == want and children["0"].info.status == want


def test_mlflow_sweep_jobs_share_an_experiment_named_after_the_sweep(tmp_path, tracking):
    from textclf.observe.loggers import MLflowLogger

    sweep_dir = tmp_path / "multirun" / "2026-12-02" / "10-00-00"
    for job, override in enumerate(["pooling=mean", "pooling=cls"]):
        drive([MLflowLogger()], sweep_dir / f"{job}_{override}", folds=(0,),
              sweep={"dir": str(sweep_dir), "job": job, "overrides": [override]})
    parents, _ = runs_of(tracking, "textclf-sweep-2026-12-02_10-00-00")
    assert sorted(p.info.run_name for p in parents) == ["0_pooling=mean", "1_pooling=cls"]
    assert sorted(p.data.tags["textclf.overrides"] for p in parents) == ["pooling=cls", "pooling=mean"]


def test_mlflow_resumed_run_logs_into_the_same_runs(tmp_path, tracking):
    from textclf.observe.loggers import MLflowLogger

    run_dir = tmp_path / "run"
    drive([MLflowLogger()], run_dir, folds=(0,), end=False, status="interrupted")
    (run_dir / "fold_0").mkdir()  # the fold in flight, with its checkpoint
    drive([MLflowLogger()], run_dir, folds=(0,), start_step=4, steps=range(1, 9), evals=(3, 6, 8))
    parents, children = runs_of(tracking, "textclf")
    assert len(parents) == 1 and list(children) == ["0"]
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["textclf.resumed"] == "true"
    history = tracking.get_metric_history(children["0"].info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 9))  # none twice (5, 6 were logged before the kill)
    evals = tracking.get_metric_history(children["0"].info.run_id, "eval/macro_f1")
    assert sorted(m.step for m in evals) == [3, 6, 8]
    state = json.loads((run_dir / "mlflow_run.json").read_text())
    assert state["folds"] == {"0": children["0"].info.run_id}


def test_mlflow_file_store_needs_mlflow_allow_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from textclf.observe.loggers import MLflowLogger

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(TextclfError, match="MLFLOW_ALLOW_FILE_STORE=true"):
        MLflowLogger(tracking_uri=f"file:{tmp_path}/mlruns")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = MLflowLogger(tracking_uri=f"file:{tmp_path}/mlruns")
    drive([logger], tmp_path / "run", folds=(0,))
    assert logger.failures == [] and (tmp_path / "mlruns").is_dir()


# ----------------------------------------------------------------------------- the logger group
@pytest.mark.parametrize("override, names", [
    ("logger=[csv,tensorboard]", ["csv", "tensorboard"]),
    ("logger=mlflow", ["mlflow"]),
    ("logger=[csv,tensorboard,mlflow]", ["csv", "tensorboard", "mlflow"]),
])
def test_logger_options_compose_and_instantiate(tmp_path, monkeypatch, override, names):
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    import textclf.observe.loggers as loggers

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose("train", overrides=[override])
    assert list(cfg.logger) == names
    classes = {"csv": loggers.CSVLogger, "tensorboard": loggers.TensorBoardLogger, "mlflow": loggers.MLflowLogger}
    for name in names:
        assert isinstance(instantiate(cfg.logger[name]), classes[name])
    assert not (tmp_path / "mlflow.db").exists()  # constructing a logger writes nothing


def test_mlflow_parallel_sweep_jobs_share_a_new_sqlite_store(tmp_path):
    """launcher=joblib: jobs starting at once on a database that does not exist yet (its tables are created on
    first use) all log their runs."""
    pytest.importorskip("mlflow")
    import os
    import subprocess

    script = (
        "import sys; sys.path.insert(0, sys.argv[3]); from pathlib import Path; from test_loggers import drive\n"
        "from textclf.observe.loggers import MLflowLogger\n"
        "job, sweep = int(sys.argv[1]), Path(sys.argv[2]); logger = MLflowLogger()\n"
        "drive([logger], sweep / f'{job}_x={job}', folds=(0,), sweep={'dir': str(sweep), 'job': job, 'overrides': []})\n"
        "assert logger.failures == [], logger.failures\n")
    sweep = tmp_path / "multirun" / "2026-12-02" / "10-00-00"
    env = {**os.environ, "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}  # relative: the launch folder's
    procs = [subprocess.Popen([sys.executable, "-c", script, str(job), str(sweep), str(Path(__file__).parent)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for job in range(3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(outs)
    from mlflow.tracking import MlflowClient

    parents, _ = runs_of(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"), "textclf-sweep-2026-12-02_10-00-00")
    assert sorted(p.info.run_name for p in parents) == ["0_x=0", "1_x=1", "2_x=2"]
    assert {p.info.status for p in parents} == {"FINISHED"}
