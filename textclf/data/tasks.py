"""What a task means for labels, model outputs, decisions and prediction tables.

binary / multiclass: one class per row, softmax over K logits (or one sigmoid logit for binary with a
single-logit loss such as bce); multilabel: a set of classes per row, K sigmoid outputs and a decision
threshold; regression: T numeric targets, identity outputs.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from textclf.data.metrics import compute_metrics
from textclf.errors import TextclfError

log = logging.getLogger(__name__)

TASKS = ("binary", "multiclass", "multilabel", "regression")
#: tasks whose decisions cut probabilities at a threshold (tune_threshold=true tunes it on out-of-fold rows)
THRESHOLD_TASKS = ("binary", "multilabel")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def split_labels(value, sep: str) -> list:
    """A multilabel cell: a list (JSONL/Parquet) or a string joined by `sep`; each label as label_text makes it."""
    if isinstance(value, (list, tuple, np.ndarray)):
        parts = [label_text(v) for v in value]
    else:
        parts = label_text(value).split(sep)
    return [p.strip() for p in parts if p.strip()]


def infer_task(labels: list, sep: str, n_targets: int = 1) -> str:
    if n_targets > 1:
        return "regression"
    if any(isinstance(v, (list, tuple, np.ndarray)) for v in labels):
        return "multilabel"
    if sep and any(isinstance(v, str) and sep in v for v in labels):
        return "multilabel"
    if labels and all(_is_number(v) for v in labels) and any(isinstance(v, float) for v in labels):
        return "regression"
    return "binary" if len({str(v) for v in labels}) == 2 else "multiclass"


def label_text(value):
    """A label cell as text, the one form every file's labels are compared in: strings stripped and in Unicode
    NFC (a file saved on macOS may write 'café' with a combining accent, NFD; it is the same class); numbers
    (JSON, Parquet) in decimal, an integral float as an integer (Parquet widens integer columns to floats);
    lists (multilabel cells, several target columns) item by item."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [label_text(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return unicodedata.normalize("NFC", str(value).strip())


#: a number as people write one in a table: digits, a decimal point, an exponent; inf for regression targets
#: (their own check refuses it). Not 1_000, 0x1F, nan (a missing label) or digits of other scripts.
PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?inf(inity)?", re.IGNORECASE | re.ASCII)


def as_number(text):
    """A label's number: int when integral (1, 01, 1.0 and 1e0 are all 1), else float; None when `text` is not a
    plain number (see PLAIN_NUMBER)."""
    if not isinstance(text, str) or not PLAIN_NUMBER.fullmatch(text):
        return None
    if text.lstrip("+-").isdigit():
        return int(text)  # exact, however many digits
    number = float(text)
    return int(number) if number.is_integer() else number


def read_labels(labels: list) -> list:
    """The labels as the task sees them: numbers when every label is a plain number, else text (label_text).

    The one rule, for every file: a column is read as numbers only as a whole, so a class is never a number in
    one row and a string in another, and '01' stays '01' next to 'x'. Lists (multilabel, several targets) stay
    lists of text. Several spellings of one number are checked by LabelSpace.fit (a class task refuses them)."""
    texts = [label_text(v) for v in labels]
    if not texts or any(isinstance(t, list) for t in texts):
        return texts
    numbers = [as_number(t) for t in texts]
    return texts if any(n is None for n in numbers) else numbers


def check_spellings(labels: list, where: str) -> None:
    """Class labels written two ways that readers take for one value are refused, naming both spellings:
    '01' and '1' (or '1.0' and '1') in a column of numbers, which become one number; 'True' and 'true', which
    spreadsheets and pandas read as one boolean (they were one class before labels were read as text). Either
    way the user meant one class or two, and only the file can say which."""
    texts = [label_text(v) for v in labels]
    numbers = [as_number(t) for t in texts]
    numeric = all(n is not None for n in numbers)
    keys = numbers if numeric else [t.casefold() if t.casefold() in ("true", "false") else (t,) for t in texts]
    spellings: dict = {}
    for key, text in zip(keys, texts):
        seen = spellings.setdefault(key, [])
        if text in seen:
            continue
        seen.append(text)
        if len(seen) > 1:
            a, b = seen
            how = (f"once read as numbers; write them one way, or, if they are different classes, make them text "
                   f"(e.g. 'c{a}' and 'c{b}': labels are read as numbers only when every label is a number)"
                   if numeric else "once read as true/false (spreadsheets and pandas read both as one boolean); "
                                   "write them one way")
            raise TextclfError(f"{where}: labels {a!r} and {b!r} would be the same class {how}")


