"""data.exclude_rows: training rows left out of a run by their data row numbers.

The loop it serves is two commands: a run lists its likely label errors (a table with a `row` column), the user
looks at them, and trains again with data.exclude_rows=<that table>. Row numbers are 0-based data rows of
data.train_file as read (the first row after the header is 0): the numbering of a run's out-of-fold table, which
keeps the original numbers of the rows left, so a second round's list refers to the same rows.

The file: a CSV (or, by its suffix, TSV) with a `row` column (other columns are ignored), or any other file with
one row number per line (an optional first line `row`). Duplicates are fine. Rows are left out of the training
file only, before the folds are made; the validation and test files are never touched.
"""
from __future__ import annotations

import csv
import logging
import re
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from textclf.data.tables import Split, resolve_path
from textclf.errors import TextclfError

log = logging.getLogger(__name__)

KEY = "data.exclude_rows"
TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t"}
_WHOLE = re.compile(r"\+?\d+")
_SHOWN = 5  # bad values or rows named in a message


def exclude_path(data_cfg) -> str | None:
    """data.exclude_rows, or None; a run folder's config.yaml written before the key existed (textclf merge reads
    one) has no such key, which means the same."""
    value = data_cfg.exclude_rows if "exclude_rows" in data_cfg else None
    return None if value is None or str(value).strip() == "" else str(value)


def read_row_numbers(path: str) -> np.ndarray:
    """The distinct row numbers the file lists, ascending; each fault is one message naming the file."""
    p = resolve_path(path)
    where = f"{KEY} {path!r}"
    if not p.exists():
        raise TextclfError(f"{where} does not exist (looked at {p}); give the CSV of rows to leave out (a `row` "
                           f"column, as a run's label issues table has) or set {KEY}=null")
    if p.is_dir():
        raise TextclfError(f"{where} is a folder, not a file: give the CSV file in it that lists the rows (a `row` "
                           f"column)")
    try:
        with p.open(encoding="utf-8-sig", errors="replace", newline="") as f:
            sep = TABLE_SEPARATORS.get(p.suffix.lower())
            values = _table_values(f, sep, where) if sep else _list_values(f, where)
    except OSError as e:
        raise TextclfError(f"{where} could not be read: {e.strerror or e}") from None
    bad = [(cell, place) for cell, place in values if _row_number(cell) is None]
    if bad:
        shown = ", ".join(f"{cell!r} ({place})" for cell, place in bad[:_SHOWN]) + (" …" if len(bad) > _SHOWN else "")
        raise TextclfError(f"{where}: {len(bad)} value(s) are not row numbers (whole numbers 0 or more, the 0-based "
                           f"data rows of data.train_file): {shown}; fix or remove them")
    return np.unique(np.asarray([_row_number(cell) for cell, _ in values], dtype=np.int64))


def _table_values(f, sep: str, where: str) -> list[tuple[str, str]]:
    reader = csv.reader(f, delimiter=sep)
    header = next(reader, None)
    if header is None:
        return []
    names = [h.strip() for h in header]
    col = next((i for i, h in enumerate(names) if h == "row"), None)
    if col is None:
        col = next((i for i, h in enumerate(names) if h.casefold() == "row"), None)
    if col is None:
        other = "\t" if sep == "," else ","
        hint = ""
        if len(names) == 1 and _row_number(names[0]) is not None:
            hint = " (its first line is a row number, not a header: add a first line `row`)"
        elif len(names) == 1 and other in names[0]:
            hint = f" (one column only: it seems separated by {'tabs' if other == chr(9) else 'commas'}: name it " \
                   f"{'.tsv' if other == chr(9) else '.csv'})"
        raise TextclfError(f"{where} has no column 'row'; its columns are: {', '.join(repr(n) for n in names)}"
                           f"{hint}. Give a table with a `row` column (the 0-based data rows of data.train_file), or "
                           f"a text file with one row number per line")
    out = []
    for i, record in enumerate(reader, start=1):
        if not any(cell.strip() for cell in record):
            continue  # a blank line
        out.append((record[col].strip() if col < len(record) else "", f"data row {i}"))
    return out


