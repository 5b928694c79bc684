"""Splits and the fold loop: a fresh model, optimizer and hooks per fold; out-of-fold and test predictions.

The config check imports this module for the signatures of the splitters (the kfold options' `_target_`s), before
it refuses or accepts a config: sklearn, iterstrat and pandas (with the data tables) are imported in the functions
that split or read tables, so that a refused config does not wait for them.
"""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from textclf.errors import TextclfError
from textclf.run.checkpoint import FoldResult
from textclf.run.folder import FOLDS

log = logging.getLogger(__name__)


@dataclass
class Fold:
    index: int
    train_rows: np.ndarray
    valid_rows: np.ndarray
    repeat: int = 0


class Holdout:
    """One fold. With a validation file it is used as is; otherwise a stratified `holdout` fraction."""

    name = "none"
    needs_groups = False
    multi_hot = False
    n_splits = repeats = 1

    def __init__(self, holdout: float = 0.2, seed: int = 42, folds: list[int] | None = None):
        if not 0.0 < float(holdout) < 1.0:
            raise TextclfError(f"kfold.holdout must be between 0 and 1 (exclusive), got {holdout}")
        if folds is not None and list(folds) != [0]:
            raise TextclfError(f"kfold.folds={list(folds)}: kfold=none has one fold, 0; use kfold.folds=[0] or null")
        self.holdout, self.seed = float(holdout), int(seed)

    def fold_indices(self) -> list[int]:
        return [0]

    def select(self, folds: list[Fold]) -> list[Fold]:
        return folds

    def check(self, y: np.ndarray, names: list[str]) -> None:
        counts = np.bincount(y, minlength=len(names))
        small = [f"{names[c]!r} ({counts[c]})" for c in range(len(names)) if counts[c] < 2]
        if small:
            raise TextclfError(f"data.train_file: class(es) {', '.join(small)} have fewer than 2 rows, too few to "
                               f"hold any out for validation; add rows or give data.valid_file")

    def split(self, strat: np.ndarray | None, n: int, n_valid_file_rows: int = 0, **_) -> list[Fold]:
        """strat: what to stratify on (class ids, regression bins), or None for a plain shuffled split."""
        if n_valid_file_rows:
            return [Fold(0, np.arange(n), np.arange(n, n + n_valid_file_rows))]
        # here, not at the top: config checks import this module for its splitters' signatures
        from sklearn.model_selection import train_test_split

        n_test = max(int(round(n * self.holdout)), len(np.unique(strat)) if strat is not None else 1)
        train_rows, valid_rows = train_test_split(np.arange(n), test_size=n_test, random_state=self.seed,
                                                  stratify=strat)
        return [Fold(0, np.sort(train_rows), np.sort(valid_rows))]


