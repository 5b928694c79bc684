"""Calibration by temperature scaling (calibrate=temperature): one scalar T > 0, fitted on a run's out-of-fold
logits by minimum negative log-likelihood, divides every logit before it becomes a probability.

kind "softmax" (binary and multiclass with K logits): softmax cross-entropy, targets are class ids (N,);
kind "sigmoid" (multilabel, and binary with one logit): per-logit binary cross-entropy averaged over every
(row, logit) pair, targets are 0/1 of the logits' shape. Dividing by T keeps every logit's sign and every row's
order of logits, so argmax decisions (and thresholds at 0.5 on a sigmoid) never change.

ECE here is the top-label expected calibration error with equal-width bins: the confidence of each decision
(multiclass and binary: the largest probability, i.e. that of the predicted class; multilabel: every (row, label)
pair pooled as one binary decision, confidence max(p, 1 - p)) against how often it is right. The reliability
plot (textclf.observe.plots) draws P(positive class) instead, in 10 bins: its ECE differs.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from scipy.optimize import minimize_scalar

from textclf.errors import TextclfError

KINDS = ("softmax", "sigmoid")
LOG_T_BOUNDS = (-3.0, 3.0)  # T from about 0.05 to 20
#: sigmoid probabilities this close to 0 or 1 come back as logits of +-34.5 (float64 keeps no more of them)
EPS = 1e-15


def _check(logits: np.ndarray, y: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind not in KINDS:
        raise TextclfError(f"calibration: kind={kind!r}; use one of {', '.join(KINDS)}")
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)
    if logits.ndim != 2 or len(logits) == 0:
        raise TextclfError(f"calibration needs a non-empty rows x logits table, got shape {logits.shape}")
    if not np.isfinite(logits).all():
        raise TextclfError(f"calibration: {int((~np.isfinite(logits)).any(axis=1).sum())} out-of-fold row(s) have "
                           f"outputs that are not finite (NaN or inf): the model diverged; use calibrate=none")
    if kind == "softmax":
        if y.shape != (len(logits),) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any() or (
                y >= logits.shape[1]).any():
            raise TextclfError(f"calibration: softmax targets are {len(logits)} class ids below {logits.shape[1]}, "
                               f"got shape {y.shape}")
    elif y.shape != logits.shape or not np.isin(y, (0, 1)).all():
        raise TextclfError(f"calibration: sigmoid targets are 0/1 of the logits' shape {logits.shape}, got {y.shape}")
    return logits, y


def _nll(logits: np.ndarray, y: np.ndarray, kind: str) -> float:
    if kind == "softmax":
        top = logits.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        return float(np.mean(lse - logits[np.arange(len(y)), y]))
    return float(np.mean(np.logaddexp(0.0, logits) - y * logits))  # BCE with logits


def negative_log_likelihood(logits: np.ndarray, y: np.ndarray, kind: str) -> float:
    """Mean NLL of the targets under the logits (softmax CE per row, or BCE per (row, logit) pair)."""
    return _nll(*_check(logits, y, kind), kind)


def fit_temperature(logits: np.ndarray, y: np.ndarray, kind: str) -> float:
    """The T > 0 that minimises NLL(logits / T): a bounded 1-D search on log T in [-3, 3] (deterministic)."""
    logits, y = _check(logits, y, kind)
    found = minimize_scalar(lambda s: _nll(logits / math.exp(s), y, kind), bounds=LOG_T_BOUNDS, method="bounded",
                            options={"xatol": 1e-6})
    return float(math.exp(found.x))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise TextclfError(f"temperature must be a finite number > 0, got {temperature!r}")
    return np.asarray(logits, dtype=np.float64) / float(temperature)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, task: str, n_bins: int = 15) -> float:
    """Top-label ECE (see the module docstring): sum over equal-width confidence bins (lo, hi] of
    (rows in the bin / rows) * |accuracy in the bin - mean confidence in the bin|."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    if task == "multilabel":
        if probs.shape != y.shape:
            raise TextclfError(f"ECE: multilabel truth must have the probabilities' shape {probs.shape}, got {y.shape}")
        p, truth = probs.ravel(), y.ravel().astype(bool)
        conf, correct = np.maximum(p, 1.0 - p), (p >= 0.5) == truth
    elif task in ("binary", "multiclass"):
        if probs.ndim != 2 or y.shape != (len(probs),):
            raise TextclfError(f"ECE: {task} needs rows x classes probabilities and one class id per row, got "
                               f"{probs.shape} and {y.shape}")
        conf, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    else:
        raise TextclfError(f"ECE applies to binary, multiclass and multilabel tasks, not {task!r}")
    if len(conf) == 0:
        raise TextclfError("ECE of no rows")
    which = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = np.bincount(which, weights=correct.astype(np.float64) - conf, minlength=n_bins)
    return float(np.abs(gap).sum() / len(conf))


# ----------------------------------------------------------------------------- a task's outputs and targets
def kind_of(space) -> str:
    """How the task's logits become probabilities (textclf.data.tasks.LabelSpace.outputs)."""
    if space.task == "regression":
        raise TextclfError("calibrate=temperature applies to binary, multiclass and multilabel tasks; this task is "
                           "regression (its outputs are values, not probabilities): set calibrate=none")
    return "sigmoid" if space.task == "multilabel" or space.single_logit else "softmax"


def logits_from_outputs(space, outputs: np.ndarray) -> np.ndarray:
    """Logits that give back `outputs` under space.outputs() with no temperature: softmax log p (a row's shift
    changes nothing), sigmoid log p - log(1 - p) (one column, class 1's, for a single-logit binary space).
    Exact up to float64's rounding of the probabilities: a sigmoid logit above about 20 keeps fewer digits
    (1 - p is small), and probabilities within EPS of 0 or 1 come back as logits of +-34.5."""
    p = np.asarray(outputs, dtype=np.float64)
    if kind_of(space) == "softmax":
        return np.log(np.maximum(p, np.finfo(np.float64).tiny))
    if space.single_logit:
        p = p[:, [1]]  # outputs() gives [1 - sigmoid(z), sigmoid(z)]
    p = np.clip(p, EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def targets(space, y: np.ndarray) -> np.ndarray:
    """Encoded labels as fit_temperature takes them for the space's kind."""
    if space.task == "multilabel":
        return np.asarray(y).astype(np.int64)
    if space.single_logit:
        return (np.asarray(y) == 1).astype(np.int64)[:, None]
    return np.asarray(y).astype(np.int64)


def temperature_scaling(space, y: np.ndarray, outputs: np.ndarray) -> tuple[float, np.ndarray, dict]:
    """(T, calibrated outputs, metrics.json's calibration record) for out-of-fold `outputs` (uncalibrated
    probabilities) and their encoded labels `y`. `space` is left as it is."""
    kind, t = kind_of(space), targets(space, y)
    logits = logits_from_outputs(space, outputs)
    temperature = fit_temperature(logits, t, kind)
    calibrated = replace(space, temperature=None).outputs(apply_temperature(logits, temperature))
    record = {"method": "temperature", "temperature": temperature,
              "ece_before": expected_calibration_error(outputs, y, space.task),
              "ece_after": expected_calibration_error(calibrated, y, space.task),
              "nll_before": _nll(logits, t, kind), "nll_after": _nll(logits / temperature, t, kind),
              "fitted_on": f"out-of-fold logits ({len(logits)} rows)"}
    return temperature, calibrated, record
