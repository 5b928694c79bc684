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
  pseudo_labels.json     with pseudo_label=default: the teacher, thresholds, texts kept per class, their row numbers
  distill.json           a textclf distill run: the teacher, alpha, where the targets came from, the row counts
  time_plan.json         with trainer.time_limit: the measured seconds per step and the epochs and folds planned (a
                         resume keeps the plan)
  mlflow_run.json        with logger=mlflow: the MLflow run a resume goes on logging into
  oof.csv                out-of-fold predictions: probabilities per class and the predicted label
  metrics.json           every fold's metrics, mean and std across folds, out-of-fold metrics
  test_predictions.csv   when data.test_file is given: probabilities averaged over folds
  label_issues.csv       the training rows whose label looks wrong (cleanlab on the out-of-fold probabilities; needs
                         textclf[cleanlab]), most likely wrong first; regression: the largest out-of-fold residuals
  data_checks.json       duplicates and near duplicates, training texts in the test table, texts cut to max_length,
                         class balance, the label issues' summary (textclf.observe.analysis)
  *.png                  plots (plots=true): learning_curves.png; confusion_matrix.png and reliability.png
                         (classification); precision_recall.png (binary, multilabel); predicted_vs_true.png (regression)
  report.html            the run's error analysis in one self-contained page (textclf report <run folder> rebuilds it)
  run.json               written last: the run is finished (the SHA-256 of every file predict, export, merge and
                         ensemble load: config, labels, backbone/ files, fold weights and outputs, tables)
  .textclf-record.json   the folder's own record of what textclf writes in it: a name (or a folder, `name/`) not in
                         it is the user's, and textclf never writes, replaces or removes it
  export/                `textclf export`'s default output (export.json: the SHA-256 of every file in it)
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

from textclf.errors import TextclfError
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
PSEUDO_LABELS = "pseudo_labels.json"
DISTILL = "distill.json"
TIME_PLAN = "time_plan.json"
MLFLOW_STATE = "mlflow_run.json"
OOF = "oof.csv"
METRICS = "metrics.json"
TEST_PREDICTIONS = "test_predictions.csv"
LABEL_ISSUES = "label_issues.csv"
DATA_CHECKS = "data_checks.json"
MANIFEST = "run.json"
REPORT_HTML = "report.html"
RECORD = ".textclf-record.json"
EXPORT = "export"
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
RUN_OUTPUTS = (MANIFEST, METRICS, OOF, TEST_PREDICTIONS, INPUTS, LABELS, CONFIG, INIT_REPORT, AUGMENT, PSEUDO_LABELS, DISTILL,
               TIME_PLAN, MLFLOW_STATE,
               MLFLOW_STATE + ".tmp", REPORT_HTML, LABEL_ISSUES, DATA_CHECKS, *PLOT_FILES)
#: every file textclf writes at the top of a run folder (besides backbone/ and fold_<k>/): predict never writes over
#: one of them
RUN_FILES = frozenset({*RUN_OUTPUTS, FOLDS, LOG, STATUS, LOCK})
#: Hydra's record of the job, written into the folder before textclf's code runs (hydra.output_subdir)
HYDRA_DIR = ".hydra"
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


# ----------------------------------------------------------------------------- the record: what is textclf's
def recorded(directory: str | os.PathLike) -> set[str] | None:
    """The names textclf recorded as its own in a folder it writes (a run folder, an export folder): files by
    name, folders as `name/` (everything under them); None when the folder has no record."""
    path = Path(directory) / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        assert record.get("written_by") == "textclf" and isinstance(record.get("paths"), list)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AssertionError, AttributeError):
        raise TextclfError(f"{path} is not textclf's record of the folder (unreadable or edited): textclf "
                           f"cannot tell its own files from yours there, so it writes nothing into "
                           f"{directory}; use another folder") from None
    return {str(p) for p in record["paths"]}


def claim(directory: str | os.PathLike, names) -> None:
    """Add names (files, or folders as `name/`) to the folder's record, before textclf writes them."""
    have = recorded(directory) or set()
    names = {str(n) for n in names}
    if not names - have:
        return
    write_json(Path(directory) / RECORD, {"written_by": "textclf", "paths": sorted(have | names)})


