"""Per-task metrics from model outputs (probabilities, or values for regression)."""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (accuracy_score, classification_report, f1_score, precision_recall_fscore_support,
                             roc_auc_score)

from textclf.config.choices import METRICS, TUNED_METRICS  # noqa: F401  (the names live with the config's choices)

TASK_METRICS = {
    "binary": ["accuracy", "f1", "roc_auc", "macro_f1", "micro_f1", "loss"],
    "multiclass": ["accuracy", "macro_f1", "micro_f1", "loss"],
    "multilabel": ["micro_f1", "macro_f1", "subset_accuracy", "roc_auc", "loss"],
    "regression": ["rmse", "mae", "pearson", "spearman", "loss"],
}


def metrics_for_task(task: str) -> list[str]:
    return list(TASK_METRICS[task])


def default_monitor(task: str) -> str:
    return "rmse" if task == "regression" else "macro_f1"


def direction_of(metric: str | None) -> str | None:
    """maximize / minimize for a metric name (None when unknown): how a sweep's sweeper and `textclf report` rank
    runs by it."""
    if metric not in METRICS:
        return None
    return "maximize" if METRICS[metric] else "minimize"


def compute_metrics(space, y_true: np.ndarray, outputs: np.ndarray, decided: np.ndarray | None = None) -> dict:
    """Every metric of the task (SPEC §1) except `loss`, which the caller adds. `decided`: the decisions to
    score instead of space.decide(outputs) (thresholds chosen out of sample); ranking metrics use `outputs`.

    Macro averages are over the classes present in y_true or in the decisions (sklearn's labels=None): a class
    a fold neither has nor predicts does not count as F1 0. Binary F1 is that of space.positive."""
    task = space.task
    if task == "regression":
        return regression_metrics(y_true, outputs)
    decided = space.decide(outputs) if decided is None else decided
    if task == "multilabel":
        y = y_true.astype(np.int64)
        present = [k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
        auc = float(roc_auc_score(y[:, present], outputs[:, present], average="macro")) if present else float("nan")
        return {"micro_f1": float(f1_score(y, decided, average="micro", zero_division=0)),
                "macro_f1": multilabel_macro_f1(y, decided),
                "subset_accuracy": float(accuracy_score(y, decided)), "roc_auc": auc}
    out = {"accuracy": float(accuracy_score(y_true, decided)),
           "macro_f1": float(f1_score(y_true, decided, average="macro", zero_division=0)),
           "micro_f1": float(f1_score(y_true, decided, average="micro", zero_division=0))}
    if task == "binary":
        pos = space.positive
        out["f1"] = float(f1_score(y_true == pos, decided == pos, zero_division=0))
        both = len(np.unique(y_true)) == 2
        out["roc_auc"] = float(roc_auc_score(y_true == pos, outputs[:, pos])) if both else float("nan")
    return out


def present_labels(y: np.ndarray, decided: np.ndarray) -> list[int]:
    """Multilabel columns with a positive truth or a positive decision: the ones a macro mean counts."""
    return [k for k in range(y.shape[1]) if y[:, k].any() or decided[:, k].any()]


def multilabel_macro_f1(y: np.ndarray, decided: np.ndarray) -> float:
    """Macro F1 over the present labels; 0.0 when no label is present (sklearn's zero_division=0)."""
    present = present_labels(y, decided)
    if not present:
        return 0.0
    return float(f1_score(y, decided, average="macro", labels=present, zero_division=0))


def regression_metrics(y_true: np.ndarray, pred: np.ndarray) -> dict:
    err = pred - y_true
    pearson, spearman = [], []
    for j in range(y_true.shape[1]):
        constant = np.ptp(y_true[:, j]) == 0 or np.ptp(pred[:, j]) == 0
        pearson.append(float("nan") if constant else float(pearsonr(y_true[:, j], pred[:, j])[0]))
        spearman.append(float("nan") if constant else float(spearmanr(y_true[:, j], pred[:, j])[0]))
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
            "pearson": float(np.mean(pearson)), "spearman": float(np.mean(spearman))}


def per_class_report(space, y_true: np.ndarray, outputs: np.ndarray, decided: np.ndarray | None = None) -> dict | None:
    """sklearn's classification report (precision, recall, F1, support per class) for class tasks: every class
    is listed, and its "macro avg" is over the present classes, as the macro_f1 metric is."""
    if space.task == "regression":
        return None
    decided = space.decide(outputs) if decided is None else decided
    y = y_true.astype(np.int64) if space.task == "multilabel" else y_true
    report = classification_report(y, decided, labels=list(range(len(space.names))), target_names=space.names,
                                   output_dict=True, zero_division=0)
    present = (present_labels(y, decided) if space.task == "multilabel"
               else sorted(set(np.unique(y).tolist()) | set(np.unique(decided).tolist())))
    if present and "macro avg" in report:
        p, r, f, _ = precision_recall_fscore_support(y, decided, labels=present, average="macro", zero_division=0)
        report["macro avg"].update({"precision": float(p), "recall": float(r), "f1-score": float(f)})
    return report


def better(metric: str, new: float, best: float | None) -> bool:
    """Whether `new` is a new best. NaN (constant predictions make Pearson, Spearman, ROC-AUC undefined) never
    beats anything, and any finite value beats a NaN best; the first value is taken when there is no best yet,
    so a fold always has one."""
    if best is None:
        return True
    if np.isnan(new):
        return False
    if np.isnan(best):
        return True
    return new > best if METRICS.get(metric, True) else new < best


def summarize(folds: list[dict]) -> tuple[dict, dict]:
    """Mean and standard deviation (population) of every numeric metric across folds."""
    keys = [k for k, v in folds[0].items() if isinstance(v, (int, float)) and k != "fold"]
    mean = {k: float(np.mean([f[k] for f in folds])) for k in keys}
    std = {k: float(np.std([f[k] for f in folds])) for k in keys}
    return mean, std
