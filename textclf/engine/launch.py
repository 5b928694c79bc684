"""Starting the processes of a multi-process `textclf train`, and ending them (engine.distributed trains in them).

  torchrun --nproc_per_node=N -m textclf train ...     the launcher starts N processes; each joins here
  textclf train trainer.devices=N ...                  textclf starts N processes itself (this machine), with the
                                                       same command line, and waits for them

Both happen in Processes, a Hydra callback (after the config check, before the run folder is locked): Hydra has
composed the config, and nothing is written yet. trainer.devices (or torchrun's processes per machine) above the
devices present (CPU cores, or visible GPUs for a CUDA trainer.device) is refused there, before any process starts;
`textclf validate` and `textclf info` refuse it too. Every process composes the same config; the run folder is rank
0's (Hydra's ${now:...} in hydra.run.dir would otherwise differ by a second between processes): textclf passes it to
the processes it starts as hydra.run.dir, and every process of a launch takes rank 0's before Hydra makes it.

How a launch ends:
  - every process ends with 0: the run is done
  - Ctrl-C or SIGTERM: the processes textclf started are in a session of their own, so a terminal's Ctrl-C reaches
    only the textclf process, which passes each signal on to every process once; they stop together at the next
    safe point and rank 0 prints how to resume (run.signals)
  - a process fails (killed, an error): the others lose contact with it and end by themselves without a traceback
    (exit status LOST_PEER_EXIT, Processes.on_job_end), or are killed after GRACE_S seconds; textclf names the process
    that failed first by its rank and how it ended (exit code or signal) in one line, with the command that resumes
    the run, and exits with its status (128 + the signal for a signal)

torch is imported inside the functions that need it: Hydra imports every callback's module before the first one
runs, and a config the check refuses should not wait for torch to load.
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import time
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from textclf.engine.callbacks import launched, rank, world_size
from textclf.errors import Refused, TextclfError

log = logging.getLogger(__name__)

#: set in the processes textclf starts for trainer.devices: the pid of the textclf process that started them (it
#: reports their failures, and they end with it)
LAUNCHER_ENV = "TEXTCLF_LAUNCHER_PID"
#: tests: the fault points (TEXTCLF_KILL_AT, TEXTCLF_SIGNAL_AT: run.checkpoint.fault_point) act in the process of this
#: rank only
FAULT_RANK_ENV = "TEXTCLF_FAULT_RANK"
#: the exit status of a process that lost contact with another process of its run (which ended first)
LOST_PEER_EXIT = 75
#: after a process of a launch fails, the seconds the others get to end by themselves before they are killed (a
#: collective that waits for the failed one may never return: NCCL)
GRACE_S = 10.0


class Processes(Callback):
    """Hydra callback (hydra.callbacks in train.yaml) for a single `textclf train` run: with trainer.devices=N, start
    N processes on this machine and end this one with their exit status; in a process a launcher started (torchrun,
    or the processes started here), join the process group and take rank 0's run folder. `validate` and `info` refuse
    what `train` would refuse here, and start nothing."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        job = config.hydra.job.name
        if job not in ("train", "validate", "info"):
            return
        if launched():
            problem = launch_problem(config)
            if problem:
                raise Refused(TextclfError(problem))
            if job == "train":
                join_processes(config)
            return
        wanted = processes_wanted(config)
        if isinstance(wanted, str):
            raise Refused(TextclfError(wanted))
        if wanted > 1 and job == "train":
            # @hydra.main read this command line from sys.argv: the processes get it as it is
            raise SystemExit(start_processes(wanted, sys.argv[1:], run_dir_of(config),
                                             list(config.hydra.overrides.task)))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """In a process of a multi-process run whose training failed because another process ended: one line
        instead of torch.distributed's traceback, and exit status LOST_PEER_EXIT."""
        from hydra.core.utils import JobStatus

        if config.hydra.job.name != "train" or not launched() or job_return.status != JobStatus.FAILED:
            return
        # the task's exception (JobReturn.return_value would print a line and raise it)
        end_if_lost_peer(job_return._return_value, str(config.hydra.runtime.output_dir),
                         list(config.hydra.overrides.task))


def run_dir_of(config: DictConfig) -> str:
    """hydra.run.dir as Hydra is about to make it (${now:...} resolves once per config)."""
    try:
        return str(config.hydra.run.dir)
    except Exception as e:  # noqa: BLE001 - an interpolation only Hydra's own run can resolve
        raise Refused(TextclfError(f"trainer.devices: hydra.run.dir does not resolve before the run starts ({e}); "
                                   f"give it explicitly (hydra.run.dir=<folder>)")) from None