def is_recorded(directory: str | os.PathLike, relative: str, record: set[str] | None = None) -> bool:
    """relative (a path inside the folder) is textclf's: named in the record, or under a folder named there."""
    record = recorded(directory) if record is None else record
    parts = Path(relative).parts
    name = parts[-1] if parts else ""
    if len(parts) == 1 and name.startswith(".") and name.endswith(".tmp"):  # an interrupted atomic write
        return any(name.startswith(f".{r}.") for r in record or ())
    return bool(record) and (str(Path(relative)) in record
                             or any("/".join(parts[:i]) + "/" in record for i in range(1, len(parts) + 1)))


def foreign(directory: str | os.PathLike, allowed=()) -> list[str]:
    """What a folder holds that textclf did not record as its own (the lock and the record apart; `allowed`: names
    the caller knows are its own, such as the .hydra/ folder and log Hydra has just written for this job)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    record = recorded(directory) or set()
    out = []
    for entry in sorted(directory.iterdir()):
        name = entry.name
        if name in (RECORD, LOCK) or name in allowed:
            continue
        if name in record or f"{name}/" in record:
            continue
        if name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{r.rstrip('/')}.")
                                                                   for r in (*record, RECORD, LOCK)):
            continue  # an interrupted atomic write of a recorded file
        out.append(name + ("/" if entry.is_dir() else ""))
    return out


def writes_name(name: str) -> bool:
    """A run writes an entry of this name at the top of its folder."""
    name = name.rstrip("/")
    return name in {n.rstrip("/") for n in RUN_NAMES} or fold_index(Path(name)) is not None or name == EXPORT


def refuse_foreign(directory: str | os.PathLike, what: str, way_out: str, allowed=(), *,
                   keep_others: bool = False) -> None:
    """A clear error, before anything is written, when the folder holds files textclf did not make. keep_others:
    only those where textclf would write are refused (the others stay as they are)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise TextclfError(f"{what} {str(directory)!r} is a file, not a folder: {way_out}")
    found = foreign(directory, allowed)
    if keep_others:
        found = [n for n in found if writes_name(n)]
    if found:
        shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        raise TextclfError(f"{what} {str(directory)!r} holds files textclf did not write ({shown}); textclf writes "
                           f"only into a folder of its own and leaves yours as they are: {way_out}")


#: what a run writes at the top of its folder, recorded before it writes any of them
RUN_NAMES = (*sorted(RUN_FILES), f"{BACKBONE}/", f"{HYDRA_DIR}/")


def adopt(run_dir: str | os.PathLike, allowed=(), overwrite: bool = False) -> None:
    """Before a run writes into run_dir: refuse a folder holding anything textclf did not record as its own (a
    user's folder, or a file of the user's in a run folder), then record the names the run writes. `allowed`: what
    Hydra has written for this very job (a multirun job's .hydra/ and log, written before textclf's code runs).
    A file of the user's where the run writes its own is always refused. Other files of the user's stay as they
    are beside a textclf run (a folder with a record); a folder that is not one yet is refused for them unless
    overwrite=true, as a finished run is."""
    keep = overwrite or recorded(run_dir) is not None
    # a folds.csv put there is an input: the split the run reuses (checked against the data), then its own
    allowed = (*allowed, FOLDS)
    in_the_way = any(writes_name(n) for n in foreign(run_dir, allowed)) if Path(run_dir).is_dir() else True
    refuse_foreign(run_dir, "run folder", "train into another folder (hydra.run.dir=<new folder>), or move those "
                   "files out of it" + ("" if keep or in_the_way else
                                        " (overwrite=true trains beside them and keeps them)"),
                   allowed, keep_others=keep)
    claim(run_dir, RUN_NAMES)


def claim_inside_run(path: str | os.PathLike) -> None:
    """A folder textclf writes inside a run folder (export's default output): recorded in that run folder's record,
    so a rerun of the run does not take it for a folder of the user's."""
    path = Path(path)
    parent = path.parent
    if (parent / RECORD).is_file() and not is_recorded(parent, path.name):
        claim(parent, [path.name + "/"])
