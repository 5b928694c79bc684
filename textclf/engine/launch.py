"""Starting the processes of a multi-process `textclf train` (engine.distributed trains in them).

  torchrun --nproc_per_node=N -m textclf train ...     the launcher starts N processes; each joins here
  textclf train trainer.devices=N ...                  textclf starts torchrun's own launcher (standalone,
                                                       this machine) with the same command line

Every process composes the same config; the run folder is rank 0's (Hydra's ${now:...} in hydra.run.dir would
otherwise differ by a second between processes), passed to every process as hydra.run.dir.
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


def _quote(path: str) -> str:
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def processes_wanted(seen: dict) -> int | str:
    """How many processes `textclf train` should start itself for trainer.devices (1: none, run here), or the
    message refusing the combination."""
    from textclf.engine.callbacks import launched

    cfg, flags = seen.get("cfg"), seen.get("flags")
    if cfg is None or flags is None or flags.cfg is not None or launched():
        return 1  # --help/--cfg, or a launcher (torchrun, submitit) already decided
    tcfg = cfg.get("trainer") or {}
    devices, device = tcfg.get("devices", 1), str(tcfg.get("device", "auto"))
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    on_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    n = (gpus if on_gpu else 1) if devices == "auto" else int(devices)
    if n <= 1:
        return 1
    if flags.multirun:
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


def start_processes(n: int, args: list[str], seen: dict) -> int:
    """Run this command line as n processes on this machine through torchrun's launcher; its exit status."""
    run_dir = seen.get("run_dir")
    if not run_dir:
        print("textclf: error: trainer.devices: hydra.run.dir does not resolve before the run starts; give it "
              "explicitly (hydra.run.dir=<folder>)", file=sys.stderr)
        return 2
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
        rank, failure = failures[0]
        code = failure.exitcode if failure.exitcode and failure.exitcode > 0 else 128 - (failure.exitcode or -1)
        if failure.exitcode not in (2, 130, 143):  # those said what happened themselves
            print(f"textclf: error: process {rank} of {n} failed (exit code {failure.exitcode}); its log: "
                  f"{run_dir}/train.log", file=sys.stderr)
        return int(code)
    return 0


def join_processes(seen: dict) -> list[str]:
    """In one process of a multi-process run: join the process group and return the Hydra overrides that give
    every process rank 0's run folder (and keep the others from writing .hydra/ and the log file)."""
    from textclf.engine import distributed

    rank = distributed.rank()
    flags = seen.get("flags")
    if flags is not None and flags.multirun:
        if rank == 0:
            print("textclf: error: -m (multirun) inside a multi-process launch: run the sweep with "
                  "launcher=submitit_local or launcher=slurm (hydra.launcher.tasks_per_node=N), or torchrun one run",
                  file=sys.stderr)
        raise SystemExit(2)
    distributed.init_from_env()
    run_dir = distributed.broadcast(seen.get("run_dir"))
    if not run_dir:
        if rank == 0:
            print("textclf: error: hydra.run.dir does not resolve before the run starts; give it explicitly "
                  "(hydra.run.dir=<folder>)", file=sys.stderr)
        raise SystemExit(2)
    extra = [f"hydra.run.dir={_quote(run_dir)}"]
    if rank != 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=stdout", "hydra.job_logging.root.level=WARNING"]
    return extra