def _quote(path: str) -> str:
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's or a scheduler's share of the machine)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def devices_present(device: str) -> tuple[int, bool]:
    """(how many devices this machine has for processes of trainer.device, whether they are GPUs): the visible GPUs
    for cuda (or auto with a GPU), else the CPU cores."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    on_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    return (gpus, True) if on_gpu else (cpu_cores(), False)


def too_many(n: int, asked: str, present: int, on_gpu: bool, device: str, fewer: str) -> str:
    """The refusal of n processes on this machine for `asked` (trainer.devices=N, torchrun's): each process takes its
    own GPU, or CPU core."""
    if on_gpu and present == 0:
        return f"{asked} with trainer.device={device} but no GPU is visible; use trainer.device=cpu for CPU processes"
    if on_gpu:
        return f"{asked} asks for {n} processes but {present} GPU(s) are visible (one process per GPU); use {fewer}"
    why = ", no GPU visible" if device == "auto" else ""
    return (f"{asked} asks for {n} processes but {present} CPU core(s) are available (trainer.device={device}{why}: "
            f"one process per core); use {fewer}")


def processes_wanted(cfg: DictConfig, multirun: bool = False) -> int | str:
    """How many processes `textclf train` should start itself for trainer.devices (1: none, run here), or the
    message refusing the combination (more processes than devices among them)."""
    if launched():
        return 1  # a launcher (torchrun, submitit) already decided
    devices, device = cfg.trainer.devices, str(cfg.trainer.device)
    present, on_gpu = devices_present(device)
    n = (present if on_gpu else 1) if devices == "auto" else int(devices)
    if n <= 1:
        return 1
    if multirun:
        return (f"trainer.devices={devices} in a multirun: a sweep job runs in one process with the basic launcher; "
                f"for multi-process jobs use launcher=submitit_local or launcher=slurm with "
                f"hydra.launcher.tasks_per_node={n} (README: More than one GPU or machine)")
    if on_gpu and ":" in device:
        return (f"trainer.device={device} with trainer.devices={n}: each process takes its own GPU "
                f"(cuda:LOCAL_RANK); use trainer.device=cuda (or auto)")
    if n > present:
        fewer = (f"trainer.devices={present} (or auto), or trainer.device=cpu for CPU processes" if on_gpu
                 else f"trainer.devices={present} or fewer")
        return too_many(n, f"trainer.devices={devices}", present, on_gpu, device, fewer)
    return n


def launch_problem(cfg: DictConfig) -> str | None:
    """In a process of a launch textclf did not start (torchrun): more processes on this machine than devices (each
    process takes its own GPU, or CPU core), the refusal; every process finds it, before joining the others."""
    if os.environ.get(LAUNCHER_ENV) or not os.environ.get("LOCAL_WORLD_SIZE"):
        return None
    n = int(os.environ["LOCAL_WORLD_SIZE"])
    present, on_gpu = devices_present(str(cfg.trainer.device))
    if n <= present:
        return None
    return too_many(n, f"torchrun --nproc_per_node={n} (LOCAL_WORLD_SIZE={n}, this machine)", present, on_gpu,
                    str(cfg.trainer.device), f"--nproc_per_node={present} or fewer")


# ----------------------------------------------------------------------------- trainer.devices: the processes
def start_processes(n: int, args: list[str], run_dir: str, overrides: list[str] | None = None) -> int:
    """Run `textclf train` with these arguments as n processes on this machine (torch.distributed's environment, as
    torchrun sets it), into run_dir; wait for them and return the launch's exit status (Launch)."""
    import subprocess

    import torch.distributed as dist

    # the processes meet at a store this process keeps (torchrun's agent store): its port is free once it is bound
    store = dist.TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port), WORLD_SIZE=str(n),
               LOCAL_WORLD_SIZE=str(n), GROUP_RANK="0", GROUP_WORLD_SIZE="1", ROLE_NAME="default",
               ROLE_WORLD_SIZE=str(n), TORCHELASTIC_USE_AGENT_STORE="True", **{LAUNCHER_ENV: str(os.getpid())})
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpu_cores() // n)))  # n processes share the cores
    command = [sys.executable, "-m", "textclf", "train", *args, f"hydra.run.dir={_quote(run_dir)}"]
    print(f"textclf: trainer.devices={n}: starting {n} processes (torch.distributed, this machine) into {run_dir}",
          file=sys.stderr)
    procs = []
    try:
        for r in range(n):
            # a session of their own: a terminal's Ctrl-C reaches this process only, which passes it on once
            procs.append(subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r),
                                                        "ROLE_RANK": str(r)}, start_new_session=True))
        return Launch(procs, os.path.abspath(run_dir), overrides or []).wait()
    finally:
        for proc in procs:  # only if this process itself fails: none is left running
            if proc.poll() is None:
                proc.kill()
        del store


