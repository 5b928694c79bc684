"""Error analysis of a finished run: which training labels look wrong (label issues), and what the data holds that
skews a score (duplicates, training rows leaking into the test table, texts cut to model.max_length, class balance).

Pure computations on plain lists and arrays: each function returns a DataFrame or a dict of plain values (JSON as
it is), and none needs a model. `textclf train` calls them once at the end of a run (commands/train.py,
write_analysis), which writes the results into the run folder (the names: textclf.run.folder).

Row numbers are 0-based data rows of their file, as oof.csv's `row` column numbers them (row 0 is the first row
after the header; with data.exclude_rows the training rows keep their numbers in the file, so label_issues.csv can
be given to data.exclude_rows as it is). Label issues come from cleanlab (the optional extra textclf[cleanlab]), imported where it is used.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
import unicodedata
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from textclf.data.tables import Encoded
from textclf.data.tasks import LabelSpace

log = logging.getLogger(__name__)

#: at most this many groups are listed in each duplicate or leakage section (the totals count them all), and at
#: most this many row numbers in each group (its size counts them all)
MAX_GROUPS = 50
MAX_ROWS_PER_GROUP = 50
#: a group's example text is cut to this many characters
MAX_TEXT_CHARS = 300
#: regression: the rows with the largest residuals written per target
TOP_RESIDUALS = 100
#: what a missing cleanlab says, once
NEEDS_CLEANLAB = "label issues need cleanlab: pip install 'textclf[cleanlab]'"
#: how texts are compared for near duplicates (data_checks.json says it)
NORMALISATION = "Unicode NFKC, lowercased (casefold), punctuation removed, whitespace collapsed"
#: the label-quality score cleanlab ranks issues by (lower: more likely wrong)
RANKED_BY = "self_confidence"


# ----------------------------------------------------------------------------- texts
_PUNCTUATION: dict | None = None


def _punctuation() -> dict:
    """str.translate's table removing every Unicode punctuation character (categories P*), built once."""
    global _PUNCTUATION
    if _PUNCTUATION is None:
        _PUNCTUATION = {cp: None for cp in range(sys.maxunicode + 1)
                        if unicodedata.category(chr(cp)).startswith("P")}
    return _PUNCTUATION


def normalise(text: str) -> str:
    """The form near duplicates share: NFKC, casefolded, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", str(text)).casefold().translate(_punctuation())
    return " ".join(text.split())


@dataclass
class Rows:
    """One table's rows, as the checks read them: texts, second texts of pairs (or None), each row's label written
    out (None: an unlabelled table), and each row's data row number in its file (None: 0 to len - 1; with
    data.exclude_rows the training rows keep their numbers in the file, as oof.csv's `row` column does)."""

    texts: list
    pairs: list | None = None
    labels: list | None = None
    numbers: np.ndarray | None = None

    def number(self, rows: list[int]) -> list[int]:
        """The data row numbers of these rows (positions in texts), at most MAX_ROWS_PER_GROUP of them."""
        rows = rows[:MAX_ROWS_PER_GROUP]
        return [int(r) for r in (rows if self.numbers is None else np.asarray(self.numbers)[rows])]

    def exact_keys(self) -> list:
        """The key of exact duplicates: the text (and pair) as written, stripped (as textclf's data checks)."""
        if self.pairs is None:
            return [str(t).strip() for t in self.texts]
        return [(str(t).strip(), str(p).strip()) for t, p in zip(self.texts, self.pairs)]

    def near_keys(self) -> list:
        if self.pairs is None:
            return [normalise(t) for t in self.texts]
        return [(normalise(t), normalise(p)) for t, p in zip(self.texts, self.pairs)]

    def example(self, row: int) -> str:
        text = str(self.texts[row])
        if self.pairs is not None:
            text = f"{text} || {self.pairs[row]}"
        return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "…"


def _groups(keys: list) -> dict:
    """key -> the rows holding it, in row order (keys in order of their first row)."""
    out: dict = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return out


def _label_counts(rows: list[int], labels: list | None) -> dict | None:
    if labels is None:
        return None
    counts: dict = {}
    for r in rows:
        counts[str(labels[r])] = counts.get(str(labels[r]), 0) + 1
    return counts