class KFoldSplit:
    """k folds, optionally repeated: repeat r, fold j is fold index r * n_splits + j (folds.csv, fold_<k>/).

    Every repeat splits anew (seed + r), so each training row is validated once per repeat and its
    out-of-fold prediction is the mean over repeats. `folds` picks a subset of fold indices to run.
    """

    name = "kfold"
    needs_groups = False  # group splitters read data.group_col
    multi_hot = False  # multilabel_stratified stratifies on a 0/1 label matrix instead of one key per row

    def __init__(self, n_splits: int = 5, shuffle: bool = True, seed: int = 42, folds: list[int] | None = None,
                 repeats: int = 1):
        if int(n_splits) < 2:
            raise TextclfError(f"kfold.n_splits must be at least 2, got {n_splits}")
        if int(repeats) < 1:
            raise TextclfError(f"kfold.repeats must be at least 1, got {repeats}")
        if int(repeats) > 1 and not shuffle:
            raise TextclfError(f"kfold.repeats={repeats} needs kfold.shuffle=true (unshuffled repeats are identical)")
        self.n_splits, self.shuffle, self.seed, self.repeats = int(n_splits), bool(shuffle), int(seed), int(repeats)
        self.folds = None if folds is None else [int(f) for f in folds]
        bad = [f for f in (self.folds or []) if not 0 <= f < self.n_folds]
        if bad:
            more = f" x kfold.repeats={self.repeats}" if self.repeats > 1 else ""
            raise TextclfError(f"kfold.folds={self.folds}: fold(s) {bad} do not exist with "
                               f"n_splits={self.n_splits}{more} (folds 0 to {self.n_folds - 1})")

    @property
    def n_folds(self) -> int:
        return self.n_splits * self.repeats

    def fold_indices(self) -> list[int]:
        return list(range(self.n_folds))

    def check(self, y: np.ndarray, names: list[str]) -> None:
        """Binary/multiclass labels before splitting (nothing to check for plain or group folds)."""

    def select(self, folds: list[Fold]) -> list[Fold]:
        return [f for f in folds if self.folds is None or f.index in self.folds]

    def split(self, strat: np.ndarray | None, n: int, n_valid_file_rows: int = 0, *,
              groups: np.ndarray | None = None) -> list[Fold]:
        """strat: what to stratify on (class ids, regression bins, a 0/1 matrix for multi_hot splitters) or
        None; groups: one group id per row for group splitters. Returns the folds to run."""
        if n_valid_file_rows:
            raise TextclfError("data.valid_file is used only with kfold=none; with k-fold every fold validates on "
                               "its own part of data.train_file (drop data.valid_file, or use kfold=none)")
        if self.needs_groups and groups is None:
            raise TextclfError(f"kfold={self.name} needs data.group_col: the column whose rows must stay in one fold")
        folds = []
        for r in range(self.repeats):
            seed = self.seed + r if self.shuffle else None
            for j, (train_rows, valid_rows) in enumerate(self._splits(strat, n, groups, seed)):
                folds.append(Fold(r * self.n_splits + j, np.sort(train_rows), np.sort(valid_rows), repeat=r))
        self.all_folds = folds  # every fold, also those not run: folds.csv records them all
        return self.select(folds)

    def _splits(self, strat, n: int, groups, seed):
        # here, not at the top: config checks import this module for its splitters' signatures
        from sklearn.model_selection import KFold

        return KFold(self.n_splits, shuffle=self.shuffle, random_state=seed).split(np.zeros(n))


def check_class_counts(y: np.ndarray, names: list[str], n_splits: int) -> None:
    counts = np.bincount(y, minlength=len(names))
    small = [f"{names[c]!r} ({counts[c]} rows)" for c in range(len(names)) if counts[c] < n_splits]
    if small:
        raise TextclfError(f"data.train_file: class(es) {', '.join(small)} have fewer rows than "
                           f"kfold.n_splits={n_splits}; lower n_splits or add rows")


class StratifiedKFoldSplit(KFoldSplit):
    """sklearn's StratifiedKFold (class ids, or quantile bins for regression); multilabel: plain KFold."""

    name = "stratified"

    def check(self, y: np.ndarray, names: list[str]) -> None:
        check_class_counts(y, names, self.n_splits)

    def _splits(self, strat, n: int, groups, seed):
        # here, not at the top: config checks import this module for its splitters' signatures
        from sklearn.model_selection import KFold, StratifiedKFold

        if strat is None:
            if seed == self.seed or seed is None:  # once per run, not per repeat
                log.info("kfold=stratified: nothing to stratify on for this task; using shuffled KFold "
                         "(kfold=multilabel_stratified balances every label)")
            return KFold(self.n_splits, shuffle=self.shuffle, random_state=seed).split(np.zeros(n))
        return StratifiedKFold(self.n_splits, shuffle=self.shuffle, random_state=seed).split(np.zeros(n), strat)