class Launch:
    """The processes textclf started for one run: wait for them, pass signals on, stop the rest when one fails, and
    say which failed (see the module's docstring)."""

    def __init__(self, procs: list, run_dir: str, overrides: list[str]):
        self.procs, self.run_dir, self.overrides = procs, run_dir, overrides
        self.ended: dict[int, int] = {}  # rank -> exit status (Popen's: -N for signal N), in the order they ended
        self.killed: set[int] = set()  # ranks killed here after GRACE_S
        self.signals = 0  # Ctrl-C / SIGTERM received (and passed on)
        self.started = time.time() - 1.0  # (file times may be rounded to the second)

    def wait(self) -> int:
        import queue
        import threading

        ended: queue.Queue = queue.Queue()
        for r, proc in enumerate(self.procs):  # one waiter each: they wake in the order the processes end
            threading.Thread(target=lambda r=r, proc=proc: ended.put((r, proc.wait())), daemon=True).start()
        deadline = None
        with self._passing_signals_on():
            while len(self.ended) < len(self.procs):
                try:
                    r, code = ended.get(timeout=0.2)
                except queue.Empty:
                    if deadline is not None and time.monotonic() > deadline:
                        self._kill_the_rest()
                        deadline = None
                    continue
                self.ended[r] = code
                if code not in (0, 130, 143) and deadline is None:  # a failure (a stop ends on its own)
                    deadline = time.monotonic() + GRACE_S
        return self.report()

    def _kill_the_rest(self) -> None:
        for r, proc in enumerate(self.procs):
            if r not in self.ended and proc.poll() is None:
                self.killed.add(r)
                proc.kill()

    def _pass_on(self, signum, frame) -> None:
        self.signals += 1
        for proc in self.procs:  # a first signal stops at the next safe point, a second at once (run.signals)
            if proc.returncode is None:
                proc.send_signal(signum if self.signals < 3 else signal.SIGKILL)

    def _passing_signals_on(self):
        import contextlib
        import threading

        @contextlib.contextmanager
        def passing():
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {s: signal.signal(s, self._pass_on) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler if handler is not None else signal.SIG_DFL)

        return passing()

    def failed_first(self) -> tuple[int, int] | None:
        """(rank, exit status) of the process that failed first: not one that only lost contact with it, nor one
        killed here; None when every process ended with 0."""
        failed = [(r, code) for r, code in self.ended.items() if code != 0]
        for candidates in ([f for f in failed if f[0] not in self.killed and f[1] != LOST_PEER_EXIT],
                           [f for f in failed if f[0] not in self.killed], failed):
            if candidates:
                return candidates[0]
        return None

    def report(self) -> int:
        """Say what ended the launch (unless rank 0 said it: an error, a stop); its exit status."""
        first = self.failed_first()
        if first is None:
            return 0
        if self.ended.get(0) in (2, 130, 143):  # rank 0 printed the error, or how to resume the stopped run
            return self.ended[0]
        if self.signals >= 3:  # killed on a third Ctrl-C: they had no time to say anything
            print(f"textclf: interrupted a third time: the processes were killed; the last checkpoint resumes the "
                  f"run: {resume_command(self.overrides, self.run_dir)}", file=sys.stderr)
            return 130
        what, resume = failure_line(first[0], first[1], len(self.procs)), resume_command(self.overrides, self.run_dir)
        print(f"textclf: error: {what}; resume with: {resume}", file=sys.stderr)
        record_failure(self.run_dir, self.procs[0].pid, self.started, what, resume)
        return 128 - first[1] if first[1] < 0 else first[1]


def failure_line(r: int, code: int, n: int) -> str:
    """Which process failed and how (its exit status as Popen gives it: -N for signal N), and that the others
    stopped."""
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    elif code == LOST_PEER_EXIT:
        how = "lost contact with the others"
    else:
        how = f"failed (exit code {code})"
    others = "the other process stopped" if n == 2 else f"the other {n - 1} processes stopped"
    return f"the process of rank {r} (of {n}) {how}; {others}"