def _ranked(groups: list[dict]) -> list[dict]:
    """Conflicting groups first, then the largest, then by first row: the first MAX_GROUPS are the ones to read."""
    return sorted(groups, key=lambda g: (not g["conflicting"], -g["size"], g["first_row"]))


def _section(groups: list[dict], total_rows: int) -> dict:
    ranked = _ranked(groups)
    for g in ranked:
        g.pop("first_row")
    return {"groups": len(groups), "rows": total_rows,
            "conflicting_groups": sum(g["conflicting"] for g in groups),
            "shown": ranked[:MAX_GROUPS]}


def duplicates(table: Rows) -> dict:
    """Duplicate groups within one table. exact: rows whose text (and pair) is the same as written; near: rows whose
    texts differ as written but are the same once normalised (normalise). A group is `conflicting` when its rows
    carry more than one label. Each section: the number of groups, the rows in them, how many conflict, and the
    first MAX_GROUPS groups (conflicting first, then the largest)."""
    exact_keys = table.exact_keys()
    sections = {}
    for kind, keys in (("exact", exact_keys), ("near", table.near_keys())):
        found, total = [], 0
        for rows in _groups(keys).values():
            if len(rows) < 2 or (kind == "near" and len({exact_keys[r] for r in rows}) < 2):
                continue
            counts = _label_counts(rows, table.labels)
            total += len(rows)
            found.append({"size": len(rows), "rows": table.number(rows), "text": table.example(rows[0]),
                          "labels": counts, "conflicting": bool(counts and len(counts) > 1), "first_row": rows[0]})
        sections[kind] = _section(found, total)
    sections["duplicate_rows"] = sum(len(r) - 1 for r in _groups(exact_keys).values())
    return sections


def leakage(train: Rows, other: Rows) -> dict:
    """Texts of another table (the test table) that are in the training table. exact: the same text (and pair) as
    written; near: the same once normalised, written differently. A group is `conflicting` when the other table is
    labelled and the group's rows carry more than one label across both tables. `other_rows_leaked`: the other
    table's rows with any match (exact or near)."""
    train_exact, other_exact = train.exact_keys(), other.exact_keys()
    train_near, other_near = train.near_keys(), other.near_keys()
    sections = {}
    for kind, tk, ok in (("exact", train_exact, other_exact), ("near", train_near, other_near)):
        in_train = _groups(tk)
        found, train_total, other_total = [], 0, 0
        for key, rows in _groups(ok).items():
            matched = in_train.get(key)
            if not matched:
                continue
            if kind == "near" and len({train_exact[r] for r in matched} | {other_exact[r] for r in rows}) < 2:
                continue  # written the same way on both sides: an exact match
            train_counts = _label_counts(matched, train.labels)
            other_counts = _label_counts(rows, other.labels)
            conflicting = bool(other_counts is not None and len({*train_counts, *other_counts}) > 1)
            train_total, other_total = train_total + len(matched), other_total + len(rows)
            found.append({"size": len(matched) + len(rows), "text": train.example(matched[0]),
                          "train_rows": train.number(matched), "other_rows": other.number(rows),
                          "train_labels": train_counts, "other_labels": other_counts, "conflicting": conflicting,
                          "first_row": rows[0]})
        section = _section(found, train_total + other_total)
        section.update(train_rows=train_total, other_rows=other_total)
        sections[kind] = section
    near_train = set(train_near)
    sections["other_rows_leaked"] = sum(k in near_train for k in other_near)
    sections["other_table_rows"] = len(other.texts)
    return sections


# ----------------------------------------------------------------------------- lengths and classes
def over_max_length(encoded: Encoded, n_rows: int, max_length: int) -> np.ndarray:
    """For the first n_rows input rows, whether the text did not fit into max_length tokens, from the run's one
    tokenization (no tokenizing again): a sequence max_length long was cut there (truncation=head, tail,
    head_tail; the count the training log's "% cut to max_length" gives), and with truncation=window a text split
    into more than one window."""
    if encoded.doc is None:
        return encoded.lengths[:n_rows] >= int(max_length)
    return np.bincount(encoded.doc, minlength=n_rows)[:n_rows] > 1


