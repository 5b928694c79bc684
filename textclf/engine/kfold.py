"""Splits and the fold loop: a fresh model, optimizer and hooks per fold; out-of-fold and test predictions."""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import TextclfError

log = logging.getLogger(__name__)


@dataclass
class Fold:
    index: int
    train_rows: np.ndarray
    valid_rows: np.ndarray


class Holdout:
    """One fold. With a validation file it is used as is; otherwise a stratified `holdout` fraction."""

    def __init__(self, holdout: float = 0.2, seed: int = 42):
        if not 0.0 < float(holdout) < 1.0:
            raise TextclfError(f"kfold.holdout must be between 0 and 1 (exclusive), got {holdout}")
        self.holdout, self.seed = float(holdout), int(seed)

    def check(self, y: np.ndarray, names: list[str]) -> None:
        counts = np.bincount(y, minlength=len(names))
        small = [f"{names[c]!r} ({counts[c]})" for c in range(len(names)) if counts[c] < 2]
        if small:
            raise TextclfError(f"data.train_file: class(es) {', '.join(small)} have fewer than 2 rows, too few to "
                               f"hold any out for validation; add rows or give data.valid_file")

    def split(self, strat: np.ndarray | None, n: int, n_valid_file_rows: int = 0) -> list[Fold]:
        """strat: what to stratify on (class ids, regression bins), or None for a plain shuffled split."""
        if n_valid_file_rows:
            return [Fold(0, np.arange(n), np.arange(n, n + n_valid_file_rows))]
        from sklearn.model_selection import train_test_split

        n_test = max(int(round(n * self.holdout)), len(np.unique(strat)) if strat is not None else 1)
        train_rows, valid_rows = train_test_split(np.arange(n), test_size=n_test, random_state=self.seed,
                                                  stratify=strat)
        return [Fold(0, np.sort(train_rows), np.sort(valid_rows))]


class StratifiedKFoldSplit:
    """sklearn's StratifiedKFold; `folds` picks a subset of fold indices to run."""

    def __init__(self, n_splits: int = 5, shuffle: bool = True, seed: int = 42, folds: list[int] | None = None):
        if int(n_splits) < 2:
            raise TextclfError(f"kfold.n_splits must be at least 2, got {n_splits}")
        self.n_splits, self.shuffle, self.seed = int(n_splits), bool(shuffle), int(seed)
        self.folds = None if folds is None else [int(f) for f in folds]
        bad = [f for f in (self.folds or []) if not 0 <= f < self.n_splits]
        if bad:
            raise TextclfError(f"kfold.folds={self.folds}: fold(s) {bad} do not exist with n_splits={self.n_splits}")

    def check(self, y: np.ndarray, names: list[str]) -> None:
        counts = np.bincount(y, minlength=len(names))
        small = [f"{names[c]!r} ({counts[c]} rows)" for c in range(len(names)) if counts[c] < self.n_splits]
        if small:
            raise TextclfError(f"data.train_file: class(es) {', '.join(small)} have fewer rows than "
                               f"kfold.n_splits={self.n_splits}; lower n_splits or add rows")

    def split(self, strat: np.ndarray | None, n: int, n_valid_file_rows: int = 0) -> list[Fold]:
        """strat: what to stratify on (class ids, regression bins); None (multilabel) falls back to KFold."""
        if n_valid_file_rows:
            raise TextclfError("data.valid_file is used only with kfold=none; with k-fold every fold validates on "
                               "its own part of data.train_file (drop data.valid_file, or use kfold=none)")
        from sklearn.model_selection import KFold, StratifiedKFold

        seed = self.seed if self.shuffle else None
        if strat is None:
            log.info("kfold=stratified: nothing to stratify on for this task; using shuffled KFold")
            splits = KFold(self.n_splits, shuffle=self.shuffle, random_state=seed).split(np.zeros(n))
        else:
            splits = StratifiedKFold(self.n_splits, shuffle=self.shuffle, random_state=seed).split(np.zeros(n), strat)
        folds = [Fold(i, tr, va) for i, (tr, va) in enumerate(splits)]
        self.assignment = np.full(n, -1, dtype=np.int64)  # every row's fold, also of folds not run
        for f in folds:
            self.assignment[f.valid_rows] = f.index
        return [f for f in folds if self.folds is None or f.index in self.folds]


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_folds(folds: list[Fold], fit_fold: Callable[[Fold], dict]) -> list[dict]:
    """Call fit_fold for each fold, freeing memory in between; returns the per-fold results."""
    results = []
    for fold in folds:
        log.info("fold %d: %d training rows, %d validation rows", fold.index, len(fold.train_rows),
                 len(fold.valid_rows))
        results.append(fit_fold(fold))
        free_memory()
    return results
