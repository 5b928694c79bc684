"""One process at a time in a run folder: `<run folder>/.textclf.lock` names its holder (pid, host, start time).

The file is created with O_CREAT | O_EXCL, so of two processes starting into one folder exactly one gets it; the
other is refused with the holder's name. A lock left by a process that was killed (same host, that pid no longer
running, or running but started later: a reused pid) is taken over with a warning. The holder removes it when it
ends, on errors too (and at interpreter exit, whatever path got there). Asked again by the process that holds it,
acquire returns at once; textclf.run.folder decides where a process takes it (once).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from textclf.errors import TextclfError
from textclf.io import file_fault

log = logging.getLogger(__name__)


class RunLock:
    """The lock file `name` in run_dir (textclf.run.folder names it and decides who takes it)."""

    def __init__(self, run_dir: str | os.PathLike, name: str):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / name
        self.created = False  # this object wrote the lock file (and releases it at __exit__)

    def acquire(self) -> "RunLock":
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise TextclfError(f"run folder {str(self.run_dir)!r} is a file, not a folder: train into a folder "
                               f"(hydra.run.dir=<new folder>)")
        for _ in range(5):
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder == "gone":  # released between our attempt and the read: try again
                    continue
                if holder is not None and _same_process(holder, _this_process()):
                    return self  # this process holds it already
                if holder is not None and not _alive(holder):
                    self._take_over(holder)
                    continue
                raise TextclfError(in_use_message(self.run_dir, holder, self.path))
            except OSError as e:
                fault = file_fault(e)
                if fault is None:
                    raise
                raise TextclfError(f"cannot take run folder {self.run_dir}: {fault}") from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({**_this_process(), "started": _now()}, f)
            self.created = True
            atexit.register(self.release)
            return self
        raise TextclfError(f"cannot lock run folder {self.run_dir}: {self.path} keeps changing hands; "
                           f"use another folder (hydra.run.dir=...)")

    def held_here(self) -> bool:
        """This process holds the lock (whichever RunLock object took it)."""
        holder = self._read_holder()
        return isinstance(holder, dict) and _same_process(holder, _this_process())

    def release(self) -> None:
        """Remove the lock file if this process holds it (whichever RunLock object took it)."""
        holder = self._read_holder()
        if isinstance(holder, dict) and _same_process(holder, _this_process()):
            self.path.unlink(missing_ok=True)
        atexit.unregister(self.release)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        if self.created:
            self.release()

    def _read_holder(self):
        """The holder's record; "gone" when there is no lock file; None when it names no holder."""
        for attempt in range(20):  # a holder writes its record just after creating the file: give it a moment
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return "gone"
            except OSError:
                text = ""
            try:
                holder = json.loads(text)
                if isinstance(holder, dict) and isinstance(holder.get("pid"), int):
                    return holder
            except ValueError:
                pass
            time.sleep(0.1)
        return None

    def _take_over(self, holder: dict) -> None:
        """Remove a dead holder's lock. Moved aside first: of several processes taking it over at once only one
        moves that file; one that moved a live holder's fresh lock instead puts it back."""
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            moved = None
        if moved != holder:
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        else:
            log.warning("run folder %s: taking over the lock left by pid %s on host %s (since %s), which is no "
                        "longer running", self.run_dir, holder.get("pid"), holder.get("host"), holder.get("started"))
        aside.unlink(missing_ok=True)


def in_use_message(run_dir: Path, holder: dict | None, path: Path) -> str:
    if holder is None:
        return (f"run folder {run_dir} is locked ({path} names no holder); if no textclf run uses this folder, "
                f"delete that file, or use another folder (hydra.run.dir=...)")
    gone = "" if holder.get("host") == socket.gethostname() else \
        f" (if that process is gone, delete {path})"
    return (f"run folder {run_dir} is in use by pid {holder.get('pid')} on host {holder.get('host')} since "
            f"{holder.get('started')}{gone}; wait for it to finish or use another folder (hydra.run.dir=...)")


def _this_process() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_started": _process_start(os.getpid())}


def _same_process(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("pid", "host", "pid_started"))


def _alive(holder: dict) -> bool:
    """False only when sure: the holder ran on this host and its pid is gone or now names a later process."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = int(holder["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    started = holder.get("pid_started")
    return started is None or _process_start(pid) in (None, started)


def _process_start(pid: int) -> int | None:
    """When a process started, in clock ticks since boot (Linux); tells a reused pid from the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
