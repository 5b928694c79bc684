"""Ctrl-C (SIGINT) and SIGTERM during `textclf train`: finish the optimizer step or evaluation in progress, save
the fold's checkpoint there, and stop with `Interrupted`; `textclf train` then prints how to resume and exits 130
(SIGINT) or 143 (SIGTERM). A second signal stops at once, without a new checkpoint (the last one still resumes).

The handlers are installed only in the main thread of the process that trains (signal handlers cannot be
installed elsewhere), for the run's duration; the previous handlers come back afterwards.
"""
from __future__ import annotations

import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run stopped for a signal. where: "at fold 0, step 7" / "after fold 1"; saved: what resumes it."""

    def __init__(self, signum: int, where: str = "", saved: str = "", at_once: bool = False):
        self.signum, self.where, self.saved, self.at_once = int(signum), where, saved, at_once
        super().__init__(self.describe())

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def describe(self) -> str:
        if self.at_once:
            return f"interrupted again ({self.name}): stopped at once, without a new checkpoint"
        head = f"interrupted ({self.name})" + (f" {self.where}" if self.where else "")
        return "; ".join(part for part in (head, self.saved) if part)


class StopSignals:
    """A context: SIGINT and SIGTERM only ask the run to stop (`requested`); the run stops at its next safe point.
    Outside the main thread it installs nothing and never asks."""

    def __init__(self):
        self.requested: int | None = None
        self.previous: dict = {}
        self.pid = os.getpid()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:  # a forked data-loader worker: its parent decides
            return
        if self.requested is not None:
            raise Interrupted(signum, at_once=True)
        self.requested = signum

    def check(self, where: str, saved: str) -> None:
        """At a safe point (after what resumes the run is on disk): stop if a signal asked to."""
        if self.requested is not None:
            raise Interrupted(self.requested, where, saved)
