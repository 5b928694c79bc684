"""Kill a run (SIGKILL) at several points, resume it, and get exactly what an uninterrupted run gives (CPU)."""
from __future__ import annotations

import json
import signal

import pandas as pd
import pytest
from conftest import cli_env, describe, make_frame, run_textclf, tiny_overrides, write_frame

pytestmark = pytest.mark.slow

# 90 rows, 2 folds: 45 training rows a fold, batch 8 -> 6 optimizer steps an epoch, 12 a fold (2 epochs);
# checkpoints every 4 steps: step 4, the end of epoch 1 (step 6), step 8
KILL_POINTS = {
    "step:0:5": "mid-epoch, one step after a checkpoint",
    "epoch:0:1": "between epochs",
    "checkpoint_write:0:8": "during a checkpoint write (weights written, state not)",
    "fold:0": "between folds",
}


def run(args, cwd, kill_at=None):
    """`textclf <args>` in cwd; kill_at="step:0:5" kills the process (SIGKILL) at that fault point."""
    return run_textclf(args, cwd, timeout=600, env=cli_env(TEXTCLF_KILL_AT=kill_at or None))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume_data")
    write_frame(make_frame(90, seed=0), d / "train.csv")
    write_frame(make_frame(20, seed=1), d / "test.csv")
    return d


def train_args(tiny_bert, data_dir, run_dir):
    return ["train", "data=csv", "data.train_file=train.csv", "data.test_file=test.csv", "kfold=stratified",
            "kfold.n_splits=2", "ema=default", *tiny_overrides(tiny_bert, run_dir), "trainer.epochs=2",
            "trainer.checkpoint_every_steps=4"]


def outputs(run_dir) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for fold in metrics["folds"]:  # timings differ between any two runs
        fold.pop("train_samples_per_s"), fold.pop("eval_samples_per_s")
    for key in ("mean", "std"):
        metrics[key].pop("train_samples_per_s", None), metrics[key].pop("eval_samples_per_s", None)
    return {"metrics": metrics, "oof": pd.read_csv(run_dir / "oof.csv"),
            "test": pd.read_csv(run_dir / "test_predictions.csv")}


