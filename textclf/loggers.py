"""Loggers: callbacks (textclf.engine.callbacks) that record a run's events. The `logger` config group
composes them: logger=[csv,tensorboard,mlflow]."""
from __future__ import annotations

import csv
from pathlib import Path

from .engine.callbacks import Callback, RunContext


class CSVLogger(Callback):
    """fold_<k>/steps.csv (one row per logged optimizer step) and fold_<k>/history.csv (one row per evaluation),
    appended as the run goes, so `tail -f` shows a run live. A resumed fold drops the rows logged after its
    checkpoint, so the files equal an uninterrupted run's."""

    FILES = {"on_step": "steps.csv", "on_evaluate": "history.csv"}

    def __init__(self):
        self.run_dir: Path | None = None

    def on_run_start(self, run: RunContext) -> None:
        self.run_dir = Path(run.run_dir)

    def on_fold_start(self, fold: int, start_step: int) -> None:
        for name in self.FILES.values():
            path = self._path(fold, name)
            if start_step == 0:
                path.unlink(missing_ok=True)
            elif path.exists():
                _truncate_after(path, start_step)

    def on_step(self, fold: int, row: dict) -> None:
        self._append(self._path(fold, "steps.csv"), row)

    def on_evaluate(self, fold: int, row: dict) -> None:
        self._append(self._path(fold, "history.csv"), row)

    def _path(self, fold: int, name: str) -> Path:
        folder = self.run_dir / f"fold_{fold}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    @staticmethod
    def _append(path: Path, row: dict) -> None:
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _truncate_after(path: Path, step: int) -> None:
    """Keep the header and the rows with step <= `step`."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    col = rows[0].index("step") if "step" in rows[0] else None
    kept = [rows[0]] + [r for r in rows[1:] if col is None or (r and float(r[col]) <= step)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(kept)
