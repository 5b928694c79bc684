"""Sweeps: a training job that records its outcome and never takes a multirun down with it.

Each job writes `status.json` into its folder: `running` when it starts, then `ok` (score, metric,
direction, wall time), `failed` (the error and its traceback) or `interrupted` (the signal, where it stopped,
the command that resumes it). In a multirun a failed job returns None, which Hydra's sweepers record as a
failure (Optuna marks the trial FAIL) before going on to the next job; a single run still stops with
`textclf: error: ...` and exit status 2. An interrupted job (SIGINT / SIGTERM) stops the whole sweep, exit
130 / 143. A folder holding a finished run that overwrite=true does not replace keeps its status.json. After a
multirun the report of the sweep folder is printed and written (textclf.commands.report).

RunFolderGuard (a Hydra callback) takes a single run's folder lock before Hydra writes into it, and keeps Hydra
from writing into a finished run's folder at all.

torch, the fold loop, the metrics and the report are imported inside the functions that need them: Hydra imports
every callback's module (RunFolderGuard, SweepReport) before the config check runs, and a config the check refuses
should not wait for them to load.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict, read_write

from textclf.config.options import chosen
from textclf.engine.callbacks import is_main, launched
from textclf.engine.launch import resume_command
from textclf.errors import TextclfError, own_errors
from textclf.io import file_fault
from textclf.run import folder
from textclf.run.folder import write_status
from textclf.run.signals import Interrupted

log = logging.getLogger("textclf")


def sweeper_direction(monitor: str) -> str:
    """The `textclf_direction` resolver: Optuna's direction for trainer.monitor (auto: macro_f1, maximize).
    Regression's auto monitor is rmse, which is minimised: set trainer.monitor=rmse or hydra.sweeper.direction."""
    from textclf.data.metrics import direction_of

    return direction_of("macro_f1" if monitor == "auto" else monitor) or "maximize"


