"""Learning from a teacher run (a finished run folder: its fold ensemble, textclf.inference.teacher):

pseudo_label=default  the teacher's confident decisions on unlabelled texts become training rows (hard labels)
distill=default       the teacher's probabilities become the training targets (soft labels); `textclf distill`

Both only add training: the rows they add are never validated on, and validation, out-of-fold and test rows keep
their own labels. This file holds the settings and the pure computations; train.py calls the teacher."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from textclf.data.tasks import LabelSpace
from textclf.errors import TextclfError

SOURCES = ("unlabeled", "test")


def _teacher(key: str, teacher) -> str:
    if not teacher or not isinstance(teacher, str):
        raise TextclfError(f"{key}.teacher: give the run folder whose fold ensemble teaches (a finished textclf "
                           f"train run), e.g. {key}.teacher=outputs/2026-12-07/10-00-00")
    return teacher


@dataclass
class Selection:
    """The unlabelled rows kept as pseudo rows: their positions in the source table, hard labels (encoded like the
    training labels) and the teacher's confidence; what was offered and left out, per class."""

    rows: np.ndarray
    y: np.ndarray
    confidence: np.ndarray
    offered: int
    confident_by_class: dict
    kept_by_class: dict
    capped: bool


class PseudoLabels:
    """pseudo_label=default: see conf/pseudo_label/default.yaml."""

    def __init__(self, teacher: str | None = None, source: str = "unlabeled", threshold=0.9,
                 max_share: float = 0.5):
        self.teacher = _teacher("pseudo_label", teacher)
        if source not in SOURCES:
            raise TextclfError(f"pseudo_label.source must be one of {', '.join(SOURCES)}, got {source!r}")
        self.source = source
        if isinstance(threshold, bool) or not (isinstance(threshold, (int, float)) or hasattr(threshold, "items")):
            raise TextclfError(f"pseudo_label.threshold must be a probability, or one per class "
                               f"({{sport: 0.95, default: 0.9}}), got {threshold!r}")
        self.threshold = dict(threshold.items()) if hasattr(threshold, "items") else float(threshold)
        for name, t in (self.threshold.items() if isinstance(self.threshold, dict) else [("", self.threshold)]):
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < float(t) <= 1:
                where = f"pseudo_label.threshold{'.' + str(name) if name else ''}"
                raise TextclfError(f"{where} must be a probability in (0, 1], got {t!r}")
        if isinstance(max_share, bool) or not isinstance(max_share, (int, float)) or not 0 < max_share:
            raise TextclfError(f"pseudo_label.max_share must be a share of the training rows > 0 (0.5: at most "
                               f"half as many pseudo rows as training rows), got {max_share!r}")
        self.max_share = float(max_share)

    def thresholds(self, labels: LabelSpace) -> np.ndarray:
        """One threshold per class: the class's own, else `default`, else 0.9; an unknown class name is refused."""
        if not isinstance(self.threshold, dict):
            return np.full(len(labels.classes), self.threshold)
        names = [str(n) for n in labels.names]
        unknown = [k for k in self.threshold if str(k) not in names and str(k) != "default"]
        if unknown:
            raise TextclfError(f"pseudo_label.threshold names {unknown}, which are not classes of this run "
                               f"(classes: {', '.join(names[:20])}; `default` sets the rest)")
        default = float(self.threshold.get("default", 0.9))
        return np.array([float(self.threshold.get(n, default)) for n in names])

    def select(self, labels: LabelSpace, outputs: np.ndarray, n_train: int) -> Selection:
        """Keep the rows whose decision the teacher is confident of: multiclass and binary, the predicted class's
        probability at or above its class's threshold; multilabel, every label's probability at or above its
        threshold or at or below 1 - it. At most max_share x n_train rows: the most confident of each class, the
        classes in the proportion they were confident in."""
        if labels.task == "regression":
            raise TextclfError("pseudo_label: a regression task has no confident classes to keep; pseudo-labels "
                               "are for classification")
        t = self.thresholds(labels)
        if labels.task == "multilabel":
            sure = np.maximum(outputs, 1 - outputs)
            ok = np.all((outputs >= t) | (outputs <= 1 - t), axis=1)
            conf, y = sure.min(axis=1), (outputs >= t).astype(np.float32)
            group = np.where(y.any(axis=1), np.argmax(np.where(y > 0, outputs, -1), axis=1), -1)
        else:
            group = np.argmax(outputs, axis=1)
            conf = outputs[np.arange(len(outputs)), group]
            ok = conf >= t[group]
            y = group.astype(np.int64)
        confident = np.flatnonzero(ok)
        cap = int(math.floor(self.max_share * n_train))
        keep = confident
        if len(confident) > cap:
            keep = _proportional_top(confident, group[confident], conf[confident], cap)
        keep = np.sort(keep)
        name = lambda g: "(none)" if g < 0 else str(labels.names[g])  # noqa: E731
        count = lambda idx: {name(g): int(n) for g, n in zip(*np.unique(group[idx], return_counts=True))}  # noqa: E731
        return Selection(keep, y[keep], conf[keep], len(outputs), count(confident), count(keep),
                         len(confident) > cap)


def _proportional_top(rows: np.ndarray, groups: np.ndarray, conf: np.ndarray, cap: int) -> np.ndarray:
    """`cap` of rows: each group's most confident, the groups' shares as in `groups` (largest remainders)."""
    values, counts = np.unique(groups, return_counts=True)
    quota = counts * cap / counts.sum()
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[:cap - take.sum()]:
        take[i] += 1
    out = []
    for g, n in zip(values, take):
        mine = np.flatnonzero(groups == g)
        out.append(rows[mine[np.argsort(-conf[mine], kind="stable")[:n]]])
    return np.concatenate(out) if out else rows[:0]


class Distill:
    """distill=default (textclf distill): see conf/distill/default.yaml."""

    def __init__(self, teacher: str | None = None, alpha: float = 0.5, targets: str = "oof"):
        self.teacher = _teacher("distill", teacher)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise TextclfError(f"distill.alpha must be in [0, 1] (1: the teacher's outputs alone, 0: the labels "
                               f"alone), got {alpha!r}")
        if targets not in ("oof", "ensemble"):
            raise TextclfError(f"distill.targets must be oof or ensemble, got {targets!r}")
        self.alpha, self.targets = float(alpha), targets

    def soft_targets(self, labels: LabelSpace, y: np.ndarray | None, teacher: np.ndarray,
                     alpha: float | None = None) -> np.ndarray:
        """The training targets, float32 (rows, outputs of the student): alpha x the teacher's outputs + (1 - alpha)
        x the labels (one-hot, multi-hot, values); y None (unlabelled rows): the teacher's alone. A binary
        single-logit student learns the positive class's probability."""
        alpha = self.alpha if alpha is None else alpha
        teacher = np.asarray(teacher, dtype=np.float64)
        if y is not None and alpha < 1:
            if labels.task in ("binary", "multiclass"):
                hard = np.eye(len(labels.classes))[np.asarray(y, dtype=np.int64)]
            else:
                hard = np.asarray(y, dtype=np.float64).reshape(teacher.shape)
            teacher = alpha * teacher + (1 - alpha) * hard
        if labels.single_logit:
            teacher = teacher[:, 1:2]
        return teacher.astype(np.float32)