def class_key(label, numeric: bool):
    """A label as a space compares it with its classes, whichever file it comes from (training, validation, test,
    predict's input): its number when the classes are numbers (numeric), so '1' in a JSONL file is the class 1 of a
    run trained on a CSV file; otherwise its text (label_text: stripped, Unicode NFC)."""
    text = label_text(label)
    number = as_number(text) if numeric else None
    return text if number is None else number


@dataclass(frozen=True)
class LabelSpace:
    """Task, class (or target) names in output order, and the decision threshold(s): multilabel one per class
    (or one for all); binary one on the probability of the positive class (`positive`, an index into classes:
    the class binary F1 is about, the second in sorted order unless positive_label names another). `temperature`
    (calibrate=temperature): every logit is divided by it before it becomes a probability; None: no calibration.

    Frozen: a run's tuned thresholds or fitted temperature make a new space (dataclasses.replace), so what was
    built from the data never changes under a reader's feet, and labels.json is written once, from the final one."""

    task: str
    classes: list
    sep: str = "|"
    threshold: float | list = 0.5
    single_logit: bool = False
    target_names: list = field(default_factory=list)
    positive: int = 1
    temperature: float | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def fit(cls, labels: list, task: str = "auto", where: str = "data.train_file", sep: str = "|",
            target_names: list | None = None) -> "LabelSpace":
        n_targets = len(target_names) if target_names else 1
        written, labels = labels, read_labels(labels)
        inferred = infer_task(labels, sep, n_targets)
        if task == "auto":
            task = inferred
        if task not in TASKS:
            raise TextclfError(f"task={task!r}: use auto, {', '.join(TASKS)}")
        if task == "regression":
            names = list(target_names) if target_names else ["target"]
            space = cls("regression", names, sep=sep, target_names=names)
            space.encode(labels, where)  # every value numeric
            return space
        if n_targets > 1:
            raise TextclfError(f"data.label_col names {n_targets} columns; several label columns mean "
                               f"task=regression (got task={task})")
        if task == "multilabel":
            classes = sorted({c for v in labels for c in split_labels(v, sep)})
            if len(classes) < 2:
                raise TextclfError(f"{where}: multilabel data needs at least two distinct labels, found {classes}")
            return cls("multilabel", classes, sep=sep)
        if inferred == "regression":
            example = next(v for v in labels if isinstance(v, float) and not float(v).is_integer())
            raise TextclfError(f"{where}: the label column holds non-integer numbers (e.g. {example}); use "
                               f"task=regression (or task=auto) for numeric targets")
        if inferred == "multilabel":
            raise TextclfError(f"{where}: labels contain the separator {sep!r} (multilabel) but task={task}; "
                               f"use task=multilabel, or set data.label_sep to a character the labels do not use")
        check_spellings(written, where)
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise TextclfError(f"{where}: the label column has only one class ({classes[0]!r}); "
                               f"a classifier needs at least two")
        if task == "binary" and len(classes) != 2:
            raise TextclfError(f"task=binary but {where} has {len(classes)} classes: {classes[:10]}")
        return cls(task, classes, sep=sep)

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSpace":
        space = cls(d["task"], d["classes"], sep=d.get("sep", "|"), threshold=d.get("threshold", 0.5),
                    single_logit=d.get("single_logit", False), target_names=d.get("target_names", []),
                    temperature=d.get("temperature"))  # labels.json before calibration existed has none
        return space.with_positive(d.get("positive_label"))

    def to_dict(self) -> dict:
        return {"task": self.task, "classes": self.classes, "sep": self.sep, "threshold": self.threshold,
                "single_logit": self.single_logit, "target_names": self.target_names,
                "positive_label": self.classes[self.positive] if self.task == "binary" else None,
                "temperature": self.temperature}

    def with_positive(self, label) -> "LabelSpace":
        """This space with positive_label: the binary class (as it appears in the data) whose F1 is reported and
        whose probability the threshold cuts; None: the second class in sorted order."""
        if label is None:
            return replace(self, positive=1)
        if self.task != "binary":
            raise TextclfError(f"positive_label={label!r} applies to binary tasks only, and this task is "
                               f"{self.task}; set positive_label=null")
        names = self.names
        if str(label) not in names:
            raise TextclfError(f"positive_label={label!r} is not a class of the training data; its classes are: "
                               f"{', '.join(names)}")
        return replace(self, positive=names.index(str(label)))

    @property
    def names(self) -> list[str]:
        return [str(c) for c in self.classes]

    @property
    def num_outputs(self) -> int:
        return 1 if self.single_logit else len(self.classes)

    # ------------------------------------------------------------------ labels -> targets
    def encode(self, labels: list, where: str) -> np.ndarray:
        """Class ids (N,) for binary/multiclass; float (N, K) multi-hot or (N, T) values otherwise."""
        if self.task == "regression":
            out = np.empty((len(labels), len(self.classes)), dtype=np.float32)
            for i, v in enumerate(labels):
                values = v if isinstance(v, (list, tuple)) else (v,)
                try:
                    out[i] = [float(x) for x in values]
                except (TypeError, ValueError):
                    raise TextclfError(f"{where}: data row {i + 1} has target {v!r}, which is not a number") from None
                if not np.isfinite(out[i]).all():
                    raise TextclfError(f"{where}: data row {i + 1} has a target that is not finite: {v!r}")
            return out
        if self.task == "multilabel":
            index = {label_text(c): i for i, c in enumerate(self.classes)}
            out = np.zeros((len(labels), len(self.classes)), dtype=np.float32)
            for i, v in enumerate(labels):
                for c in split_labels(v, self.sep):
                    if c not in index:
                        raise TextclfError(f"{where}: data row {i + 1} has label {c!r}, which the training data "
                                           f"does not have; known labels: {', '.join(self.names[:20])}")
                    out[i, index[c]] = 1.0
            return out
        numeric = all(_is_number(c) for c in self.classes)
        index = {class_key(c, numeric): i for i, c in enumerate(self.classes)}
        out = np.empty(len(labels), dtype=np.int64)
        for i, v in enumerate(labels):
            key = class_key(v, numeric)
            if key not in index:
                raise TextclfError(f"{where}: data row {i + 1} has label {v!r}, which the training data does not "
                                   f"have; known labels: {', '.join(self.names[:20])}")
            out[i] = index[key]
        return out

    def stratify_key(self, y: np.ndarray) -> np.ndarray | None:
        """What stratified splits balance: the class; regression: quantile bins; multilabel: none here."""
        if self.task in ("binary", "multiclass"):
            return y
        if self.task == "regression":
            bins = min(10, max(2, len(y) // 20))
            edges = np.quantile(y[:, 0], np.linspace(0, 1, bins + 1)[1:-1])
            return np.searchsorted(edges, y[:, 0], side="right")
        return None

    # ------------------------------------------------------------------ logits -> outputs -> decisions
    def outputs(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities per class (binary: both columns, even from one logit), or regression values; with a
        temperature, of logits / temperature."""
        logits = logits.astype(np.float64)
        if self.task == "regression":
            return logits
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.task == "multilabel":
            return sigmoid(logits)
        if self.single_logit:
            p = sigmoid(logits[:, 0])
            return np.stack([1.0 - p, p], axis=1)
        return softmax(logits)

    def thresholds(self) -> np.ndarray:
        t = self.threshold
        return np.asarray(t if isinstance(t, (list, tuple)) else [t] * len(self.classes), dtype=np.float64)

    def decide(self, outputs: np.ndarray) -> np.ndarray:
        """Class ids (binary/multiclass), 0/1 matrix (multilabel) or values (regression). Binary: the positive
        class when its probability reaches the threshold (at 0.5 the argmax, but for exact ties)."""
        if self.task == "multilabel":
            return (outputs >= self.thresholds()).astype(np.int64)
        if self.task == "regression":
            return outputs
        if self.task == "binary":
            pos, t = self.positive, float(self.thresholds()[0])
            return np.where(outputs[:, pos] >= t, pos, 1 - pos).astype(np.int64)
        return outputs.argmax(axis=1)

    def table(self, outputs: np.ndarray, y_true: np.ndarray | None = None, extra: dict | None = None):
        """A prediction table: true label (when known), decision, and one column per class or target."""
        table = pd.DataFrame(extra or {})
        names = self.names
        decided = self.decide(outputs)
        if self.task == "regression":
            for j, name in enumerate(names):
                if y_true is not None:
                    table[f"true_{name}"] = y_true[:, j]
                table[f"pred_{name}"] = outputs[:, j]
            return table
        if self.task == "multilabel":
            join = lambda row: self.sep.join(n for n, on in zip(names, row) if on)  # noqa: E731
            if y_true is not None:
                table["label"] = [join(r) for r in y_true.astype(bool)]
            table["pred"] = [join(r) for r in decided]
        else:
            if y_true is not None:
                table["label"] = [names[i] for i in y_true]
            table["pred"] = [names[i] for i in decided]
        for i, name in enumerate(names):
            table[f"prob_{name}"] = outputs[:, i]
        return table


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free: exp is only taken of -|x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


DEFAULT_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def f1_curve(y: np.ndarray, p: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """F1 of one class at each threshold of the grid (zero_division=0), all thresholds at once."""
    pred = p[:, None] >= grid[None, :]
    pos = y.astype(bool)[:, None]
    tp = (pred & pos).sum(axis=0)
    wrong = (pred & ~pos).sum(axis=0) + (int(pos.sum()) - tp)  # false positives + false negatives
    denom = 2 * tp + wrong
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def tune_class_thresholds(y_true: np.ndarray, probs: np.ndarray, grid=None,
                          default: float = 0.5) -> tuple[list[float], list[int]]:
    """Per-class threshold that maximises that class's F1 on out-of-fold probabilities; (thresholds, untuned).

    A class without positive rows, or whose F1 is the same at every threshold, keeps `default` and is listed in
    `untuned`; among thresholds tied for the best F1 the one nearest `default` is taken."""
    grid = DEFAULT_GRID if grid is None else np.asarray(grid, dtype=np.float64)
    thresholds, untuned = [], []
    for k in range(y_true.shape[1]):
        scores = f1_curve(y_true[:, k], probs[:, k], grid)
        if not y_true[:, k].any() or np.ptp(scores) <= 1e-12:
            thresholds.append(float(default))
            untuned.append(k)
            continue
        best = np.flatnonzero(scores >= scores.max() - 1e-12)
        thresholds.append(float(grid[best[np.argmin(np.abs(grid[best] - default))]]))
    return thresholds, untuned


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray, grid=None, default: float = 0.5) -> list[float]:
    """The thresholds of tune_class_thresholds alone."""
    return tune_class_thresholds(y_true, probs, grid, default)[0]


def tune_space(space: LabelSpace, y: np.ndarray, outputs: np.ndarray, default: float) -> tuple:
    """(threshold, untuned class ids) for a binary or multilabel space: binary one float, on the positive class."""
    if space.task == "multilabel":
        return tune_class_thresholds(y, outputs, default=default)
    pos = space.positive
    t, untuned = tune_class_thresholds((y == pos)[:, None], outputs[:, [pos]], default=default)
    return t[0], [pos] if untuned else []


def tuned_threshold_metrics(space: LabelSpace, y: np.ndarray, outputs: np.ndarray, groups: np.ndarray,
                            default: float = 0.5) -> tuple[dict, np.ndarray]:
    """Thresholds tuned on out-of-fold rows, and their metrics scored out of sample: the rows of each group (the
    fold that validated them) are decided by thresholds chosen on the other groups' rows. With one group there
    are no other rows: the metrics are then in-sample (optimistic) and labelled so.

    Returns ({"threshold": chosen on every row (what predict uses), "evaluation", "untuned_classes", metrics...,
    "in_sample": metrics of the final thresholds on the rows that chose them (out-of-sample case)}, decisions).
    `space` is left as it is."""
    final, untuned = tune_space(space, y, outputs, default)
    names = [space.names[k] for k in untuned]
    if names:
        log.warning("threshold tuning: %s %s no positive out-of-fold rows or the same F1 at every threshold; "
                    "kept threshold %s", ", ".join(names), "has" if len(names) == 1 else "have", default)
    ids = np.unique(groups)
    if len(ids) > 1:
        decided = np.empty_like(space.decide(outputs))
        for g in ids:
            inside = groups == g
            t, _ = tune_space(space, y[~inside], outputs[~inside], default)
            decided[inside] = replace(space, threshold=t).decide(outputs[inside])
        evaluation = "out_of_sample"
    else:
        decided, evaluation = replace(space, threshold=final).decide(outputs), "in_sample"
    out = {"threshold": final, "evaluation": evaluation, "untuned_classes": names,
           **compute_metrics(space, y, outputs, decided=decided)}
    if evaluation == "out_of_sample":
        out["in_sample"] = compute_metrics(replace(space, threshold=final), y, outputs)
    return out, decided
