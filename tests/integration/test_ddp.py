"""Several processes on the CPU (gloo), as a user starts them: trainer.devices=2, torchrun, two "nodes" on the
loopback. With dropout off, 2 processes x batch b must train exactly what 1 process x batch 2b trains."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import cli_env, describe, make_frame, run_textclf, textclf_executable, write_frame

pytestmark = pytest.mark.slow

NO_DROPOUT = ["model.hidden_dropout=0", "model.attention_dropout=0", "head.dropout=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_bert):
    folder = tmp_path_factory.mktemp("ddp_data")
    write_frame(make_frame(90, seed=0), folder / "train.csv")
    write_frame(make_frame(24, seed=1), folder / "test.csv")
    return folder


def args_for(tiny_bert, run_dir, *extra):
    return ["train", "data=csv", "data.train_file=train.csv", "data.test_file=test.csv",
            f"model.name_or_path={tiny_bert}", "model.max_length=32", "trainer.epochs=2", "trainer.eval_batch_size=16",
            "trainer.device=cpu", "trainer.log_every_steps=1", "plots=false", f"hydra.run.dir={run_dir}", *extra]


def train(data, tiny_bert, run_dir, *extra, env=None):
    result = run_textclf(args_for(tiny_bert, run_dir, *extra), data) if env is None else _run_env(
        args_for(tiny_bert, run_dir, *extra), data, env)
    assert result[0] == 0, describe(result)
    return result


def _run_env(args, cwd, env_extra):
    return run_textclf(args, cwd, env=cli_env(**env_extra))


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "fold_0" / "model.safetensors"))


def metrics(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in m["mean"].items() if not k.endswith("_per_s")}


def assert_same_training(a: Path, b: Path, tol: float = 1e-6) -> None:
    sa, sb = pd.read_csv(a / "fold_0" / "steps.csv"), pd.read_csv(b / "fold_0" / "steps.csv")
    assert list(sa.step) == list(sb.step)
    np.testing.assert_allclose(sa.loss, sb.loss, atol=tol)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < tol, f"weights differ by {worst}"
    oa, ob = pd.read_csv(a / "oof.csv"), pd.read_csv(b / "oof.csv")
    assert list(oa.row) == list(ob.row) and list(oa.columns) == list(ob.columns)
    np.testing.assert_allclose(oa.select_dtypes("number"), ob.select_dtypes("number"), atol=1e-5)


@pytest.mark.parametrize("tricks", [[], ["trainer.grad_accum_steps=2", "adversarial=fgm", "ema=default",
                                     "trainer.average=last"], ["ema=default", "trainer.average=top"]],
                         ids=["plain", "accum_fgm_ema_average", "ema_soup"])
def test_two_processes_train_what_one_process_at_twice_the_batch_trains(data, tiny_bert, tmp_path, tricks):
    # kfold.holdout=0.3: 63 training rows, so the last global batch (3 rows) is dealt out unevenly (2 + 1)
    common = [*NO_DROPOUT, "kfold.holdout=0.3", *tricks]
    train(data, tiny_bert, tmp_path / "one", "trainer.batch_size=10", *common)
    rc, out, err = train(data, tiny_bert, tmp_path / "two", "trainer.batch_size=5", "trainer.devices=2", *common)
    assert_same_training(tmp_path / "one", tmp_path / "two")
    log = (tmp_path / "two" / "train.log").read_text()
    assert "2 processes (DistributedDataParallel, gloo): trainer.batch_size=5 per process, global batch 10" in log
    # only rank 0 writes: one log of one run, each step row once
    assert log.count("done: macro_f1") == 1 and log.count("fold 0: best at step") == 1


def test_torchrun_and_trainer_devices_write_the_same_run(data, tiny_bert, tmp_path):
    train(data, tiny_bert, tmp_path / "devices", "trainer.batch_size=8", "trainer.devices=2", *NO_DROPOUT)
    args = args_for(tiny_bert, tmp_path / "torchrun", "trainer.batch_size=8", *NO_DROPOUT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "textclf"]
    proc = subprocess.run([*torchrun, *args], cwd=data, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and ".hydra" not in p.parts)
    assert files(tmp_path / "devices") == files(tmp_path / "torchrun")
    assert metrics(tmp_path / "devices") == metrics(tmp_path / "torchrun")
    assert_same_training(tmp_path / "devices", tmp_path / "torchrun")


def test_killed_two_process_run_resumes_to_the_same_result(data, tiny_bert, tmp_path):
    common = ["trainer.batch_size=4", "trainer.devices=2", "trainer.checkpoint_every_steps=3"]
    train(data, tiny_bert, tmp_path / "whole", *common)
    killed = _run_env(args_for(tiny_bert, tmp_path / "cut", *common), data,
                      {"TEXTCLF_KILL_AT": "step:0:13", "TEXTCLF_FAULT_RANK": "0"})
    assert killed[0] == 137, describe(killed)  # 128 + SIGKILL, as the killed process ended
    assert "the process of rank 0 (of 2) was killed by SIGKILL" in killed[2] and "Traceback" not in killed[2]
    assert not (tmp_path / "cut" / "run.json").exists()
    # the printed command resumes it, with the same processes
    command = shlex.split(killed[2].split("resume with: ", 1)[1].splitlines()[0])
    assert command[:2] == ["textclf", "train"] and "trainer.devices=2" in command
    result = run_textclf(command[1:], data)
    assert result[0] == 0, describe(result)
    assert "resuming at epoch 2, batch 3 (optimizer step 12)" in (tmp_path / "cut" / "train.log").read_text()
    assert metrics(tmp_path / "whole") == metrics(tmp_path / "cut")
    assert (tmp_path / "whole" / "oof.csv").read_text() == (tmp_path / "cut" / "oof.csv").read_text()
    wa, wb = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert all(bool((wa[k] == wb[k]).all()) for k in wa)


def test_a_killed_process_is_named_and_the_other_stopped_in_one_line(data, tiny_bert, tmp_path):
    common = ["trainer.batch_size=4", "trainer.devices=2", "trainer.checkpoint_every_steps=3"]
    t0 = time.monotonic()
    rc, out, err = _run_env(args_for(tiny_bert, tmp_path / "cut", *common), data,
                            {"TEXTCLF_KILL_AT": "step:0:5", "TEXTCLF_FAULT_RANK": "1"})
    assert rc == 137, describe((rc, out, err))
    assert time.monotonic() - t0 < 120  # rank 0 did not wait for rank 1 (torch.distributed's timeout is 30 minutes)
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert errors == [line for line in errors if line.startswith("textclf: error: ")] and len(errors) == 1, err
    assert errors[0].startswith("textclf: error: the process of rank 1 (of 2) was killed by SIGKILL; the other "
                                "process stopped; resume with: textclf train "), err
    for library in ("Traceback", "gloo", "torch/distributed", "[rank0]", "RuntimeError"):  # its messages and logs
        assert library not in err, err
    status = json.loads((tmp_path / "cut" / "status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("the process of rank 1 (of 2) was killed by "
                                                                       "SIGKILL"), status
    assert status["traceback"] is None and "trainer.devices=2" in status["resume"]


def test_ctrl_c_stops_every_process_once_and_the_hint_resumes_them(data, tiny_bert, tmp_path):
    # 10 epochs (90 steps): the run is still training when the signal arrives, however loaded the machine
    args = args_for(tiny_bert, tmp_path / "run", "trainer.batch_size=4", "trainer.devices=2",
                    "trainer.checkpoint_every_steps=3", "trainer.epochs=10")
    # the textclf process alone gets the signal, as a terminal's Ctrl-C reaches it (its processes are in a session of
    # their own): it passes it on once, and they stop together at the next safe point
    proc = subprocess.Popen([textclf_executable(), *args], cwd=data, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (tmp_path / "run" / "fold_0" / "checkpoint").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, describe((proc.returncode, out, err))
    assert "Traceback" not in err and "SignalException" not in err and "textclf: error" not in err, err
    hints = [line for line in err.splitlines() if "resume with: " in line]
    assert len(hints) == 1 and hints[0].startswith("textclf: interrupted (SIGINT) at fold 0, step "), err
    assert "stopped at once" not in hints[0]  # the signal was passed on once: the processes saved a checkpoint
    command = shlex.split(hints[0].split("resume with: ", 1)[1])
    assert command[:2] == ["textclf", "train"] and "trainer.devices=2" in command
    result = run_textclf(command[1:], data)
    assert result[0] == 0, describe(result)
    assert "resuming at epoch" in (tmp_path / "run" / "train.log").read_text()
    assert (tmp_path / "run" / "run.json").exists()


def test_a_stopped_torchrun_launch_resumes_with_the_torchrun_command_it_prints(data, tiny_bert, tmp_path):
    args = args_for(tiny_bert, tmp_path / "run", "trainer.batch_size=4", "trainer.checkpoint_every_steps=3")
    env = cli_env(OMP_NUM_THREADS="1", TEXTCLF_SIGNAL_AT="TERM@step:0:5", TEXTCLF_FAULT_RANK="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    proc = subprocess.run([*torchrun, "--standalone", "--nproc_per_node=2", "-m", "textclf", *args], cwd=data,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0, proc.stderr[-3000:]
    hints = [line for line in proc.stderr.splitlines() if "resume with: " in line]
    assert len(hints) == 1 and hints[0].startswith("textclf: interrupted (SIGTERM) at fold 0, step 5"), proc.stderr
    command = shlex.split(hints[0].split("resume with: ", 1)[1])
    assert command[:4] == ["torchrun", "--standalone", "--nproc_per_node=2", "-m"], command
    assert command[4:6] == ["textclf", "train"] and f"resume={tmp_path / 'run'}" in command
    env = cli_env(OMP_NUM_THREADS="1")
    proc = subprocess.run([*torchrun, *command[1:]], cwd=data, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "2 processes (DistributedDataParallel, gloo)" in log and "resuming at epoch 1, batch 5" in log
    assert (tmp_path / "run" / "run.json").exists()


def test_two_nodes_on_the_loopback(data, tiny_bert, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = args_for(tiny_bert, tmp_path / "run", "trainer.batch_size=8", "trainer.epochs=1")
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={k}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", "-m",
                               "textclf", *args], cwd=data, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in (0, 1)]
    outs = [n.communicate(timeout=300) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert (tmp_path / "run" / "run.json").exists()
    assert "2 processes" in (tmp_path / "run" / "train.log").read_text()


def test_devices_refusals_are_clear(data, tiny_bert, tmp_path):
    rc, out, err = run_textclf(["train", "-m", "trainer.devices=2", "pooling=mean,cls", "trainer.device=cpu"], data)
    assert rc == 2 and "launcher=submitit_local" in err and "Traceback" not in err
    rc, out, err = run_textclf(["train", "trainer.devices=0"], data)
    assert rc == 2 and "trainer.devices" in err and "Traceback" not in err


def test_submitit_local_sweep_of_two_process_jobs(data, tiny_bert, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = args_for(tiny_bert, tmp_path / "unused", "trainer.batch_size=8", "trainer.epochs=1")
    args = [a for a in args if not a.startswith("hydra.run.dir")]
    rc, out, err = run_textclf([args[0], "-m", "launcher=submitit_local", *args[1:], "pooling=mean,cls",
                                "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"], data,
                               timeout=600)
    assert rc == 0, describe((rc, out, err))
    assert "2 job(s), 2 ok" in out
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2
    for job in jobs:
        assert (job / "run.json").exists()
        assert "2 processes (DistributedDataParallel, gloo)" in (job / "train.log").read_text()


def test_a_time_limit_is_planned_once_for_both_processes(data, tiny_bert, tmp_path):
    """Both processes time the same probe steps together (their all-reduce included); rank 0's plan is everyone's."""
    train(data, tiny_bert, tmp_path / "run", "trainer.batch_size=4", "trainer.devices=2", "trainer.time_limit=1h")
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("time_limit 1.00 h:") == 1 and "the whole run fits" in log
    plan = json.loads((tmp_path / "run" / "time_plan.json").read_text())
    assert (plan["epochs"], plan["steps"], plan["folds"]) == (2, None, 1)
    assert log.count("done: macro_f1") == 1