def run_job(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> float | None:
    """Run `textclf train` as one job of a run or a multirun; record the outcome in status.json.

    Returns the job's CV score (trainer.monitor's mean over the folds), or None for a failed job (or a
    non-finite score) in a multirun, so a sweeper never optimises a failure. The job holds its folder's lock
    throughout (a multirun's job takes it here; a single run's RunFolderGuard took it before Hydra wrote into the
    folder) and releases it at the end; a job stopped by SIGINT / SIGTERM exits 130 / 143 and ends a multirun.
    """
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    join_submitit_tasks()
    if not is_main():
        return _run_as_follower(fn, cfg)
    base = {"job": int(hc.job.num) if multirun else None, "overrides": list(hc.overrides.task)}
    limit_threads(hc)
    taken = False
    try:
        if not folder.holds(run_dir):  # before status.json: a second process must not touch the holder's files
            folder.lock(run_dir)
            taken = True
        # a single run's folder was adopted before Hydra wrote into it (RunFolderGuard); a multirun job's .hydra/
        # and log are Hydra's for this job
        folder.adopt(run_dir, allowed=(folder.HYDRA_DIR, folder.LOG) if multirun else (), overwrite=bool(cfg.overwrite))
    except TextclfError as e:
        if taken:
            folder.release(run_dir)
        if not multirun:
            print(f"textclf: error: {e}", file=sys.stderr)
            sys.exit(2)
        put_back_hydra_record(run_dir)
        print(f"textclf: job {base['job']} not run: {e}; the sweep goes on", file=sys.stderr)
        return None
    try:
        return _run_locked(fn, cfg, hc, run_dir, base, multirun)
    finally:
        folder.release(run_dir)


#: a multirun's existing job folders as they were before its jobs ran (RunFolderGuard.on_multirun_start): the bytes of
#: each file in .hydra/ (None: no .hydra/) and the log's size (None: no log), by folder
_BEFORE: dict[Path, tuple[dict | None, int | None]] = {}


def remember_job_folders(sweep_dir: Path) -> None:
    """Before a multirun's jobs run: what Hydra will write over in the job folders that exist already."""
    _BEFORE.clear()
    if not sweep_dir.is_dir():
        return
    for job_dir in [*sweep_dir.glob("*/"), *sweep_dir.glob("*/*/")]:
        if not job_dir.is_dir() or job_dir.name == folder.HYDRA_DIR:
            continue
        record, log_file = job_dir / folder.HYDRA_DIR, job_dir / folder.LOG
        files = {p.name: p.read_bytes() for p in record.iterdir() if p.is_file()} if record.is_dir() else None
        _BEFORE[job_dir.resolve()] = (files, log_file.stat().st_size if log_file.is_file() else None)


def put_back_hydra_record(run_dir: Path) -> None:
    """A multirun job refused its folder (another process holds it, a finished run it must not replace, files of
    the user's): Hydra had written its .hydra/ and log there before the job ran; put them back as they were, so the
    folder's run keeps its own overrides (textclf report labels runs by them) and log."""
    before = _BEFORE.get(run_dir.resolve())
    if before is None:
        return
    files, log_size = before
    record, log_file = run_dir / folder.HYDRA_DIR, run_dir / folder.LOG
    if files is None:
        shutil.rmtree(record, ignore_errors=True)
    else:
        for name, data in files.items():
            (record / name).write_bytes(data)
        for path in record.iterdir() if record.is_dir() else ():
            if path.name not in files and path.is_file():
                path.unlink()
    if log_size is None:
        log_file.unlink(missing_ok=True)
    elif log_file.is_file() and log_file.stat().st_size > log_size:
        with open(log_file, "r+b") as f:
            f.truncate(log_size)


def join_submitit_tasks() -> None:
    """A submitit job with several tasks (hydra.launcher.tasks_per_node / nodes) is one multi-process run: export
    the torch.distributed environment from submitit's (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and join
    the process group. Other jobs: nothing."""
    if "SUBMITIT_EXECUTOR" not in os.environ or launched():
        return
    try:
        import submitit

        env = submitit.JobEnvironment()
    except (ImportError, RuntimeError):
        return
    if env.num_tasks <= 1:
        return
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    from textclf.engine.distributed import init_from_env

    init_from_env()
    if env.global_rank != 0:
        for handler in list(logging.getLogger().handlers):  # rank 0 writes the job's log file
            if isinstance(handler, logging.FileHandler):
                logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)


def _run_as_follower(fn, cfg: DictConfig) -> float | None:
    """A process of a multi-process run other than rank 0: it trains its share; rank 0 holds the lock, writes
    status.json and reports errors (this one exits with the same status, quietly)."""
    try:
        with own_errors():
            return fn(cfg)
    except TextclfError:
        sys.exit(2)
    except KeyboardInterrupt as e:
        raise SystemExit(e.exit_code if isinstance(e, Interrupted) else 130) from None


