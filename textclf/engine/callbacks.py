"""Run events and the listeners that receive them (loggers, progress writers).

The run recipe (textclf.commands.train) and the fold loop (textclf.engine.trainer) emit events; every callback gets
each of them, in this order per run:

  on_run_start(run)                         once, after the data and folds are known
    on_fold_start(fold, start_step)         per fold trained (start_step > 0: resumed from a checkpoint)
      on_step(fold, row)                    every trainer.log_every_steps optimizer steps
      on_evaluate(fold, row)                every evaluation (each epoch's end, every trainer.eval_every_steps)
      on_best(fold, row)                    after on_evaluate when that evaluation is the fold's new best
      on_checkpoint(fold, step)             after a resumable checkpoint is written
    on_fold_end(fold, result)               the fold's best metrics (also for folds kept from an earlier run)
  on_run_end(summary)                       metrics.json's content, after every output and plot is written
  close(status)                             always, last: "ok", "failed" or "interrupted"

Rows are flat dicts of numbers:
  step row:     step (optimizer step, 1-based), epoch (1-based), loss (mean training loss since the last step
                row), lr, grad_norm (before clipping; None without clipping), samples_per_s
  evaluate row: step, epoch (fractional for a mid-epoch evaluation), train_loss, then every metric of the task
                (loss, macro_f1, ...)

Only the main process of a run receives events (`is_main`): callbacks never check ranks themselves.

Callbacks observe; they never change training (what changes a step is a hook: textclf.engine.hooks). The fold's
best weights are kept by the recipe itself, from the Evaluation events that Trainer.fit yields.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable


def is_main() -> bool:
    """The one decision of which process writes files and logs: rank 0 of a distributed run, else this one."""
    return rank() == 0


# which process this is, from the launcher's environment (torchrun and submitit's TorchDistributedEnvironment
# export it); here rather than in engine.distributed so that reading it imports no torch
def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def launched() -> bool:
    """True in a process started by a distributed launcher for a run of more than one process."""
    return world_size() > 1


@dataclass
class RunContext:
    run_dir: Path
    config: dict  # the resolved config as plain containers
    task: str
    monitor: str
    n_folds: int
    classes: list[str] = field(default_factory=list)
    #: in a Hydra multirun: {"dir": sweep folder, "job": job number, "overrides": [...]}; None for a single run
    sweep: dict | None = None


class Callback:
    def on_run_start(self, run: RunContext) -> None: ...
    def on_fold_start(self, fold: int, start_step: int) -> None: ...
    def on_step(self, fold: int, row: dict) -> None: ...
    def on_evaluate(self, fold: int, row: dict) -> None: ...
    def on_best(self, fold: int, row: dict) -> None: ...
    def on_checkpoint(self, fold: int, step: int) -> None: ...
    def on_fold_end(self, fold: int, result: dict) -> None: ...
    def on_run_end(self, summary: dict) -> None: ...
    def close(self, status: str) -> None: ...


class Callbacks(Callback):
    """Fans each event out to every callback, in order."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)

    def _each(self, name: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, name)(*args)

    def on_run_start(self, run): self._each("on_run_start", run)
    def on_fold_start(self, fold, start_step): self._each("on_fold_start", fold, start_step)
    def on_step(self, fold, row): self._each("on_step", fold, row)
    def on_evaluate(self, fold, row): self._each("on_evaluate", fold, row)
    def on_best(self, fold, row): self._each("on_best", fold, row)
    def on_checkpoint(self, fold, step): self._each("on_checkpoint", fold, step)
    def on_fold_end(self, fold, result): self._each("on_fold_end", fold, result)
    def on_run_end(self, summary): self._each("on_run_end", summary)

    def close(self, status):
        errors = []
        for cb in self.callbacks:  # every listener gets to close, even when one of them fails
            try:
                cb.close(status)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        if errors:
            raise errors[0]