class MultilabelStratifiedKFoldSplit(KFoldSplit):
    """Iterative stratification (Sechidis et al. 2011, the iterative-stratification package): every label's
    positives are spread evenly over the folds, rarest labels first. Single-label tasks stratify on one-hot
    classes (or regression bins), which gives the same balance as kfold=stratified."""

    name = "multilabel_stratified"
    multi_hot = True

    def check(self, y: np.ndarray, names: list[str]) -> None:
        check_class_counts(y, names, self.n_splits)

    def _splits(self, strat, n: int, groups, seed):
        # here, not at the top: config checks import this module for its splitters' signatures
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        if strat is None:
            return super()._splits(strat, n, groups, seed)
        if strat.ndim == 1:  # class ids or bins: one-hot, each class a "label"
            strat = _one_hot(strat)
        return MultilabelStratifiedKFold(n_splits=self.n_splits, shuffle=self.shuffle,
                                         random_state=seed).split(np.zeros(n), strat)


class GroupKFoldSplit(KFoldSplit):
    """sklearn's GroupKFold: rows sharing a data.group_col value are always in the same fold (no author,
    document or patient in both training and validation); folds are balanced by row count."""

    name = "group"
    needs_groups = True

    def _splits(self, strat, n: int, groups, seed):
        # here, not at the top: config checks import this module for its splitters' signatures
        from sklearn.model_selection import GroupKFold

        return GroupKFold(self.n_splits, shuffle=self.shuffle, random_state=seed).split(np.zeros(n), groups=groups)


class StratifiedGroupKFoldSplit(KFoldSplit):
    """sklearn's StratifiedGroupKFold: groups stay whole and the class mix of each fold stays as close to the
    whole table's as whole groups allow; multilabel: plain GroupKFold."""

    name = "stratified_group"
    needs_groups = True

    def _splits(self, strat, n: int, groups, seed):
        # here, not at the top: config checks import this module for its splitters' signatures
        from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

        if strat is None:
            if seed == self.seed or seed is None:
                log.info("kfold=stratified_group: nothing to stratify on for this task; using GroupKFold")
            return GroupKFold(self.n_splits, shuffle=self.shuffle, random_state=seed).split(np.zeros(n),
                                                                                             groups=groups)
        return StratifiedGroupKFold(self.n_splits, shuffle=self.shuffle, random_state=seed).split(
            np.zeros(n), strat, groups)


# ----------------------------------------------------------------------------- the run's folds
def make_folds(splitter, labels, y: np.ndarray, n_valid_file_rows: int = 0, *, data_cfg=None,
               run_dir: Path | None = None, rows: np.ndarray | None = None) -> tuple[list[Fold], "pd.DataFrame"]:
    """The folds to run and the folds.csv table: split anew, or reuse run_dir/folds.csv when it exists
    (a rerun into the same folder compares on identical splits). Checked before any model loads.

    rows: the training rows' data row numbers in data.train_file when data.exclude_rows left some out (None: every
    row, 0 to len(y) - 1); folds.csv gives those numbers, and the groups are those rows' groups."""
    n = len(y)
    strat = labels.stratify_key(y)
    if splitter.multi_hot and labels.task == "multilabel":
        strat = y.astype(np.int64)
        warn_rare_labels(y, labels.names, splitter.n_splits)
    if not n_valid_file_rows and labels.task in ("binary", "multiclass"):
        splitter.check(y, labels.names)
    groups = None
    group_col = data_cfg.group_col if data_cfg is not None else None
    if splitter.needs_groups:
        groups = read_groups(data_cfg, n, splitter, rows=rows)
    elif group_col:
        log.warning("data.group_col=%s is used only by kfold=group and kfold=stratified_group; this run splits "
                    "without groups", group_col)

    existing = Path(run_dir) / FOLDS if run_dir is not None else None
    if existing is not None and existing.exists() and not n_valid_file_rows:
        all_folds = read_folds_csv(existing, n, splitter, numbers=rows)
        folds = splitter.select(all_folds)
        if groups is not None:
            check_groups_whole(all_folds, groups, existing)
        log.info("reusing %s (%d rows, %d folds): this run validates on the same splits as the run that wrote it",
                 existing, n, len(all_folds))
        return folds, folds_table(all_folds, n, rows)
    folds = splitter.split(strat, n, n_valid_file_rows, groups=groups)
    return folds, folds_table(getattr(splitter, "all_folds", folds), n, rows)