def _run_locked(fn, cfg: DictConfig, hc, run_dir: Path, base: dict, multirun: bool) -> float | None:
    # a finished run that overwrite=true does not replace is only read: refused, or found finished (its score
    # returned); its status.json stays as it is
    kept = (run_dir / folder.MANIFEST).exists() and not cfg.overwrite

    def record(status: dict) -> None:
        if not kept:
            write_status(run_dir, status)

    started = time.time()
    record({"status": "running", **base, "started": _iso(started), "pid": os.getpid()})
    failure = None
    try:
        with own_errors():
            score = fn(cfg)
    except KeyboardInterrupt as e:  # engine.interrupt: the run stopped at a safe point (or at once, a 2nd time)
        stop = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT, saved="stopped at once, without a "
                                                                                    "new checkpoint")
        command = resume_command(list(hc.overrides.task), run_dir)  # the launch as it was (torchrun too)
        record({"status": "interrupted", **base, "started": _iso(started), "finished": _iso(),
                "wall_s": time.time() - started, "signal": stop.name, "error": stop.describe(), "resume": command})
        line = f"{stop.describe()}; resume with: {command}"
        log_to_files(line)
        job = f"job {base['job']} " if multirun else ""
        print(f"textclf: {job}{line}" + ("; the sweep stops" if multirun else ""), file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    except Exception as e:  # noqa: BLE001 - any failure of one job is recorded; a sweep goes on
        own = isinstance(e, TextclfError) or file_fault(e) is not None  # one line, no traceback
        failure = {"status": "failed", **base, "metric": _configured_monitor(cfg), "started": _iso(started),
                   "finished": _iso(), "wall_s": time.time() - started, "error": error_message(e),
                   "error_type": type(e).__name__,
                   "traceback": None if own else "".join(traceback.format_exception(e))}
        record(failure)
        if kept and multirun:  # refused to touch the finished run: Hydra's files for this job go too
            put_back_hydra_record(run_dir)
        if not multirun:
            if own:
                log_to_files(f"error: {failure['error']}")
                print(f"textclf: error: {failure['error']}", file=sys.stderr)
                sys.exit(2)
            raise
        if not kept:
            log_to_files(f"job failed: {failure['error']}" + (f"\n{failure['traceback']}" if failure["traceback"] else ""))
    if failure is not None:  # outside the except block: the traceback's frames (a model, its tensors) are gone
        from textclf.engine.kfold import free_memory

        free_memory()
        where = ("not recorded: the finished run in the folder is kept" if kept
                 else f"recorded in {run_dir / folder.STATUS}")
        print(f"textclf: job {base['job']} failed: {failure['error'].splitlines()[0]}\n  {where}; the sweep goes on",
              file=sys.stderr)
        return None

    from textclf.data.metrics import direction_of

    metrics = _read_json(run_dir / folder.METRICS) or {}
    monitor = metrics.get("monitor") or _configured_monitor(cfg)
    direction = direction_of(monitor)
    value = float(score) if score is not None else math.nan
    status = {"status": "ok", **base, "score": value, "metric": monitor, "direction": direction,
              "std": (metrics.get("std") or {}).get(monitor), "oof": (metrics.get("oof") or {}).get(monitor),
              "started": _iso(started), "finished": _iso(), "wall_s": time.time() - started}
    wanted = hc.sweeper.get("direction") if multirun else None
    if isinstance(wanted, str) and direction and wanted != direction:
        status["warning"] = (f"hydra.sweeper.direction={wanted} but {monitor} is better when "
                             f"{'higher' if direction == 'maximize' else 'lower'}: set "
                             f"hydra.sweeper.direction={direction}")
        log.warning(status["warning"])
    record(status)
    if not math.isfinite(value):
        log.warning("the score %s is %s: recorded, but returned to the sweeper as no score", monitor, value)
        return None if multirun else value
    return value


def error_message(e: BaseException) -> str:
    if isinstance(e, TextclfError):
        return str(e)
    if file_fault(e) is not None:  # no space, read-only, ...: the files written before are intact
        return (f"{file_fault(e)} (every file written before this one is intact; with the same command the run "
                f"resumes from its last checkpoint)")
    text = f"{type(e).__name__}: {e}".strip()
    if "out of memory" in text.lower() or isinstance(e, MemoryError):
        text += ("\n(out of memory: lower trainer.batch_size or model.max_length, raise trainer.grad_accum_steps, "
                 "or run fewer parallel jobs)")
    return text


def log_to_files(message: str) -> None:
    """Record a message in the run's log file only; the console gets its own line on stderr."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def limit_threads(hc) -> None:
    """Parallel local jobs (hydra/launcher=joblib) share the CPU: give each job its share of the cores."""
    launcher = hc.launcher
    if "joblib" not in str(launcher.get("_target_", "")) or os.environ.get("OMP_NUM_THREADS"):
        return
    cores = os.cpu_count() or 1
    n_jobs = int(launcher.get("n_jobs") or 1)
    n_jobs = cores if n_jobs < 0 else n_jobs
    if n_jobs > 1:
        import torch

        torch.set_num_threads(max(1, cores // n_jobs))


def conditional_params(cfg: DictConfig, trial) -> None:
    """Optuna `custom_search_space`: parameters that exist only for some choices of a group.

    adversarial.epsilon is searched only in trials with adversarial=fgm (or pgd), ema.decay only with
    ema=default; other trials get no such override (it would not compose)."""
    if _chosen(cfg, trial, "adversarial") in ("fgm", "pgd"):
        trial.suggest_float("adversarial.epsilon", 0.1, 2.0, log=True)
    if _chosen(cfg, trial, "ema") == "default":
        trial.suggest_categorical("ema.decay", [0.99, 0.995, 0.999])


def _chosen(cfg: DictConfig, trial, group: str) -> str | None:
    """The trial's own choice of the group, else the one fixed on the command line, else the composed config's."""
    if group in trial.params:
        return str(trial.params[group])
    if group in trial.user_attrs:  # fixed on the command line
        return str(trial.user_attrs[group])
    return chosen(group, cfg)


class RunFolderGuard(Callback):
    """Hydra callback (hydra.callbacks in train.yaml): before Hydra writes .hydra/ and train.log into a single
    run's folder, take the folder's lock (a second process is refused before it touches the holder's files), and
    when the folder holds a finished run that overwrite=true does not replace, have Hydra write nothing there:
    that run is then refused or found finished, and every file of it stays as it was. A multirun's job folders
    are locked by run_job (Hydra has written its .hydra/ by then). validate and info neither lock nor write."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.job.name != "train" or not is_main():  # a multi-process run: rank 0 locks for all
            return
        run_dir = Path(os.path.abspath(str(config.hydra.run.dir)))  # as Hydra's run_job makes it
        try:
            folder.lock(run_dir)  # the process's one acquisition; run_job releases it (or interpreter exit)
            # before Hydra writes: a folder holding the user's files is refused untouched
            folder.adopt(run_dir, overwrite=bool(config.overwrite))
        except TextclfError as e:
            folder.release(run_dir)
            print(f"textclf: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        if (run_dir / folder.MANIFEST).exists() and not config.overwrite:
            write_nothing_into(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.job.name == "train":
            remember_job_folders(Path(os.path.abspath(str(config.hydra.sweep.dir))))


def write_nothing_into(config: DictConfig) -> None:
    """No .hydra/ folder and no log file for this run (its log goes to the console only)."""
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.output_subdir = None
        logging_cfg = config.hydra.job_logging
        handlers = logging_cfg.get("handlers") or {}
        to_file = [name for name, h in handlers.items() if h is not None and "filename" in h]
        for name in to_file:
            del handlers[name]
        for node in [logging_cfg.get("root"), *(logging_cfg.get("loggers") or {}).values()]:
            if node is not None and node.get("handlers") is not None:
                node.handlers = [h for h in node.handlers if h not in to_file]


class SweepReport(Callback):
    """Hydra callback (hydra.callbacks in train.yaml): after a multirun, print and write its report."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        from textclf.commands.report import collect, print_report, write_report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        jobs = collect(sweep_dir)
        if not jobs:
            return
        write_report(sweep_dir, jobs)
        print_report(sweep_dir, jobs)
        if not any(j.status == "ok" for j in jobs):
            print(f"textclf: error: every job of the sweep failed (status.json in each job folder of {sweep_dir})",
                  file=sys.stderr)
            raise SystemExit(1)


def _configured_monitor(cfg: DictConfig) -> str | None:
    try:
        monitor = str(cfg.trainer.monitor)
    except Exception:  # noqa: BLE001
        return None
    return None if monitor == "auto" else monitor


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, tz=timezone.utc).astimezone().isoformat(
        timespec="seconds")