def record_failure(run_dir: str, rank0_pid: int, started: float, error: str, resume: str) -> None:
    """The run's status.json says what failed, where rank 0 could not: it was killed while running, or it lost
    contact with the process that failed (end_if_lost_peer)."""
    from datetime import datetime

    from textclf.run.folder import STATUS, read_status, write_status

    status = read_status(run_dir)
    try:
        this_launch = os.path.getmtime(os.path.join(run_dir, STATUS)) >= started
    except OSError:
        return
    if status is None or not this_launch or not (
            (status.get("status") == "running" and status.get("pid") == rank0_pid)
            or (status.get("status") == "failed" and status.get("error_type") == "LostPeer")):
        return  # rank 0's own record of its own failure, a finished run kept, or none
    write_status(run_dir, {**status, "status": "failed", "error": error, "error_type": "ProcessFailed",
                           "traceback": None, "resume": resume,
                           "finished": datetime.now().astimezone().isoformat(timespec="seconds")})


# ----------------------------------------------------------------------------- in each process of a launch
def join_processes(config: DictConfig) -> None:
    """In one process of a multi-process run: join the process group and take rank 0's run folder; the other ranks
    have Hydra write nothing (no .hydra/, no log file: rank 0 writes) and log warnings only."""
    from textclf.engine import distributed

    die_with_launcher()
    faults_on_own_rank()
    try:
        distributed.init_from_env()
        run_dir = distributed.broadcast(run_dir_of(config) if rank() == 0 else None)
    except Exception as e:  # noqa: BLE001 - another process ended before the run began: one line, no traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise Refused(TextclfError(f"the process of rank {rank()} could not join the other processes of the run "
                                   f"({first})")) from None
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


def die_with_launcher() -> None:
    """A process textclf started (trainer.devices) ends when that textclf process ends, however it ends (Linux)."""
    parent = os.environ.get(LAUNCHER_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # it ended before the line above
        os.kill(os.getpid(), signal.SIGKILL)


def faults_on_own_rank() -> None:
    """Tests: with TEXTCLF_FAULT_RANK=<r>, the fault points (TEXTCLF_KILL_AT, TEXTCLF_SIGNAL_AT) act in the
    process of rank r only."""
    wanted = os.environ.get(FAULT_RANK_ENV)
    if wanted is None or wanted.strip() == str(rank()):
        return
    from textclf.run.checkpoint import KILL_ENV, SIGNAL_ENV

    for name in (KILL_ENV, SIGNAL_ENV):
        os.environ.pop(name, None)


def end_if_lost_peer(error: BaseException, run_dir: str, overrides: list[str]) -> None:
    """The run failed in this process because another process of it ended (a collective lost its peer): end with
    LOST_PEER_EXIT and no traceback. Rank 0 records it in status.json and, in a launch textclf did not start
    (torchrun: the launcher names the process that failed), says it in one line with the command that resumes."""
    from textclf.engine.distributed import lost_peer

    if not lost_peer(error):
        return
    if rank() == 0:
        line = "lost contact with another process of this run (it ended or was killed)"
        from textclf.run.folder import read_status, write_status

        status = read_status(run_dir)
        if status is not None and status.get("status") == "failed":  # as this process recorded it (sweep.run_job)
            write_status(run_dir, {**status, "error": line, "error_type": "LostPeer", "traceback": None})
        if not os.environ.get(LAUNCHER_ENV):
            print(f"textclf: error: rank 0 {line}; its launcher names it; resume with: "
                  f"{resume_command(overrides, run_dir)}", file=sys.stderr)
    raise SystemExit(LOST_PEER_EXIT)


# ----------------------------------------------------------------------------- how to resume
def resume_command(overrides: list[str], run_dir) -> str:
    """The command that resumes a run in run_dir: the launch as it was, with the run's own overrides (a resume needs
    the same settings; trainer.devices=N among them) and resume=<run_dir>. In a process torchrun started, torchrun
    with the same processes per machine (and machines); else `textclf train`."""
    own = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("resume", "overwrite")]
    return " ".join([*launch_words(), *map(shlex.quote, own), shlex.quote(f"resume={run_dir}")])


def launch_words() -> list[str]:
    """How this process's run was started, as the first words of a command line."""
    if not launched() or os.environ.get(LAUNCHER_ENV) or "SUBMITIT_EXECUTOR" in os.environ:
        return ["textclf", "train"]  # one process, or trainer.devices=N (in the overrides)
    world = world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or world)
    nodes = -(-world // max(local, 1))
    module = ["-m", "textclf", "train"]
    if nodes <= 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={local}", *module]
    return ["torchrun", f"--nnodes={nodes}", f"--node_rank={os.environ.get('GROUP_RANK', '0')}",
            f"--nproc_per_node={local}", f"--master_addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}",
            f"--master_port={os.environ.get('MASTER_PORT', '29500')}", *module]