def _one_hot(keys: np.ndarray) -> np.ndarray:
    out = np.zeros((len(keys), int(keys.max()) + 1), dtype=np.int64)
    out[np.arange(len(keys)), keys] = 1
    return out


def warn_rare_labels(y: np.ndarray, names: list[str], n_splits: int) -> None:
    counts = y.sum(axis=0).astype(np.int64)
    rare = [f"{names[k]!r} ({counts[k]})" for k in range(len(names)) if counts[k] < n_splits]
    if rare:
        log.warning("label(s) %s have fewer positive rows than kfold.n_splits=%d: some folds validate without them",
                    ", ".join(rare), n_splits)


def read_groups(data_cfg, n: int, splitter=None, rows: np.ndarray | None = None) -> np.ndarray:
    """data.group_col of the training table as integer group ids (one per row, in file order); rows: only those
    data rows (the ones data.exclude_rows left)."""
    # here, not at the top: config checks import this module for its splitters' signatures
    import pandas as pd

    from textclf.data.tables import read_table

    kind = f"kfold={splitter.name if splitter is not None else 'group'}"
    col = data_cfg.group_col if data_cfg is not None else None
    if not col or not isinstance(col, str):
        raise TextclfError(f"{kind} needs data.group_col: the column whose rows must stay in one fold "
                           f"(e.g. data.group_col=author), got {col!r}")
    path = data_cfg.train_file
    frame = read_table(path, role="data.train_file", encoding=data_cfg.encoding,
                       encoding_errors=data_cfg.encoding_errors, text_cols=(col,))
    where = f"data.train_file {path!r}"
    if col not in frame.columns:
        raise TextclfError(f"{where}: no column data.group_col={col!r}; its columns are: "
                           f"{', '.join(str(c) for c in frame.columns)}")
    numbers = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    if (len(frame) != n) if rows is None else (len(numbers) != n or int(numbers.max(initial=-1)) >= len(frame)):
        raise TextclfError(f"{where}: read {len(frame)} rows for data.group_col but {n} for the texts")
    values = frame[col].iloc[numbers].reset_index(drop=True)
    missing = numbers[values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()]
    if len(missing):
        shown = ", ".join(str(i + 1) for i in missing[:10]) + (" …" if len(missing) > 10 else "")
        raise TextclfError(f"{where}: column data.group_col={col!r} has {len(missing)} empty cell(s), at data "
                           f"row(s) {shown}; every row needs a group")
    groups = pd.factorize(values.astype(str).str.strip())[0].astype(np.int64)
    n_groups = int(groups.max()) + 1
    n_splits = splitter.n_splits if splitter is not None else 2
    if n_groups < n_splits:
        raise TextclfError(f"{where}: column data.group_col={col!r} has {n_groups} distinct group(s), fewer than "
                           f"kfold.n_splits={n_splits}; lower n_splits or check the column")
    log.info("%s: %d groups in column %r (largest %d rows)", kind, n_groups, col, int(np.bincount(groups).max()))
    return groups


def folds_table(folds: list[Fold], n_rows: int, rows: np.ndarray | None = None):
    """folds.csv: the fold that validates each training row (-1: training only, as with a holdout), by its data
    row number (rows: those of the rows data.exclude_rows left; None: 0 to n_rows - 1).

    With kfold.repeats > 1 every row appears once per repeat (repeat 0's rows first)."""
    # here, not at the top: config checks import this module for its splitters' signatures
    import pandas as pd

    repeats = sorted({f.repeat for f in folds}) or [0]
    parts = []
    for r in repeats:
        fold_of = np.full(n_rows, -1, dtype=np.int64)
        for f in folds:
            if f.repeat == r:
                fold_of[f.valid_rows[f.valid_rows < n_rows]] = f.index
        parts.append(pd.DataFrame({"row": np.arange(n_rows) if rows is None else rows, "fold": fold_of}))
    return pd.concat(parts, ignore_index=True)


