"""Starting the processes of a multi-process `textclf train` (engine.distributed trains in them).

  torchrun --nproc_per_node=N -m textclf train ...     the launcher starts N processes; each joins here
  textclf train trainer.devices=N ...                  textclf starts torchrun's own launcher (standalone,
                                                       this machine) with the same command line

Both happen in Processes, a Hydra callback (after the config check, before the run folder is locked): Hydra has
composed the config, and nothing is written yet. Every process composes the same config; the run folder is rank
0's (Hydra's ${now:...} in hydra.run.dir would otherwise differ by a second between processes): textclf passes it to
the processes it starts as hydra.run.dir, and every process of a launch takes rank 0's before Hydra makes it.

torch is imported inside the functions that need it: Hydra imports every callback's module before the first one
runs, and a config the check refuses should not wait for torch to load.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from textclf.engine.callbacks import launched, rank
from textclf.errors import Refused, TextclfError

log = logging.getLogger(__name__)


class Processes(Callback):
    """Hydra callback (hydra.callbacks in train.yaml) for a single `textclf train` run: with trainer.devices=N, start
    N processes on this machine and end this one with their exit status; in a process a launcher started (torchrun,
    or the processes started here), join the process group and take rank 0's run folder."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.job.name != "train":
            return
        if launched():
            join_processes(config)
            return
        wanted = processes_wanted(config)
        if isinstance(wanted, str):
            raise Refused(TextclfError(wanted))
        if wanted > 1:
            # @hydra.main read this command line from sys.argv: the processes get it as it is
            raise SystemExit(start_processes(wanted, sys.argv[1:], run_dir_of(config)))


def run_dir_of(config: DictConfig) -> str:
    """hydra.run.dir as Hydra is about to make it (${now:...} resolves once per config)."""
    try:
        return str(config.hydra.run.dir)
    except Exception as e:  # noqa: BLE001 - an interpolation only Hydra's own run can resolve
        raise Refused(TextclfError(f"trainer.devices: hydra.run.dir does not resolve before the run starts ({e}); "
                                   f"give it explicitly (hydra.run.dir=<folder>)")) from None


def _quote(path: str) -> str:
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def processes_wanted(cfg: DictConfig, multirun: bool = False) -> int | str:
    """How many processes `textclf train` should start itself for trainer.devices (1: none, run here), or the
    message refusing the combination."""
    if launched():
        return 1  # a launcher (torchrun, submitit) already decided
    import torch

    devices, device = cfg.trainer.devices, str(cfg.trainer.device)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    on_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    n = (gpus if on_gpu else 1) if devices == "auto" else int(devices)
    if n <= 1:
        return 1
    if multirun:
        return (f"trainer.devices={devices} in a multirun: a sweep job runs in one process with the basic launcher; "
                f"for multi-process jobs use launcher=submitit_local or launcher=slurm with "
                f"hydra.launcher.tasks_per_node={n} (README: More than one GPU or machine)")
    if on_gpu and ":" in device:
        return (f"trainer.device={device} with trainer.devices={n}: each process takes its own GPU "
                f"(cuda:LOCAL_RANK); use trainer.device=cuda (or auto)")
    if on_gpu and n > gpus:
        return (f"trainer.devices={n} but {gpus} GPU(s) are visible; use trainer.devices={gpus} (or auto), or "
                f"trainer.device=cpu for CPU processes")
    return n


def start_processes(n: int, args: list[str], run_dir: str) -> int:
    """Run this command line as n processes on this machine through torchrun's launcher, into run_dir; their exit
    status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if "OMP_NUM_THREADS" not in os.environ:  # n processes share the cores (torchrun would say 1 and warn)
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    launch_args = get_args_parser().parse_args(
        ["--standalone", f"--nproc_per_node={n}", "--module", "textclf", "train", *args,
         f"hydra.run.dir={_quote(run_dir)}"])
    print(f"textclf: trainer.devices={n}: starting {n} processes (torch.distributed, this machine) into {run_dir}",
          file=sys.stderr)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    try:
        run(launch_args)
    except ChildFailedError as e:
        failures = sorted(e.failures.items())
        process, failure = failures[0]
        code = failure.exitcode if failure.exitcode and failure.exitcode > 0 else 128 - (failure.exitcode or -1)
        if failure.exitcode not in (2, 130, 143):  # those said what happened themselves
            print(f"textclf: error: process {process} of {n} failed (exit code {failure.exitcode}); its log: "
                  f"{run_dir}/train.log", file=sys.stderr)
        return int(code)
    return 0


def join_processes(config: DictConfig) -> None:
    """In one process of a multi-process run: join the process group and take rank 0's run folder; the other ranks
    have Hydra write nothing (no .hydra/, no log file: rank 0 writes) and log warnings only."""
    from textclf.engine import distributed

    distributed.init_from_env()
    run_dir = distributed.broadcast(run_dir_of(config) if rank() == 0 else None)
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.run.dir = run_dir
        if rank() == 0:
            return
        config.hydra.output_subdir = None
        logging_cfg = config.hydra.job_logging
        to_file = [name for name, h in (logging_cfg.get("handlers") or {}).items() if h is not None and "filename" in h]
        for name in to_file:
            del logging_cfg.handlers[name]
        for node in [logging_cfg.get("root"), *(logging_cfg.get("loggers") or {}).values()]:
            if node is not None and node.get("handlers") is not None:
                node.handlers = [h for h in node.handlers if h not in to_file]
        if logging_cfg.get("root") is not None:
            logging_cfg.root.level = "WARNING"