@pytest.fixture(scope="module")
def reference(tiny_bert, data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("resume_ref") / "run"
    result = run(train_args(tiny_bert, data_dir, run_dir), data_dir)
    assert result[0] == 0, describe(result)
    assert not list(run_dir.glob("fold_*/checkpoint")), "a finished fold keeps no checkpoint"
    return outputs(run_dir)


@pytest.mark.parametrize("kill_at", list(KILL_POINTS), ids=list(KILL_POINTS.values()))
def test_killed_run_resumes_to_the_uninterrupted_result(tiny_bert, data_dir, tmp_path, reference, kill_at):
    run_dir = tmp_path / "run"
    args = train_args(tiny_bert, data_dir, run_dir)
    killed = run(args, data_dir, kill_at=kill_at)
    assert killed[0] == -signal.SIGKILL, f"the fault point {kill_at} was never reached:\n{describe(killed)}"
    assert not (run_dir / "metrics.json").exists(), "a killed run must not look finished"
    resumed = run(args, data_dir)
    assert resumed[0] == 0, describe(resumed)
    assert "resuming the run" in resumed[1] + resumed[2] + (run_dir / "train.log").read_text()
    got = outputs(run_dir)
    assert got["metrics"] == reference["metrics"]
    pd.testing.assert_frame_equal(got["oof"], reference["oof"], check_exact=True)
    pd.testing.assert_frame_equal(got["test"], reference["test"], check_exact=True)


def test_resume_true_with_other_settings_is_refused(tiny_bert, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = train_args(tiny_bert, data_dir, run_dir)
    assert run(args, data_dir, kill_at="fold:0")[0] == -signal.SIGKILL
    rc, out, err = run([*args, "optimizer.lr=1e-3", "resume=true"], data_dir)
    assert rc == 2 and "cannot resume" in err and "optimizer.lr" in err, (rc, err)
    assert err.count("textclf: error:") == 1 and "Traceback" not in err


def test_resume_true_without_a_run_is_a_clear_error(tiny_bert, data_dir, tmp_path):
    rc, out, err = run([*train_args(tiny_bert, data_dir, tmp_path / "empty"), "resume=true"], data_dir)
    assert rc == 2 and "no run to resume" in err, err


def test_resume_with_the_run_folder_continues_it(tiny_bert, data_dir, tmp_path, reference):
    run_dir = tmp_path / "run"
    args = train_args(tiny_bert, data_dir, run_dir)
    assert run(args, data_dir, kill_at="epoch:1:1")[0] == -signal.SIGKILL
    # `resume=<folder>` stands for resume=true hydra.run.dir=<folder>; the folder's own overrides are repeated
    short = [a for a in args if not a.startswith("hydra.run.dir=")] + [f"resume={run_dir}"]
    rc, out, err = run(short, data_dir)
    assert rc == 0, describe((rc, out, err))
    assert outputs(run_dir)["metrics"] == reference["metrics"]


def test_validate_checks_without_loading_weights(tiny_bert, data_dir, tmp_path):
    rc, out, err = run(["validate", "data=csv", "data.train_file=train.csv", "data.test_file=test.csv",
                        f"model.name_or_path={tiny_bert}"], data_dir)
    assert rc == 0, describe((rc, out, err))
    assert "90 rows" in out and "classes         3" in out and "ok:" in out
    assert not (data_dir / "outputs").exists(), "validate writes nothing"
    # the backbone's files are checked too (its tokenizer and config, as train checks them), not its weights
    rc, out, err = run(["validate", "data=csv", "data.train_file=train.csv", "model.name_or_path=/nonexistent/model"],
                       data_dir)
    assert rc == 2 and "/nonexistent/model" in err and "Traceback" not in err, describe((rc, out, err))
    write_frame(make_frame(10, seed=2).assign(label="sport"), tmp_path / "one.csv")
    rc, out, err = run(["validate", "data=csv", f"data.train_file={tmp_path / 'one.csv'}"], data_dir)
    assert rc == 2 and "only one class" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- step-level evaluation
# 6 optimizer steps an epoch (see above): evaluations at steps 3 and 9 (mid-epoch) and 6, 12 (epoch ends)
EVAL_ARGS = ["trainer.eval_every_steps=3", "trainer.log_every_steps=2", "trainer.early_stopping_patience=3"]


def logged(run_dir) -> dict:
    """Each fold's history.csv and steps.csv, without the timings."""
    out = {}
    for fold in sorted(run_dir.glob("fold_*")):
        for name in ("history.csv", "steps.csv"):
            frame = pd.read_csv(fold / name)
            out[f"{fold.name}/{name}"] = frame.drop(columns=["samples_per_s"], errors="ignore")
    return out


@pytest.fixture(scope="module")
def step_eval_reference(tiny_bert, data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("resume_steps_ref") / "run"
    result = run([*train_args(tiny_bert, data_dir, run_dir), *EVAL_ARGS], data_dir)
    assert result[0] == 0, describe(result)
    return outputs(run_dir), logged(run_dir)


def test_step_level_evaluation_runs_every_n_steps(step_eval_reference):
    (metrics, logs) = step_eval_reference
    history = logs["fold_0/history.csv"]
    assert history["step"].tolist() == [3, 6, 9, 12]
    assert history["epoch"].tolist() == [0.5, 1, 1.5, 2]
    assert logs["fold_0/steps.csv"]["step"].tolist() == [2, 4, 6, 8, 10, 12]
    best = metrics["metrics"]["folds"][0]
    assert best["best_step"] in (3, 6, 9, 12)
    assert best["macro_f1"] == history["macro_f1"].max()  # the best evaluation, mid-epoch ones included


@pytest.mark.parametrize("kill_at", ["step:0:5", "step:0:10", "epoch:1:1"])
def test_killed_run_with_step_evaluation_resumes_exactly(tiny_bert, data_dir, tmp_path, step_eval_reference,
                                                         kill_at):
    run_dir = tmp_path / "run"
    args = [*train_args(tiny_bert, data_dir, run_dir), *EVAL_ARGS]
    assert run(args, data_dir, kill_at=kill_at)[0] == -signal.SIGKILL
    resumed = run(args, data_dir)
    assert resumed[0] == 0, describe(resumed)
    got, got_logs = outputs(run_dir), logged(run_dir)
    want, want_logs = step_eval_reference
    assert got["metrics"] == want["metrics"]
    pd.testing.assert_frame_equal(got["oof"], want["oof"], check_exact=True)
    assert got_logs.keys() == want_logs.keys()
    for name in want_logs:  # the loggers' files equal the uninterrupted run's: no row twice, none missing
        pd.testing.assert_frame_equal(got_logs[name], want_logs[name], check_exact=True)


@pytest.mark.parametrize("average", ["last", "top"])
def test_a_killed_run_with_weight_averaging_resumes_exactly(average, tiny_bert, data_dir, tmp_path):
    """trainer.average with ema=default. last: the checkpoint at step 8 holds the average of steps 4..8 (of EMA's
    shadow); top: the weights of the best evaluations so far (3 an epoch). Killed at step 10, the resumed run
    equals the uninterrupted one."""
    extra = {"last": ["trainer.average=last", "trainer.average_start=0.25"],
             "top": ["trainer.average=top", "trainer.average_top_k=2"]}[average]
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    done = run([*train_args(tiny_bert, data_dir, reference_dir), *extra], data_dir)
    assert done[0] == 0, describe(done)
    log = (reference_dir / "train.log").read_text()
    assert {"last": "average=last: the weights of EMA's shadow averaged",
            "top": "greedy soup of "}[average] in log
    args = [*train_args(tiny_bert, data_dir, run_dir), *extra]
    assert run(args, data_dir, kill_at="step:0:10")[0] == -signal.SIGKILL
    resumed = run(args, data_dir)
    assert resumed[0] == 0, describe(resumed)
    got, want = outputs(run_dir), outputs(reference_dir)
    assert got["metrics"] == want["metrics"]
    pd.testing.assert_frame_equal(got["oof"], want["oof"], check_exact=True)
    pd.testing.assert_frame_equal(got["test"], want["test"], check_exact=True)
