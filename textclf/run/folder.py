"""The run folder (Hydra's output directory): every file textclf writes there, by name, in one place.

  config.yaml            the resolved config
  train.log              the log
  labels.json            task and class names, in logit order; thresholds and temperature (for predict)
  backbone/              backbone config + tokenizer files (predict rebuilds the model offline)
  fold_<k>/              model.safetensors (best weights), result.json + outputs.npz (the fold's outputs);
                         history.csv and steps.csv with logger=csv; checkpoint/ while the fold is in flight
  folds.csv              which fold validates each training row
  inputs.json            size and SHA-256 of each data file read (a resume on changed data is refused)
  .textclf.lock          while a process runs in the folder: its pid, host and start time
  status.json            the job's outcome: running, ok (score, wall time), failed (the error) or interrupted
  init_report.json       with model.init_from: which tensors loaded, missing, unexpected, mismatched (shapes)
  augment.json           with augment=eda|mlm: the copies made, each fold's original and augmented training rows,
                         a few examples
  mlflow_run.json        with logger=mlflow: the MLflow run a resume goes on logging into
  oof.csv                out-of-fold predictions: probabilities per class and the predicted label
  metrics.json           every fold's metrics, mean and std across folds, out-of-fold metrics
  test_predictions.csv   when data.test_file is given: probabilities averaged over folds
  *.png                  plots (plots=true): learning_curves.png; confusion_matrix.png and reliability.png
                         (classification); precision_recall.png (binary, multilabel); predicted_vs_true.png (regression)
  run.json               written last: the run is finished (the SHA-256 of every file predict loads)
  .hydra/hydra.yaml      Hydra's own record of the run (hydra.output_subdir): the options chosen for each group

Every name below appears in this table, and no other module of the package spells one
(tests/integration/test_run_folder_once.py checks both), so the table and the names cannot drift.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from textclf.io import write_json
from textclf.run.lock import RunLock

if TYPE_CHECKING:
    from textclf.data.tasks import LabelSpace

CONFIG = "config.yaml"
LOG = "train.log"
LABELS = "labels.json"
BACKBONE = "backbone"
FOLDS = "folds.csv"
INPUTS = "inputs.json"
LOCK = ".textclf.lock"
STATUS = "status.json"
INIT_REPORT = "init_report.json"
AUGMENT = "augment.json"
MLFLOW_STATE = "mlflow_run.json"
OOF = "oof.csv"
METRICS = "metrics.json"
TEST_PREDICTIONS = "test_predictions.csv"
MANIFEST = "run.json"
#: Hydra writes it (hydra.output_subdir=.hydra); textclf only reads the options chosen from it
HYDRA_RECORD = ".hydra/hydra.yaml"
#: the PNGs textclf.observe.plots writes
PLOT_FILES = ("learning_curves.png", "confusion_matrix.png", "precision_recall.png", "reliability.png",
              "predicted_vs_true.png")

# ----------------------------------------------------------------------------- inside fold_<k>/
FOLD_PREFIX = "fold_"
WEIGHTS = "model.safetensors"
RESULT = "result.json"
OUTPUTS = "outputs.npz"
HISTORY = "history.csv"
STEPS = "steps.csv"
CHECKPOINT = "checkpoint"
#: what a run writes into fold_<k>/ (besides checkpoint/, wholly its own)
FOLD_FILES = (WEIGHTS, RESULT, OUTPUTS, HISTORY, STEPS)

# ----------------------------------------------------------------------------- groups of names
#: what a run writes at the top of its folder and removes when it starts over or is replaced (folds.csv apart:
#: it stays while the split settings and data are unchanged). Not removed: .hydra/ and train.log (Hydra writes
#: them for the run in progress, the log appends), status.json (the job in progress), any file of the user's
RUN_OUTPUTS = (MANIFEST, METRICS, OOF, TEST_PREDICTIONS, INPUTS, LABELS, CONFIG, INIT_REPORT, AUGMENT, MLFLOW_STATE,
               MLFLOW_STATE + ".tmp", *PLOT_FILES)
#: every file textclf writes at the top of a run folder (besides backbone/ and fold_<k>/): predict never writes over
#: one of them
RUN_FILES = frozenset({*RUN_OUTPUTS, FOLDS, LOG, STATUS, LOCK})
#: what the jobs that trained the folds of one run share, copied into the merged run (commands/merge); its
#: labels.json it writes itself, when its thresholds and temperature are tuned on every fold
SHARED = (CONFIG, FOLDS, INPUTS, BACKBONE)
#: what predict reads besides the fold weights (the manifest holds their SHA-256)
CHECKED = (CONFIG, LABELS, f"{BACKBONE}/config.json")


def fold_dir(run_dir: Path, index: int) -> Path:
    """fold_<index>/ of a run folder."""
    return Path(run_dir) / f"{FOLD_PREFIX}{index}"


def fold_index(path: Path) -> int | None:
    """k for a folder named fold_<k>, else None."""
    name = Path(path).name
    rest = name[len(FOLD_PREFIX):]
    return int(rest) if name.startswith(FOLD_PREFIX) and rest.isdigit() else None


# ----------------------------------------------------------------------------- the lock: one process per folder
def lock(run_dir: str | os.PathLike) -> RunLock:
    """Take the run folder's lock (textclf.run.lock). A `textclf train` process takes it once, at its entry:
    RunFolderGuard for a single run (before Hydra writes into the folder), run_job for a multirun's job, TrainRun
    for train() called directly (and merge). What runs inside sees that it holds it (holds) and takes nothing."""
    return RunLock(run_dir, LOCK).acquire()


def holds(run_dir: str | os.PathLike) -> bool:
    """This process holds the run folder's lock (an outer entry took it)."""
    return RunLock(run_dir, LOCK).held_here()


