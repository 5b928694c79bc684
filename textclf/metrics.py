"""Per-task metrics from model outputs (probabilities, or values for regression)."""
from __future__ import annotations

import numpy as np

#: metric name -> True when larger is better
METRICS = {"accuracy": True, "macro_f1": True, "micro_f1": True, "f1": True, "roc_auc": True,
           "subset_accuracy": True, "rmse": False, "mae": False, "pearson": True, "spearman": True, "loss": False}
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


def compute_metrics(space, y_true: np.ndarray, outputs: np.ndarray) -> dict:
    """Every metric of the task (SPEC §1) except `loss`, which the caller adds."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    task = space.task
    if task == "regression":
        return regression_metrics(y_true, outputs)
    decided = space.decide(outputs)
    if task == "multilabel":
        y = y_true.astype(np.int64)
        present = [k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
        auc = float(roc_auc_score(y[:, present], outputs[:, present], average="macro")) if present else float("nan")
        return {"micro_f1": float(f1_score(y, decided, average="micro", zero_division=0)),
                "macro_f1": float(f1_score(y, decided, average="macro", zero_division=0)),
                "subset_accuracy": float(accuracy_score(y, decided)), "roc_auc": auc}
    labels = list(range(outputs.shape[1]))
    out = {"accuracy": float(accuracy_score(y_true, decided)),
           "macro_f1": float(f1_score(y_true, decided, average="macro", labels=labels, zero_division=0)),
           "micro_f1": float(f1_score(y_true, decided, average="micro", labels=labels, zero_division=0))}
    if task == "binary":
        out["f1"] = float(f1_score(y_true, decided, zero_division=0))
        out["roc_auc"] = float(roc_auc_score(y_true, outputs[:, 1])) if len(np.unique(y_true)) == 2 else float("nan")
    return out


def regression_metrics(y_true: np.ndarray, pred: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr

    err = pred - y_true
    pearson, spearman = [], []
    for j in range(y_true.shape[1]):
        constant = np.ptp(y_true[:, j]) == 0 or np.ptp(pred[:, j]) == 0
        pearson.append(float("nan") if constant else float(pearsonr(y_true[:, j], pred[:, j])[0]))
        spearman.append(float("nan") if constant else float(spearmanr(y_true[:, j], pred[:, j])[0]))
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
            "pearson": float(np.mean(pearson)), "spearman": float(np.mean(spearman))}


def per_class_report(space, y_true: np.ndarray, outputs: np.ndarray) -> dict | None:
    """sklearn's classification report (precision, recall, F1, support per class) for class tasks."""
    from sklearn.metrics import classification_report

    if space.task == "regression":
        return None
    decided = space.decide(outputs)
    y = y_true.astype(np.int64) if space.task == "multilabel" else y_true
    return classification_report(y, decided, labels=list(range(len(space.names))), target_names=space.names,
                                 output_dict=True, zero_division=0)


def better(metric: str, new: float, best: float | None) -> bool:
    if best is None:
        return True
    if np.isnan(new):
        return False
    return new > best if METRICS.get(metric, True) else new < best


def summarize(folds: list[dict]) -> tuple[dict, dict]:
    """Mean and standard deviation (population) of every numeric metric across folds."""
    keys = [k for k, v in folds[0].items() if isinstance(v, (int, float)) and k != "fold"]
    mean = {k: float(np.mean([f[k] for f in folds])) for k in keys}
    std = {k: float(np.std([f[k] for f in folds])) for k in keys}
    return mean, std
