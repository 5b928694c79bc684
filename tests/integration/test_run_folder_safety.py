"""A run folder is safe: a finished run is never replaced without overwrite=true (and then only textclf's own files
go), one process at a time holds a folder (a killed holder's lock is taken over), SIGINT / SIGTERM checkpoint and
exit 130 / 143 with how to resume (and resuming gives the uninterrupted result exactly), and a resume against
data files edited in place is caught by their recorded size and hash (CPU, the tiny model)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading

import pandas as pd
import pytest
from conftest import (cli_env, describe, file_hashes, make_frame, run_textclf, textclf_executable, tiny_overrides,
                      write_frame)
from test_resume import outputs  # metrics minus timings, oof.csv, test_predictions.csv

pytestmark = pytest.mark.slow

LOCK = ".textclf.lock"


def env_for(kill_at=None, signal_at=None) -> dict:
    return cli_env(TEXTCLF_KILL_AT=kill_at or None, TEXTCLF_SIGNAL_AT=signal_at or None)


def run(args, cwd, kill_at=None, signal_at=None):
    """`textclf <args>` in cwd; signal_at="TERM@step:0:5" sends the process SIGTERM at that fault point."""
    return run_textclf(args, cwd, timeout=600, env=env_for(kill_at, signal_at))



def textclf_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("textclf:")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety_data")
    write_frame(make_frame(90, seed=0), d / "train.csv")
    write_frame(make_frame(20, seed=1), d / "test.csv")
    return d


# 90 rows, 2 folds: 45 training rows a fold, batch 8 -> 6 optimizer steps an epoch, 12 a fold (2 epochs);
# checkpoints every 4 steps; evaluations at each epoch's end (steps 6 and 12)
def train_args(tiny_bert, run_dir):
    return ["train", "data=csv", "data.train_file=train.csv", "data.test_file=test.csv", "kfold=stratified",
            "kfold.n_splits=2", "ema=default", *tiny_overrides(tiny_bert, run_dir), "trainer.epochs=2",
            "trainer.checkpoint_every_steps=4"]


def quick_args(tiny_bert, run_dir, train_file="train.csv"):
    """One holdout fold, one epoch: 72 training rows, 9 optimizer steps."""
    return ["train", "data=csv", f"data.train_file={train_file}", "plots=false", *tiny_overrides(tiny_bert, run_dir)]


def assert_same_outputs(got: dict, want: dict) -> None:
    assert got["metrics"] == want["metrics"]
    pd.testing.assert_frame_equal(got["oof"], want["oof"], check_exact=True)
    pd.testing.assert_frame_equal(got["test"], want["test"], check_exact=True)


@pytest.fixture(scope="module")
def reference(tiny_bert, data_dir, tmp_path_factory):
    """A finished, uninterrupted run: its folder and its outputs."""
    run_dir = tmp_path_factory.mktemp("safety_ref") / "run"
    result = run(train_args(tiny_bert, run_dir), data_dir)
    assert result[0] == 0, describe(result)
    assert not (run_dir / LOCK).exists(), "the lock goes when the run ends"
    return run_dir, outputs(run_dir)


@pytest.fixture
def finished_copy(reference, tmp_path):
    """A copy of the finished reference run (the tests below change or try to change it)."""
    folder = tmp_path / "finished"
    shutil.copytree(reference[0], folder)
    return folder


# ----------------------------------------------------------------------------- 1. a finished run is never lost
def test_a_finished_run_rerun_with_other_settings_is_refused_and_left_byte_identical(tiny_bert, data_dir,
                                                                                      finished_copy):
    before = file_hashes(finished_copy)
    rc, out, err = run([*train_args(tiny_bert, finished_copy), "optimizer.lr=3e-5"], data_dir)
    assert rc == 2, describe((rc, out, err))
    assert "holds a finished run" in err and "optimizer.lr" in err and "3e-05" in err, err
    assert "overwrite=true" in err and "hydra.run.dir=" in err, "the two ways out are named"
    assert err.count("textclf: error:") == 1 and "Traceback" not in out + err
    assert file_hashes(finished_copy) == before, "every file (.hydra/, train.log, status.json too) stays as it was"


def test_a_finished_run_rerun_with_the_same_settings_reports_its_score_and_trains_nothing(tiny_bert, data_dir,
                                                                                           finished_copy):
    before = file_hashes(finished_copy)
    score = json.loads((finished_copy / "metrics.json").read_text())["score"]
    # trainer.log_every_steps and logger do not change a run's results: still "the same settings"
    rc, out, err = run([*train_args(tiny_bert, finished_copy), "trainer.log_every_steps=3", "logger=none"], data_dir)
    assert rc == 0, describe((rc, out, err))
    assert "already holds this run, finished" in out + err and f"{score:.4f}" in out + err
    assert "fold 0:" not in out + err, "nothing is trained again"
    assert file_hashes(finished_copy) == before


def test_overwrite_replaces_a_finished_run_and_keeps_the_users_own_files(tiny_bert, data_dir, finished_copy):
    mine = {"notes.txt": b"my notes\n", "my_figure.png": b"not textclf's", "fold_0/annotations.csv": b"a,b\n1,2\n"}
    for name, content in mine.items():
        (finished_copy / name).write_bytes(content)
    old_weights = file_hashes(finished_copy)["fold_0/model.safetensors"]
    args = [*train_args(tiny_bert, finished_copy), "optimizer.lr=3e-5"]
    rc, out, err = run([*args, "overwrite=true"], data_dir)
    assert rc == 0, describe((rc, out, err))
    assert "overwrite=true: replacing the finished run" in out + err
    for name, content in mine.items():
        assert (finished_copy / name).read_bytes() == content, f"{name} is the user's: it stays"
    assert file_hashes(finished_copy)["fold_0/model.safetensors"] != old_weights, "the run was trained again"
    assert "lr: 3.0e-05" in (finished_copy / "config.yaml").read_text()
    assert json.loads((finished_copy / "status.json").read_text())["status"] == "ok"
    assert not (finished_copy / LOCK).exists()
    # overwrite is no setting of the run: the same settings without it find the new run finished
    before = file_hashes(finished_copy)
    rc, out, err = run(args, data_dir)
    assert rc == 0 and "already holds this run, finished" in out + err, describe((rc, out, err))
    assert file_hashes(finished_copy) == before


# ----------------------------------------------------------------------------- 2. one process per run folder
def test_a_second_run_into_a_folder_in_use_is_refused_with_the_holders_pid(tiny_bert, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = quick_args(tiny_bert, run_dir)
    # the first run stops itself (SIGSTOP) at step 2, holding the folder, until the test lets it go on; its output
    # goes to files (a full pipe would block it before it gets there)
    logs = [open(tmp_path / name, "w+") for name in ("first.out", "first.err")]
    first = subprocess.Popen([textclf_executable(), *args], cwd=str(data_dir), env=env_for(signal_at="STOP@step:0:2"),
                             stdout=logs[0], stderr=logs[1], text=True)
    try:
        _, wait_status = os.waitpid(first.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(wait_status), "the first run ended before its fault point"
        holder = json.loads((run_dir / LOCK).read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname() and holder["started"]
        before = file_hashes(run_dir)
        rc, out, err = run(args, data_dir)
        assert rc == 2, describe((rc, out, err))
        assert f"is in use by pid {first.pid} on host {socket.gethostname()}" in err and "another folder" in err
        assert "Traceback" not in out + err
        assert file_hashes(run_dir) == before, "the refused run touched none of the holder's files"
    finally:
        os.kill(first.pid, signal.SIGCONT)
        first.wait(timeout=600)
        out, err = ((f.seek(0), f.read(), f.close())[1] for f in logs)
    assert first.returncode == 0, describe((first.returncode, out, err))
    assert not (run_dir / LOCK).exists() and (run_dir / "run.json").exists()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_left_by_a_killed_run_is_taken_over(tiny_bert, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pid = dead_pid()
    (run_dir / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "yesterday"}))
    rc, out, err = run(quick_args(tiny_bert, run_dir), data_dir)
    assert rc == 0, describe((rc, out, err))
    assert f"taking over the lock left by pid {pid}" in out + err
    assert not (run_dir / LOCK).exists() and (run_dir / "run.json").exists()


def test_a_lock_held_on_another_host_is_refused_and_says_how_to_clear_it(tiny_bert, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK).write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "2026-12-01T10:00:00"}))
    rc, out, err = run(quick_args(tiny_bert, run_dir), data_dir)
    assert rc == 2 and "in use by pid 4242 on host elsewhere since 2026-12-01T10:00:00" in err, \
        describe((rc, out, err))
    assert f"delete {run_dir / LOCK}" in err and "Traceback" not in out + err
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK], "nothing was written into the folder"


def test_validate_takes_no_lock(tiny_bert, data_dir, tmp_path):
    folder = tmp_path / "here"
    folder.mkdir()
    shutil.copy(data_dir / "train.csv", folder / "train.csv")
    (folder / LOCK).write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "then"}))
    rc, out, err = run(["validate", "data=csv", "data.train_file=train.csv", f"model.name_or_path={tiny_bert}"],
                       folder)
    assert rc == 0 and "ok:" in out, describe((rc, out, err))
    assert sorted(p.name for p in folder.iterdir()) == [LOCK, "train.csv"]


# ----------------------------------------------------------------------------- 3. SIGINT / SIGTERM
SIGNAL_POINTS = {
    ("TERM", "step:0:5"): "SIGTERM mid-epoch",
    ("TERM", "eval:0:6"): "SIGTERM mid-evaluation (epoch 1's)",
    ("INT", "step:1:9"): "SIGINT mid-epoch (fold 1, epoch 2)",
    ("INT", "eval:1:12"): "SIGINT mid-evaluation (the last fold's last)",
}


@pytest.mark.parametrize("sig, point", list(SIGNAL_POINTS), ids=list(SIGNAL_POINTS.values()))
def test_a_signal_checkpoints_exits_cleanly_and_the_resumed_run_equals_an_uninterrupted_one(
        tiny_bert, data_dir, tmp_path, reference, sig, point):
    run_dir = tmp_path / "run"
    rc, out, err = run(train_args(tiny_bert, run_dir), data_dir, signal_at=f"{sig}@{point}")
    assert rc == 128 + getattr(signal, f"SIG{sig}"), describe((rc, out, err))
    assert "Traceback" not in out + err
    (line,) = textclf_lines(err)
    assert line.startswith(f"textclf: interrupted (SIG{sig}) ") and "saved; resume with: textclf train " in line, line
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == f"SIG{sig}"
    assert not (run_dir / "metrics.json").exists() and not (run_dir / LOCK).exists()
    # the printed command resumes it, as is
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[:2] == ["textclf", "train"]
    resumed = run(command[1:], data_dir)
    assert resumed[0] == 0, describe(resumed)
    assert "resuming the run" in (run_dir / "train.log").read_text()
    assert_same_outputs(outputs(run_dir), reference[1])


def test_a_second_signal_stops_at_once_and_the_last_checkpoint_still_resumes(tiny_bert, data_dir, tmp_path,
                                                                             reference):
    run_dir = tmp_path / "run"
    args = train_args(tiny_bert, run_dir)
    rc, out, err = run(args, data_dir, signal_at="INT,INT@step:0:5")
    assert rc == 130 and "Traceback" not in out + err, describe((rc, out, err))
    (line,) = textclf_lines(err)
    assert "interrupted again (SIGINT): stopped at once, without a new checkpoint" in line
    latest = json.loads((run_dir / "fold_0" / "checkpoint" / "latest.json").read_text())
    assert latest["global_step"] == 4, "no checkpoint after the second signal: step 4's is the last"
    resumed = run(args, data_dir)
    assert resumed[0] == 0, describe(resumed)
    assert_same_outputs(outputs(run_dir), reference[1])


def test_an_interrupted_job_stops_the_sweep(tiny_bert, data_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    tiny = [o for o in tiny_overrides(tiny_bert, sweep_dir) if not o.startswith("hydra.run.dir")]
    rc, out, err = run(["train", "-m", "data=csv", "data.train_file=train.csv", "plots=false", "pooling=mean,cls",
                        *tiny, f"hydra.sweep.dir={sweep_dir}"], data_dir, signal_at="TERM@step:0:2")
    assert rc == 143 and "Traceback" not in out + err, describe((rc, out, err))
    (line,) = textclf_lines(err)
    assert line.startswith("textclf: job 0 interrupted (SIGTERM) at fold 0, step 2") and "the sweep stops" in line
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert len(jobs) == 1, f"the sweep went on after the interrupted job: {jobs}"


def test_signal_handlers_are_installed_only_in_the_main_thread_and_restored():
    from textclf.run.signals import Interrupted, StopSignals

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM  # asked to stop; the process goes on
        with pytest.raises(Interrupted) as second:
            os.kill(os.getpid(), signal.SIGINT)
        assert second.value.at_once and second.value.exit_code == 130
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    seen = {}

    def in_a_thread():
        with StopSignals() as inner:
            seen["installed"] = bool(inner.previous)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert seen == {"installed": False}


# ----------------------------------------------------------------------------- 4. data fingerprints
def edit_one_text(path) -> None:
    """Change one text in place: same path, same number of rows (and here even the same size)."""
    frame = pd.read_csv(path)
    frame.loc[3, "text"] = frame.loc[3, "text"][::-1]
    write_frame(frame, path)


def test_a_resume_on_a_data_file_edited_in_place_is_refused_or_starts_over(tiny_bert, data_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    write_frame(make_frame(90, seed=0), work / "mine.csv")
    run_dir = tmp_path / "run"
    args = [*quick_args(tiny_bert, run_dir, "mine.csv"), "kfold=stratified", "kfold.n_splits=2"]
    assert run(args, work, kill_at="fold:0")[0] == -signal.SIGKILL
    inputs = json.loads((run_dir / "inputs.json").read_text())
    assert inputs["data.train_file"]["size"] == (work / "mine.csv").stat().st_size
    edit_one_text(work / "mine.csv")
    assert len(pd.read_csv(work / "mine.csv")) == 90

    rc, out, err = run([*args, "resume=true"], work)
    assert rc == 2 and "cannot resume" in err and "data.train_file 'mine.csv'" in err, describe((rc, out, err))
    assert str(work / "mine.csv") in err and "other content" in err and "Traceback" not in err

    rc, out, err = run(args, work)
    assert rc == 0, describe((rc, out, err))
    log = (run_dir / "train.log").read_text()
    assert "starting over" in out + err and "data.train_file 'mine.csv'" in out + err
    assert "finished before, kept" not in out + err, "fold 0 of the old data is not kept"
    assert "reusing" not in out + err, "folds.csv of the old data is not reused"
    assert json.loads((run_dir / "inputs.json").read_text()) != inputs
    assert "starting over" in log

    # the finished run, rerun after another edit: refused, naming the file
    before = file_hashes(run_dir)
    edit_one_text(work / "mine.csv")
    rc, out, err = run(args, work)
    assert rc == 2 and "holds a finished run" in err and "data.train_file 'mine.csv'" in err, describe((rc, out, err))
    assert file_hashes(run_dir) == before


# ----------------------------------------------------------------------------- what overwrite removes
def test_only_the_files_textclf_writes_are_removed(tmp_path):
    from textclf.run.checkpoint import remove_run_outputs
    from textclf.run.folder import RECORD, RUN_NAMES, RUN_OUTPUTS, claim

    run_dir = tmp_path / "run"
    ours = [*RUN_OUTPUTS, "folds.csv", ".oof.csv.abc123.tmp", "backbone/config.json", "backbone/vocab.txt",
            "fold_0/model.safetensors", "fold_0/result.json", "fold_0/outputs.npz", "fold_0/history.csv",
            "fold_0/steps.csv", "fold_0/checkpoint/latest.json", "fold_0/checkpoint/step-000000004.pt",
            "fold_0/.model.safetensors.x1.tmp", "fold_1/result.json", "tb/fold_0/events.out", "tb/hparams/events.out"]
    kept = [".hydra/config.yaml", "train.log", "status.json", LOCK, "notes.txt", "my_plot.png", "fold_0/mine.csv",
            "fold_x/result.json", "tb/mine/events.out", "predictions.csv"]
    for name in ours + kept:
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text(name)
    # the folder's record names what the run wrote (a run records these before writing them)
    claim(run_dir, [*RUN_NAMES, "fold_0/", "fold_1/", "tb/", "backbone/config.json", "backbone/vocab.txt"])
    config = {"logger": {"tensorboard": {"_target_": "textclf.observe.loggers.TensorBoardLogger", "subdir": "tb"}}}
    remove_run_outputs(run_dir, [config], keep_folds_csv=False)
    left = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != RECORD)
    assert left == sorted(kept)
    assert not (run_dir / "fold_1").exists(), "a fold folder left empty goes too"


def test_plot_files_names_every_plot_a_run_writes():
    import inspect
    import re

    from textclf.observe.plots import write_run_plots
    from textclf.run.folder import PLOT_FILES

    written = set(re.findall(r'"(\w+\.png)"', inspect.getsource(write_run_plots)))
    assert written and written <= set(PLOT_FILES), "a new plot must be listed in textclf.run.folder.PLOT_FILES"


def test_what_a_run_folder_holds_decides_how_a_run_starts(tmp_path):
    from omegaconf import OmegaConf

    from textclf.run.checkpoint import prepare_run_dir
    from textclf.errors import TextclfError

    from textclf.run.folder import RUN_NAMES, claim

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    claim(run_dir, RUN_NAMES)  # the run's record, as a run writes it before anything else
    cfg = OmegaConf.create({"optimizer": {"lr": 1e-4}, "resume": False, "overwrite": False, "plots": True})
    inputs = {"data.train_file": {"file": "t.csv", "path": "/d/t.csv", "size": 10, "sha256": "a" * 64}}
    assert prepare_run_dir(run_dir, cfg, inputs) == "fresh"
    with pytest.raises(TextclfError, match="contradict"):
        prepare_run_dir(run_dir, cfg, inputs, resume=True, overwrite=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run_dir / "inputs.json").write_text(json.dumps(inputs))
    # plots (like overwrite and resume) is no setting of the run
    assert prepare_run_dir(run_dir, OmegaConf.merge(cfg, {"plots": False}), inputs) == "resume"
    (run_dir / "run.json").write_text("{}")
    assert prepare_run_dir(run_dir, OmegaConf.merge(cfg, {"plots": False}), inputs, resume=True) == "finished"
    with pytest.raises(TextclfError, match=r"finished run .*optimizer\.lr: 0\.0001 -> 3e-05"):
        prepare_run_dir(run_dir, OmegaConf.merge(cfg, {"optimizer": {"lr": 3e-5}}), inputs)
    edited = {"data.train_file": {**inputs["data.train_file"], "sha256": "b" * 64}}
    with pytest.raises(TextclfError, match=r"data\.train_file 't\.csv' \(/d/t\.csv\) changed .*same size"):
        prepare_run_dir(run_dir, cfg, edited)
    assert (run_dir / "run.json").exists(), "refusals remove nothing"
    assert prepare_run_dir(run_dir, OmegaConf.merge(cfg, {"overwrite": True}), edited, overwrite=True) == "fresh"
    assert not (run_dir / "run.json").exists() and not (run_dir / "config.yaml").exists()