def read_folds_csv(path: Path, n: int, splitter, numbers: np.ndarray | None = None) -> list[Fold]:
    """Every fold of an existing folds.csv, checked against the data's row count and the configured folds;
    numbers: the data row numbers of the training rows when data.exclude_rows left some out (folds.csv names
    those)."""
    # here, not at the top: config checks import this module for its splitters' signatures
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except Exception as e:  # noqa: BLE001 - any parse error is the file's fault
        raise TextclfError(f"{path}: could not be read ({str(e).strip().splitlines()[0]}); delete it to split "
                           f"anew") from None
    if not {"row", "fold"} <= set(table.columns):
        raise TextclfError(f"{path}: needs columns row and fold, has {', '.join(map(str, table.columns))}; "
                           f"delete it to split anew")
    rows, fold = table["row"].to_numpy(), table["fold"].to_numpy()
    if not (np.issubdtype(rows.dtype, np.integer) and np.issubdtype(fold.dtype, np.integer)):
        raise TextclfError(f"{path}: row and fold must be whole numbers; delete it to split anew")
    if numbers is not None and len(numbers):  # data row numbers -> positions among the rows left
        pos = np.searchsorted(numbers, rows)
        known = (pos < len(numbers)) & (numbers[np.minimum(pos, len(numbers) - 1)] == rows)
        if not known.all() or len(np.unique(rows)) != n:
            raise TextclfError(f"{path} describes other training rows than the {n} that data.exclude_rows leaves "
                               f"of data.train_file: it was written for other data; delete it (or use another run "
                               f"folder) to split anew")
        rows = pos
    n_in_file = int(rows.max()) + 1 if len(rows) else 0
    if n_in_file != n or rows.min() < 0:
        raise TextclfError(f"{path} describes {n_in_file} training rows but data.train_file has {n}: it was "
                           f"written for other data; delete it (or use another run folder) to split anew")
    indices = sorted(int(f) for f in np.unique(fold) if f >= 0)
    expected = splitter.fold_indices()
    counts = np.bincount(rows, minlength=n)
    if indices != expected or not (counts == splitter.repeats).all():
        raise TextclfError(f"{path} holds folds {_ranges(indices)}, but the configuration makes folds "
                           f"{_ranges(expected)}: it was written by another kfold setting; delete it to "
                           f"split anew, or run with the kfold options that wrote it")
    all_rows = np.arange(n)
    out = []
    for f in indices:
        valid = np.sort(rows[fold == f])
        out.append(Fold(f, np.setdiff1d(all_rows, valid), valid, repeat=f // splitter.n_splits))
    return out


def check_groups_whole(folds: list[Fold], groups: np.ndarray, path: Path) -> None:
    for f in folds:
        split = np.intersect1d(groups[f.train_rows], groups[f.valid_rows])
        if len(split):
            raise TextclfError(f"{path}: fold {f.index} has group(s) on both sides (data.group_col); it was not "
                               f"written by a group split of this data; delete it to split anew")


def _ranges(indices: list[int]) -> str:
    if not indices:
        return "none"
    return f"{indices[0]}-{indices[-1]}" if indices == list(range(indices[0], indices[-1] + 1)) and len(indices) > 2 \
        else ", ".join(map(str, indices))


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class FoldOutputs:
    """Out-of-fold outputs summed over the folds as they finish, averaged at the end: a row validated by
    several folds (kfold.repeats) gets their mean."""

    def __init__(self, n_rows: int, n_cols: int):
        self.oof_sum = np.zeros((n_rows, n_cols), dtype=np.float64)
        self.oof_count = np.zeros(n_rows, dtype=np.int64)
        self.folds: list[FoldResult] = []

    def add(self, fold: FoldResult) -> None:
        self.oof_sum[fold.oof_rows] += fold.oof
        self.oof_count[fold.oof_rows] += 1
        self.folds.append(fold)

    def oof(self) -> tuple[np.ndarray, np.ndarray]:
        """(scored, outputs): which rows some fold validated, and their mean outputs."""
        scored = self.oof_count > 0
        return scored, self.oof_sum[scored] / self.oof_count[scored, None]