def row_classes(labels: LabelSpace, y: np.ndarray) -> list[list[str]] | None:
    """Each row's classes by name (multilabel: every label it has); None for regression."""
    names = labels.names
    if labels.task == "regression":
        return None
    if labels.task == "multilabel":
        return [[names[j] for j in np.flatnonzero(r)] for r in np.asarray(y)]
    return [[names[int(i)]] for i in np.asarray(y)]


def label_strings(labels: LabelSpace, y: np.ndarray) -> list[str]:
    """Each row's label as a text: the class, multilabel the labels joined by the run's separator (data.label_sep),
    regression the target value(s) (several: joined by the separator)."""
    if labels.task == "regression":
        return [labels.sep.join(f"{v:g}" for v in np.atleast_1d(r)) for r in np.asarray(y, dtype=np.float64)]
    return [labels.sep.join(c) for c in row_classes(labels, y)]


def truncation_report(over: np.ndarray, classes: list[list[str]] | None, names: list[str], max_length: int,
                      truncation: str) -> dict:
    """How many texts did not fit into max_length (over_max_length), overall and per class (a multilabel row counts
    for each of its labels; none per class for regression)."""
    over = np.asarray(over, dtype=bool)
    report = {"max_length": int(max_length), "truncation": str(truncation),
              "meaning": ("texts split into more than one window" if truncation == "window"
                          else "texts cut to max_length tokens"),
              "rows": int(len(over)), "cut": int(over.sum()), "share": _share(int(over.sum()), len(over))}
    if classes is not None:
        per = {n: [0, 0] for n in names}
        for row_over, row in zip(over, classes):
            for c in row:
                per[c][0] += 1
                per[c][1] += int(row_over)
        report["per_class"] = {n: {"rows": r, "cut": c, "share": _share(c, r)} for n, (r, c) in per.items()}
    return report


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def class_balance(classes: list[list[str]], names: list[str]) -> dict:
    """Rows per class (multilabel: rows per label, and rows without any), in the run's class order."""
    counts = {n: 0 for n in names}
    empty = 0
    for row in classes:
        empty += not row
        for c in row:
            counts[c] += 1
    out = {"rows": len(classes), "counts": counts, "shares": {n: _share(c, len(classes)) for n, c in counts.items()}}
    if empty:
        out["rows_without_label"] = empty
    return out


