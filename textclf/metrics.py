"""Per-task metrics from class probabilities."""
from __future__ import annotations

import numpy as np

#: metric name -> True when larger is better
METRICS = {"accuracy": True, "macro_f1": True, "micro_f1": True, "loss": False, "f1": True, "roc_auc": True}


def metrics_for_task(task: str) -> list[str]:
    names = ["accuracy", "macro_f1", "micro_f1", "loss"]
    return names + (["f1", "roc_auc"] if task == "binary" else [])


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, task: str) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    y_pred = probs.argmax(axis=1)
    labels = list(range(probs.shape[1]))
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", labels=labels, zero_division=0)),
    }
    if task == "binary":
        out["f1"] = float(f1_score(y_true, y_pred, zero_division=0))
        out["roc_auc"] = float(roc_auc_score(y_true, probs[:, 1])) if len(np.unique(y_true)) == 2 else float("nan")
    return out


def cross_entropy(y_true: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1.0)
    return float(-np.log(p).mean())


def better(metric: str, new: float, best: float | None) -> bool:
    if best is None:
        return True
    return new > best if METRICS.get(metric, True) else new < best


def summarize(folds: list[dict]) -> tuple[dict, dict]:
    """Mean and standard deviation (population) of every numeric metric across folds."""
    keys = [k for k, v in folds[0].items() if isinstance(v, (int, float)) and k != "fold"]
    mean = {k: float(np.mean([f[k] for f in folds])) for k in keys}
    std = {k: float(np.std([f[k] for f in folds])) for k in keys}
    return mean, std
