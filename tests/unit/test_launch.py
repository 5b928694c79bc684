"""Starting and ending the processes of a multi-process run (textclf.engine.launch), without training: how many
processes a machine takes, which process a failed launch names, and the command that resumes a launch."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from textclf.engine import launch
from textclf.engine.distributed import lost_peer


@pytest.fixture
def no_process_starts(monkeypatch):
    """Every process textclf would start (Popen, torchrun's launcher, joining a process group) is recorded instead."""
    started = []

    def refuse(*args, **kwargs):
        started.append(args)
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(launch, "start_processes", refuse)
    monkeypatch.setattr(launch, "join_processes", refuse)
    return started


@pytest.mark.parametrize("command", ["train", "validate", "info"])
def test_more_devices_than_cpu_cores_is_refused_before_any_process_starts(command, tmp_path, in_process_cli,
                                                                          no_process_starts, capsys):
    cores = launch.cpu_cores()
    asked = cores + 1
    t0 = time.monotonic()
    rc = in_process_cli([command, f"trainer.devices={asked}", "trainer.device=cpu"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"trainer.devices={asked} asks for {asked} processes but {cores} CPU core(s) are available" in err, err
    assert f"use trainer.devices={cores} or fewer" in err and err.count("textclf: error") == 1, err
    assert "Traceback" not in err
    assert no_process_starts == [] and list(tmp_path.iterdir()) == []  # nothing started, nothing written
    assert time.monotonic() - t0 < 60


def test_as_many_devices_as_cpu_cores_is_accepted(monkeypatch):
    monkeypatch.setattr(launch, "cpu_cores", lambda: 4)
    cfg = OmegaConf.create({"trainer": {"devices": 4, "device": "cpu"}})
    assert launch.processes_wanted(cfg) == 4
    cfg.trainer.devices = 5
    assert "trainer.devices=5 asks for 5 processes but 4 CPU core(s) are available" in launch.processes_wanted(cfg)


def test_more_devices_than_visible_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = OmegaConf.create({"trainer": {"devices": 3, "device": "cuda"}})
    message = launch.processes_wanted(cfg)
    assert isinstance(message, str) and "trainer.devices=3 asks for 3 processes but 2 GPU(s) are visible" in message
    cfg.trainer.devices = 2
    assert launch.processes_wanted(cfg) == 2
    cfg.trainer.device, cfg.trainer.devices = "auto", "auto"
    assert launch.processes_wanted(cfg) == 2


def test_torchrun_with_more_processes_than_cpu_cores_is_refused_before_joining(tmp_path, monkeypatch, in_process_cli,
                                                                                no_process_starts, capsys):
    cores = launch.cpu_cores()
    for name, value in {"WORLD_SIZE": cores + 1, "LOCAL_WORLD_SIZE": cores + 1, "RANK": 0, "LOCAL_RANK": 0}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv(launch.LAUNCHER_ENV, raising=False)
    rc = in_process_cli(["train", "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"torchrun --nproc_per_node={cores + 1}" in err and f"{cores} CPU core(s) are available" in err, err
    assert no_process_starts == [] and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- a failed launch
def python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_the_process_killed_first_is_named_and_a_hanging_one_is_stopped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(launch, "GRACE_S", 1.0)
    procs = [python("import time; time.sleep(120)"),  # rank 0 waits for rank 1 forever (a collective that hangs)
             python("import os, signal, time; time.sleep(0.3); os.kill(os.getpid(), signal.SIGKILL)")]
    t0 = time.monotonic()
    rc = launch.Launch(procs, str(tmp_path), ["trainer.devices=2", "pooling=cls"]).wait()
    err = capsys.readouterr().err
    assert rc == 128 + 9
    assert time.monotonic() - t0 < 30 and all(p.poll() is not None for p in procs)  # rank 0 was stopped
    assert err.count("\n") == 1 and err.startswith("textclf: error: the process of rank 1 (of 2) was killed by "
                                                   "SIGKILL; the other process stopped; resume with: textclf train "
                                                   f"trainer.devices=2 pooling=cls resume={tmp_path}"), err


def test_a_process_that_only_lost_its_peer_is_not_blamed():
    run = launch.Launch([], "/run", [])
    run.ended = {0: launch.LOST_PEER_EXIT, 1: -9}  # rank 0 was reaped first, but it only lost contact with rank 1
    assert run.failed_first() == (1, -9)
    run.ended, run.killed = {1: 1, 0: -9}, {0}  # rank 0 killed here after the grace period
    assert run.failed_first() == (1, 1)
    assert launch.failure_line(1, 1, 4) == "the process of rank 1 (of 4) failed (exit code 1); the other 3 processes " \
                                           "stopped"
    run.ended, run.killed = {0: 0, 1: 0}, set()
    assert run.failed_first() is None and run.report() == 0


@pytest.mark.parametrize("rank0", [2, 130, 143])
def test_rank_0_that_said_why_it_stopped_is_not_repeated(rank0, capsys):
    run = launch.Launch([], "/run", [])
    run.ended = {1: rank0, 0: rank0}
    assert run.report() == rank0 and capsys.readouterr().err == ""


def test_processes_killed_on_a_third_ctrl_c_are_an_interruption_not_a_failure(capsys):
    run = launch.Launch([], "/run", ["trainer.devices=2"])
    run.ended, run.signals = {0: -9, 1: -9}, 3
    assert run.report() == 130
    assert capsys.readouterr().err == ("textclf: interrupted a third time: the processes were killed; the last "
                                       "checkpoint resumes the run: textclf train trainer.devices=2 resume=/run\n")


def test_a_lost_peer_is_told_from_a_fault_of_this_process(monkeypatch):
    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                        "[127.0.0.1]:414")
    wrapped = ValueError("while gathering")
    wrapped.__cause__ = gloo
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not lost_peer(gloo)  # one process: there is no peer
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert lost_peer(gloo) and lost_peer(wrapped)
    assert not lost_peer(RuntimeError("CUDA out of memory")) and not lost_peer(ValueError("bad")) and not lost_peer(None)


def test_fault_points_act_in_the_named_rank_only(monkeypatch):
    from textclf.run.checkpoint import KILL_ENV, SIGNAL_ENV

    monkeypatch.setenv(launch.FAULT_RANK_ENV, "1")
    for rank, kept in ((0, False), (1, True)):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv(KILL_ENV, "step:0:5")
        monkeypatch.setenv(SIGNAL_ENV, "TERM@step:0:5")
        launch.faults_on_own_rank()
        assert (KILL_ENV in launch.os.environ, SIGNAL_ENV in launch.os.environ) == (kept, kept)


# ----------------------------------------------------------------------------- how to resume
TORCHRUN = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}


@pytest.mark.parametrize("env, start", [
    ({}, "textclf train"),
    ({**TORCHRUN, launch.LAUNCHER_ENV: "123"}, "textclf train"),  # trainer.devices=N: textclf started them
    (TORCHRUN, "torchrun --standalone --nproc_per_node=2 -m textclf train"),
    ({**TORCHRUN, "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"},
     "torchrun --nnodes=2 --node_rank=0 --nproc_per_node=2 --master_addr=10.0.0.1 --master_port=29500 -m textclf train"),
], ids=["one_process", "trainer_devices", "torchrun", "torchrun_two_nodes"])
def test_the_resume_command_repeats_the_launch(env, start, monkeypatch):
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "SUBMITIT_EXECUTOR", launch.LAUNCHER_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    overrides = ["trainer.devices=2", "resume=true", "overwrite=false", "data.train_file=my file.csv"]
    assert launch.resume_command(overrides, "/runs/a b") == (f"{start} trainer.devices=2 'data.train_file=my file.csv' "
                                                             f"'resume=/runs/a b'")