def target_summary(y: np.ndarray, names: list[str]) -> dict:
    """Regression: each target's count, mean, std, min and max."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    return {n: {"rows": int(len(y)), "mean": float(y[:, j].mean()), "std": float(y[:, j].std()),
                "min": float(y[:, j].min()), "max": float(y[:, j].max())} if len(y) else {"rows": 0}
            for j, n in enumerate(names)}


# ----------------------------------------------------------------------------- label issues
def cleanlab_available() -> bool:
    """cleanlab (the extra textclf[cleanlab]) is installed."""
    try:
        return importlib.util.find_spec("cleanlab") is not None
    except (ImportError, ValueError):
        return False


def label_issues(labels: LabelSpace, y: np.ndarray, probs: np.ndarray, rows: np.ndarray, texts: list,
                 decided: np.ndarray | None = None, pairs: list | None = None,
                 numbers: np.ndarray | None = None) -> pd.DataFrame:
    """The rows whose given label cleanlab's confident learning (cleanlab.filter.find_label_issues) finds likely
    wrong, from out-of-fold probabilities, most likely wrong first: row, text, given_label, suggested_label and
    score (cleanlab's label quality score, self-confidence: the probability of the given label, or for multilabel
    its aggregate over the labels; lower is more likely wrong).

    y: the rows' encoded labels (class ids; multilabel 0/1 rows); probs: their out-of-fold probabilities, one
    column per class; rows: each row's position in texts / pairs; numbers: the data row number of each position
    (the column `row`; None: the position itself). decided: the model's decisions on probs (class ids; multilabel
    0/1 rows), the suggested labels; None: the most probable class (multilabel: each label at 0.5). Needs cleanlab
    (ImportError without it)."""
    # the optional extra textclf[cleanlab]; multilabel: cleanlab's multi-label mode (its own module: the multi_label
    # argument of cleanlab.filter.find_label_issues is deprecated in cleanlab 2.x)
    probs = np.asarray(probs, dtype=np.float64)
    names, multi = labels.names, labels.task == "multilabel"
    if multi:
        from cleanlab.multilabel_classification.filter import find_label_issues
        from cleanlab.multilabel_classification.rank import get_label_quality_scores

        given = [[int(j) for j in np.flatnonzero(r)] for r in np.asarray(y)]
    else:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        given = np.asarray(y, dtype=np.int64)
        probs = probs / probs.sum(axis=1, keepdims=True)  # cleanlab wants each row to sum to 1 exactly
    if decided is None:
        decided = (probs >= 0.5).astype(np.int64) if multi else probs.argmax(axis=1)
    columns = ["row", "text", *(["text_pair"] if pairs is not None else []), "given_label", "suggested_label", "score"]
    if len(given) == 0:
        return pd.DataFrame(columns=columns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = find_label_issues(given, probs, return_indices_ranked_by=RANKED_BY, n_jobs=1)
        scores = get_label_quality_scores(given, probs, method=RANKED_BY)
    said = list(dict.fromkeys(str(w.message) for w in caught))
    if said:  # one line: on a small table cleanlab warns once per class
        log.info("label issues: cleanlab says: %s%s", said[0],
                 f" (and {len(said) - 1} more such warning(s))" if len(said) > 1 else "")
    found = np.asarray(found, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    if multi:
        join = lambda r: labels.sep.join(names[j] for j in np.flatnonzero(r))  # noqa: E731
        given_text = [join(np.asarray(y)[i]) for i in found]
        suggested = [join(np.asarray(decided)[i]) for i in found]
    else:
        given_text = [names[given[i]] for i in found]
        suggested = [names[int(decided[i])] for i in found]
    table = {"row": _numbered(rows[found], numbers), "text": [texts[r] for r in rows[found]]}
    if pairs is not None:
        table["text_pair"] = [pairs[r] for r in rows[found]]
    table.update(given_label=given_text, suggested_label=suggested, score=np.asarray(scores)[found])
    return pd.DataFrame(table, columns=columns)


def _numbered(rows: np.ndarray, numbers: np.ndarray | None) -> np.ndarray:
    return rows if numbers is None else np.asarray(numbers, dtype=np.int64)[rows]


def residuals(labels: LabelSpace, y: np.ndarray, predicted: np.ndarray, rows: np.ndarray, texts: list,
              top: int = TOP_RESIDUALS, numbers: np.ndarray | None = None) -> pd.DataFrame:
    """Regression: the rows with the largest out-of-fold residuals (predicted - given), the largest in absolute
    value first, at most `top` per target: row, text, given_value, predicted_value, residual (and `target` first
    among the values when there are several targets). rows, texts, numbers: as for label_issues."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    predicted = np.asarray(predicted, dtype=np.float64).reshape(len(predicted), -1)
    rows = np.asarray(rows, dtype=np.int64)
    several = y.shape[1] > 1
    frames = []
    for j, name in enumerate(labels.names[:y.shape[1]]):
        residual = predicted[:, j] - y[:, j]
        order = np.argsort(-np.abs(residual), kind="stable")[:top]
        frame = pd.DataFrame({"row": _numbered(rows[order], numbers), "text": [texts[r] for r in rows[order]]})
        if several:
            frame["target"] = name
        frame["given_value"], frame["predicted_value"], frame["residual"] = y[order, j], predicted[order, j], \
            residual[order]
        frames.append(frame)
    columns = ["row", "text", *(["target"] if several else []), "given_value", "predicted_value", "residual"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


@dataclass
class Examined:
    """What the out-of-fold outputs say about the training labels: the table to write (None: none, as when
    cleanlab is missing) and the summary data_checks.json keeps."""

    table: pd.DataFrame | None
    summary: dict


def examine_labels(labels: LabelSpace, y: np.ndarray, scored: np.ndarray, outputs: np.ndarray, n_train_file: int,
                   texts: list, pairs: list | None = None, decided: np.ndarray | None = None,
                   numbers: np.ndarray | None = None) -> Examined:
    """Label issues (classification) or the largest residuals (regression) of the training file's rows that have
    out-of-fold outputs.

    scored: the positions (in the run's order: the training file's rows, then data.valid_file's) that a fold
    validated, in the order of `outputs` (and `decided`: the run's decisions on them); y, texts, pairs: every
    position's label and texts; numbers: each training row's data row number (oof.csv's `row`; None: its
    position). Only training-file rows are examined: label issues are about data.train_file, so a validation
    file's rows are left out. With a single holdout (or kfold.folds naming some folds) only the validated rows have
    out-of-fold outputs, and only they are examined: the summary's `scope` and the log say so."""
    scored = np.asarray(scored, dtype=np.int64)
    mine = scored < n_train_file
    rows, outputs = scored[mine], np.asarray(outputs)[mine]
    decided = None if decided is None else np.asarray(decided)[mine]
    summary = {"task": labels.task, "train_rows": int(n_train_file), "examined_rows": int(len(rows)),
               "all_train_rows_examined": bool(len(rows) == n_train_file),
               "valid_file_rows_left_out": int((~mine).sum())}
    if len(rows) < n_train_file:
        summary["scope"] = (f"only the {len(rows)} of the {n_train_file} training rows that have out-of-fold outputs "
                            f"(a single holdout, or some folds trained) are examined")
        log.info("label issues: %s", summary["scope"])
    if labels.task == "regression":
        table = residuals(labels, np.asarray(y)[rows], outputs, rows, texts, numbers=numbers)
        summary.update(method="the largest out-of-fold residuals (predicted - given)", top_per_target=TOP_RESIDUALS,
                       written=int(len(table)))
        return Examined(table, summary)
    if not cleanlab_available():
        log.info(NEEDS_CLEANLAB)
        summary.update(method=None, issues=None, missing=NEEDS_CLEANLAB)
        return Examined(None, summary)
    try:
        table = label_issues(labels, np.asarray(y)[rows], outputs, rows, texts, decided, pairs, numbers)
    except Exception as e:  # noqa: BLE001 - an analysis after training never fails the finished run
        log.warning("label issues: cleanlab could not examine the labels (%s: %s); no label issues written",
                    type(e).__name__, e)
        summary.update(method=None, issues=None, error=f"{type(e).__name__}: {e}")
        return Examined(None, summary)
    module = "multilabel_classification.filter" if labels.task == "multilabel" else "filter"
    summary.update(method=f"cleanlab.{module}.find_label_issues on out-of-fold probabilities, ranked by {RANKED_BY}",
                   issues=int(len(table)), issue_share=_share(len(table), len(rows)))
    log.info("label issues: %d of %d examined training rows look mislabelled (cleanlab)", len(table), len(rows))
    return Examined(table, summary)


def data_checks(labels: LabelSpace, train: Rows, y: np.ndarray, over: np.ndarray, max_length: int,
                truncation: str, others: dict[str, tuple[Rows, np.ndarray | None]] | None = None,
                label_summary: dict | None = None) -> dict:
    """data_checks.json: duplicates and near duplicates within the training table, the training rows in the other
    tables (`others`: name -> (rows, encoded labels or None); the test table: leakage), the texts cut to max_length
    per class, the class balance of each labelled table, and the label issues' summary (examine_labels)."""
    names = labels.names
    classes = row_classes(labels, y)
    checks = {"row_numbers": "0-based data rows of each table, as in oof.csv's row column",
              "normalisation": NORMALISATION, "max_groups_shown": MAX_GROUPS,
              "max_rows_per_group": MAX_ROWS_PER_GROUP,
              "train": {"rows": len(train.texts), "duplicates": duplicates(train)},
              "leakage": {name: leakage(train, rows) for name, (rows, _) in (others or {}).items()},
              "truncation": truncation_report(over, classes, names, max_length, truncation)}
    tables = {"train": y, **{name: oy for name, (_, oy) in (others or {}).items() if oy is not None}}
    if classes is None:
        checks["targets"] = {name: target_summary(t, names) for name, t in tables.items()}
    else:
        checks["class_balance"] = {name: class_balance(row_classes(labels, t), names) for name, t in tables.items()}
    if label_summary is not None:
        checks["label_issues"] = label_summary
    return checks