def _list_values(f, where: str) -> list[tuple[str, str]]:
    out = []
    for i, line in enumerate(f, start=1):
        cell = line.strip()
        if not cell or (not out and cell.casefold() == "row"):
            continue  # blank lines; a header line `row`
        if not out and ("," in cell or "\t" in cell) and _row_number(cell) is None:
            raise TextclfError(f"{where}: its first line {cell[:60]!r} looks like a table's header; name the file .csv "
                               f"(or .tsv) to read its `row` column, or list one row number per line")
        out.append((cell, f"line {i}"))
    return out


def _row_number(cell: str) -> int | None:
    """A whole number 0 or more ('12', '+12', and '12.0' as a spreadsheet may write it); otherwise None."""
    if _WHOLE.fullmatch(cell):
        return int(cell)
    try:
        value = float(cell)
    except ValueError:
        return None
    return int(value) if value.is_integer() and value >= 0 else None


def exclude_rows(split: Split, y: np.ndarray, path: str, labels) -> tuple[Split, np.ndarray]:
    """The training split and its encoded labels without the rows the file lists (Split.rows keeps the others'
    original numbers, Split.excluded the rows left out). Refused: rows beyond the table, every row, and a class (a
    multilabel label) left with no rows."""
    excluded = read_row_numbers(path)
    n = len(split)
    where = f"{KEY} {path!r}"
    train = f"data.train_file {split.source!r}"
    beyond = excluded[excluded >= n]
    if len(beyond):
        shown = ", ".join(map(str, beyond[:_SHOWN])) + (" …" if len(beyond) > _SHOWN else "")
        raise TextclfError(f"{where} names {len(beyond)} row(s) beyond {train}, which has {n} data rows (0 to "
                           f"{n - 1}): {shown}; was it made for another table? Give the list made from this "
                           f"training file")
    if len(excluded) == n:
        raise TextclfError(f"{where} leaves out all {n} rows of {train}: nothing is left to train on; list only the "
                           f"rows to drop")
    keep = np.setdiff1d(np.arange(n, dtype=np.int64), excluded)
    y_kept = y[keep]
    _check_classes_left(labels, y, y_kept, where, train)
    pick = keep.tolist()
    kept = replace(split, texts=[split.texts[i] for i in pick],
                   pairs=None if split.pairs is None else [split.pairs[i] for i in pick],
                   labels=None if split.labels is None else [split.labels[i] for i in pick],
                   rows=keep, excluded=excluded)
    if len(excluded):
        shown = ", ".join(map(str, excluded[:10])) + (" …" if len(excluded) > 10 else "")
        log.info("%s %r: %d of the %d rows of %s left out of training (row(s) %s); %d rows left", KEY, path,
                 len(excluded), n, train, shown, len(keep))
    else:
        log.info("%s %r lists no rows: every row of %s trains", KEY, path, train)
    return kept, y_kept


def _check_classes_left(labels, y: np.ndarray, y_kept: np.ndarray, where: str, train: str) -> None:
    """A class whose every row was left out would be a class without training rows: refused, naming it."""
    if labels.task == "regression":
        return
    if labels.task == "multilabel":
        before, after = np.asarray(y).sum(axis=0), np.asarray(y_kept).sum(axis=0)
    else:
        k = len(labels.classes)
        before, after = np.bincount(y, minlength=k), np.bincount(y_kept, minlength=k)
    gone = [f"{labels.names[c]!r} (all {int(before[c])} of its rows)" for c in range(len(labels.names))
            if before[c] > 0 and after[c] == 0]
    if gone:
        raise TextclfError(f"{where} leaves no row of class(es) {', '.join(gone)} in {train}; a class needs training "
                           f"rows: exclude fewer rows, or remove that class from the data")


@contextmanager
def excluded_note(split: Split, path: str | None):
    """A refusal about the training rows (too few of a class for the split, groups) says that data.exclude_rows
    left some out, and that excluding fewer is a way out."""
    try:
        yield
    except TextclfError as e:
        if split.excluded is None or not len(split.excluded):
            raise
        raise TextclfError(f"{e} ({len(split.excluded)} of data.train_file's {len(split) + len(split.excluded)} "
                           f"rows were left out by {KEY}={path}: excluding fewer rows is another way out)") from None