def release(run_dir: str | os.PathLike) -> None:
    """Remove the run folder's lock if this process holds it; nothing otherwise."""
    RunLock(run_dir, LOCK).release()


@contextlib.contextmanager
def hold(run_dir: str | os.PathLike):
    """The lock around a block: taken unless this process holds it already, and then released at the end; a lock
    an outer entry took stays for that entry to release."""
    if holds(run_dir):
        yield
        return
    taken = lock(run_dir)
    try:
        yield
    finally:
        taken.release()


# ----------------------------------------------------------------------------- status.json: the job's outcome
def write_status(run_dir: str | os.PathLike, status: dict) -> None:
    """status.json (non-finite numbers as null: it is strict JSON)."""
    write_json(Path(run_dir) / STATUS, {k: None if isinstance(v, float) and not math.isfinite(v) else v
                                        for k, v in status.items()})


def read_status(run_dir: str | os.PathLike) -> dict | None:
    """status.json, or None when the folder has none or it is unreadable."""
    try:
        return json.loads((Path(run_dir) / STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- labels.json: what outputs mean
def write_labels(run_dir: str | os.PathLike, labels: LabelSpace) -> None:
    """labels.json, written once per run, when its content is final (thresholds tuned, temperature fitted): just
    before run.json, which holds its SHA-256."""
    write_json(Path(run_dir) / LABELS, labels.to_dict())


def read_labels(run_dir: str | os.PathLike) -> LabelSpace:
    # here, not at the top: Hydra imports this module (RunFolderGuard) before the config check; tasks loads sklearn
    from textclf.data.tasks import LabelSpace

    return LabelSpace.from_dict(json.loads((Path(run_dir) / LABELS).read_text(encoding="utf-8")))


def read_choices(run_dir: str | os.PathLike):
    """The option Hydra composed for each group of the run (hydra.runtime.choices); None for a run written with
    hydra.output_subdir=null, which keeps no record."""
    record = Path(run_dir) / HYDRA_RECORD
    if not record.is_file():
        return None
    return OmegaConf.select(OmegaConf.load(record), "hydra.runtime.choices", default=None)
