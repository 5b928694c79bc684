"""How a run scores a fold's model on its validation rows: the Trainer's evaluator.

Each evaluation predicts every validation sequence, folds a long text's windows into its row
(model.window_aggregate), and scores the rows with the task's metrics (score_logits); the Trainer keeps the best
evaluation's outputs as the fold's out-of-fold predictions.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from textclf.data.metrics import TUNED_METRICS, compute_metrics
from textclf.data.tables import Encoded
from textclf.data.tasks import LabelSpace, tune_space
from textclf.engine.trainer import FitSettings, Scores, predict_logits


class TaskEvaluator:
    """The task's metrics on one fold's validation rows. loss_fn (the training loss, kept on the CPU) adds the
    validation loss; tuned (multilabel with tune_threshold on) adds tuned_<metric> for each decision metric;
    threshold is the default decision threshold."""

    def __init__(self, loader, encoded: Encoded, labels: LabelSpace, y: np.ndarray, settings: FitSettings, *,
                 loss_fn=None, aggregate: str = "mean", tuned: bool = False, threshold: float = 0.5):
        self.loader, self.encoded, self.labels, self.y, self.settings = loader, encoded, labels, y, settings
        self.loss_fn, self.aggregate, self.tuned, self.threshold = loss_fn, aggregate, tuned, threshold

    def evaluate(self, model: torch.nn.Module) -> Scores:
        s = self.settings
        rows, logits = predict_logits(model, self.loader, s.device, s.precision, desc=f"{s.desc} eval")
        sequences = len(rows)
        rows, logits = self.encoded.aggregate(rows, logits, self.aggregate)  # sequences -> input rows
        metrics = score_logits(self.labels, self.y[rows], logits, self.loss_fn, tuned=self.tuned,
                               default=self.threshold)
        return Scores(metrics, rows, logits, sequences)


def score_logits(labels: LabelSpace, y_true: np.ndarray, logits: np.ndarray, loss_fn=None,
                 tuned: bool = False, default: float = 0.5) -> dict:
    """The task's metrics from raw logits, plus the loss (the training objective) when loss_fn is given. With
    `tuned` (multilabel, tune_threshold on) also tuned_<metric> for each decision metric: decided at per-label
    thresholds tuned on these same rows, which is what the run's decisions will be after tuning (an evaluation's
    model is chosen by them; the thresholds themselves are tuned again, out of sample, on the out-of-fold rows)."""
    outputs = labels.outputs(logits)
    out = compute_metrics(labels, y_true, outputs)
    if tuned and labels.task == "multilabel":
        thresholds, _ = tune_space(labels, y_true, outputs, default)
        decided = dataclasses.replace(labels, threshold=thresholds).decide(outputs)
        at = compute_metrics(labels, y_true, outputs, decided=decided)
        out.update({f"tuned_{k}": at[k] for k in TUNED_METRICS if k in at})
    if loss_fn is not None:
        with torch.no_grad():
            out["loss"] = float(loss_fn(torch.from_numpy(logits).float(), torch.from_numpy(y_true)))
    return out
