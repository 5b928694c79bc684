"""The named choices of the config, as plain values: the schema checks a config against them before anything heavy
loads, and the modules that act on them (data.tables, data.metrics, engine.calibrate) import them from here, so each
list is spelled once and reading it loads nothing."""
from __future__ import annotations

#: model.truncation: which tokens of a long text the model sees (window: all of them, in overlapping windows)
TRUNCATIONS = ("head", "tail", "head_tail", "window")
#: model.window_aggregate: how the windows' outputs of one text become its output
AGGREGATES = ("mean", "max")
#: calibrate: how out-of-fold logits are calibrated
CALIBRATIONS = ("none", "temperature")

#: metric name -> True when larger is better (trainer.monitor names one, or auto)
METRICS = {"accuracy": True, "macro_f1": True, "micro_f1": True, "f1": True, "roc_auc": True,
           "subset_accuracy": True, "rmse": False, "mae": False, "pearson": True, "spearman": True, "loss": False}
#: multilabel decision metrics that evaluations also score at thresholds tuned on their own rows (tuned_<name>)
TUNED_METRICS = ("micro_f1", "macro_f1", "subset_accuracy")
METRICS.update({f"tuned_{k}": True for k in TUNED_METRICS})
