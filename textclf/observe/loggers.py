"""Loggers: callbacks (textclf.engine.callbacks) that record a run's events. The `logger` config group
composes them: logger=[csv,tensorboard,mlflow].

  CSVLogger          fold_<k>/steps.csv and fold_<k>/history.csv in the run folder (no extra package)
  TensorBoardLogger  tensorboard/fold_<k>/ event files (one TensorBoard run per fold) and tensorboard/hparams/
                     (the run's settings and CV score for the HParams dashboard); pip install 'textclf[tensorboard]'
  MLflowLogger       one MLflow run per textclf run, one nested run per fold; pip install 'textclf[mlflow]'

The optional packages are imported by the logger's constructor, never at the top of this module (every run
imports it), and a missing one is a TextclfError that names the extra to install.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hydra.utils import get_original_cwd

try:
    import fcntl  # POSIX: the lock beside a local SQLite store
except ImportError:  # elsewhere no lock
    fcntl = None

from textclf.engine.callbacks import Callback, RunContext
from textclf.errors import TextclfError
from textclf.run.folder import HISTORY, MLFLOW_STATE, STEPS, fold_dir

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- csv
class CSVLogger(Callback):
    """fold_<k>/steps.csv (one row per logged optimizer step) and fold_<k>/history.csv (one row per evaluation),
    appended as the run goes, so `tail -f` shows a run live. A resumed fold drops the rows logged after its
    checkpoint, so the files equal an uninterrupted run's."""

    FILES = {"on_step": STEPS, "on_evaluate": HISTORY}

    def __init__(self):
        self.run_dir: Path | None = None

    def on_run_start(self, run: RunContext) -> None:
        self.run_dir = Path(run.run_dir)

    def on_fold_start(self, fold: int, start_step: int) -> None:
        for name in self.FILES.values():
            path = self._path(fold, name)
            if start_step == 0:
                path.unlink(missing_ok=True)
            elif path.exists():
                _truncate_after(path, start_step)

    def on_step(self, fold: int, row: dict) -> None:
        self._append(self._path(fold, STEPS), row)

    def on_evaluate(self, fold: int, row: dict) -> None:
        self._append(self._path(fold, HISTORY), row)

    def _path(self, fold: int, name: str) -> Path:
        folder = fold_dir(self.run_dir, fold)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    @staticmethod
    def _append(path: Path, row: dict) -> None:
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _truncate_after(path: Path, step: int) -> None:
    """Keep the header and the rows with step <= `step` (a row a killed process left half written, whose step
    does not parse, goes too)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    col = rows[0].index("step") if "step" in rows[0] else None

    def keep(r: list[str]) -> bool:
        if col is None:
            return True
        if len(r) != len(rows[0]):
            return False
        try:
            return float(r[col]) <= step
        except ValueError:
            return False

    kept = [rows[0]] + [r for r in rows[1:] if keep(r)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(kept)


# ----------------------------------------------------------------------------- shared helpers
def flatten_config(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> scalar values (str, int, float, bool, None) of a plain config tree; a list becomes one
    JSON string value ('["a", "b"]'), an empty mapping is left out."""
    out: dict[str, Any] = {}
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            out.update(flatten_config(value, f"{prefix}{key}."))
        return out
    key = prefix.rstrip(".")
    if isinstance(cfg, (list, tuple)):
        out[key] = json.dumps(list(cfg), default=str)
    elif cfg is None or isinstance(cfg, (str, int, float, bool)):
        out[key] = cfg
    else:
        out[key] = str(cfg)
    return out


def param_text(value: Any) -> str:
    """A config value as text, YAML-like: null, true/false, numbers and strings as they are."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def numbers(row: dict, skip: tuple[str, ...] = ("step",)) -> Iterator[tuple[str, float]]:
    """The (key, float) pairs of a row's numeric values; None, text and the keys in `skip` are left out."""
    for key, value in row.items():
        if key in skip or value is None or isinstance(value, str):
            continue
        try:
            yield str(key), float(value)
        except (TypeError, ValueError):
            continue


def summary_metrics(summary: dict) -> dict[str, float]:
    """The numbers a run ends with, from metrics.json's content: score (the CV score, mean[monitor]),
    mean/<metric>, std/<metric>, oof/<metric> and test/<metric> (nested values as test/<a>/<b>)."""
    out: dict[str, float] = {}
    score = summary.get("score")
    if score is None and summary.get("monitor") in (summary.get("mean") or {}):
        score = summary["mean"][summary["monitor"]]
    if score is not None:
        out["score"] = float(score)

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}/{k}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)

    for part in ("mean", "std", "oof", "test"):
        if isinstance(summary.get(part), dict):
            walk(summary[part], part)
    return out


def launch_dir() -> Path:
    """The folder the user started textclf from: Hydra's original working directory inside a Hydra app (the same
    as the current one, since textclf keeps hydra.job.chdir=false), else the current one."""
    try:
        return Path(get_original_cwd())
    except ValueError:  # outside a Hydra app
        return Path.cwd()


def stamp_name(folder: str | Path) -> str:
    """'2026-12-02_10-00-00' for a folder .../2026-12-02/10-00-00 (Hydra's default run and sweep folders), else
    the folder's own name."""
    parts = Path(folder).parts
    if len(parts) >= 2 and re.fullmatch(r"\d{4}-\d{2}-\d{2}", parts[-2]) and re.fullmatch(r"[\d-]+", parts[-1]):
        return f"{parts[-2]}_{parts[-1]}"
    return Path(folder).name or str(folder)


def _fold_of(path: Path) -> int | None:
    m = re.fullmatch(r"fold_(\d+)", path.name)
    return int(m.group(1)) if m else None


# ----------------------------------------------------------------------------- tensorboard
class TensorBoardLogger(Callback):
    """TensorBoard event files inside the run folder: <run>/tensorboard/fold_<k>/ (one TensorBoard run per fold:
    train/<key> for every number of a step row, eval/<key> for every number of an evaluation row, at the
    optimizer step) and, at the run's end, <run>/tensorboard/hparams/ (the flattened config as hyper-parameters,
    with score, mean/<metric>, std/<metric>, oof/<metric> as that session's metrics in the HParams dashboard).

    `tensorboard --logdir <run folder>` shows a run; `tensorboard --logdir <sweep folder>` compares a sweep's jobs
    (each job is one HParams session). A resumed fold purges what its earlier process logged after the checkpoint
    it goes on from (the rows with step <= start_step stay, as in the CSV files); a fold trained again from step 0,
    and the fold folders of a run started over with other settings, lose their old event files."""

    def __init__(self, subdir: str = "tensorboard", flush_secs: int = 30, hparams: bool = True):
        try:
            import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it; checked first for a clear message)
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TextclfError("logger=tensorboard needs the tensorboard package: "
                               "pip install 'textclf[tensorboard]'") from None
        self._writer_cls = SummaryWriter
        self.subdir, self.flush_secs, self.hparams = str(subdir), int(flush_secs), bool(hparams)
        self.root: Path | None = None
        self.config: dict = {}
        self.writers: dict[int, Any] = {}

    def on_run_start(self, run: RunContext) -> None:
        run_dir = Path(run.run_dir)
        self.root, self.config = run_dir / self.subdir, run.config or {}
        if self.root.is_dir():
            # a run started over with other settings (its fold_<k>/ folders are gone): its curves go too
            for folder in self.root.iterdir():
                if folder.is_dir() and _fold_of(folder) is not None and not (run_dir / folder.name).exists():
                    shutil.rmtree(folder, ignore_errors=True)

    def on_fold_start(self, fold: int, start_step: int) -> None:
        self._close_writer(fold)
        folder = self.root / f"fold_{fold}"
        if start_step > 0:
            # TensorBoard drops the earlier events with step >= purge_step: the rows up to the checkpoint stay
            self.writers[fold] = self._writer_cls(log_dir=str(folder), flush_secs=self.flush_secs,
                                                  purge_step=int(start_step) + 1)
        else:
            _remove_event_files(folder)
            self.writers[fold] = self._writer_cls(log_dir=str(folder), flush_secs=self.flush_secs)

    def on_step(self, fold: int, row: dict) -> None:
        writer, step = self._writer(fold), int(row["step"])
        for key, value in numbers(row):
            writer.add_scalar(f"train/{key}", value, step)

    def on_evaluate(self, fold: int, row: dict) -> None:
        writer, step = self._writer(fold), int(row["step"])
        for key, value in numbers(row):
            writer.add_scalar(f"eval/{key}", value, step)
        writer.flush()  # evaluations are few: each one is on disk (and in a live TensorBoard) at once

    def on_fold_end(self, fold: int, result: dict) -> None:
        self._close_writer(fold)

    def on_run_end(self, summary: dict) -> None:
        for fold in list(self.writers):
            self._close_writer(fold)
        if not self.hparams:
            return
        from torch.utils.tensorboard.summary import hparams

        metrics = summary_metrics(summary)
        values = {k: v for k, v in flatten_config(self.config).items() if v is not None}
        values = {k: param_text(v) if isinstance(v, bool) else v for k, v in values.items()}
        # the session start and end records only: without an experiment record of its own, the HParams
        # dashboard builds the table from every session it finds, so a sweep folder lists all of its jobs' keys
        _, start, end = hparams(values, metrics)
        folder = self.root / "hparams"
        shutil.rmtree(folder, ignore_errors=True)  # written once per run: a rerun's replaces it
        with self._writer_cls(log_dir=str(folder)) as writer:
            writer.file_writer.add_summary(start)
            writer.file_writer.add_summary(end)
            for key, value in metrics.items():
                writer.add_scalar(key, value, 0)

    def close(self, status: str) -> None:
        for fold in list(self.writers):
            self._close_writer(fold)

    def _writer(self, fold: int):
        if fold not in self.writers:  # a row for a fold whose start this logger did not see
            self.writers[fold] = self._writer_cls(log_dir=str(self.root / f"fold_{fold}"), flush_secs=self.flush_secs)
        return self.writers[fold]

    def _close_writer(self, fold: int) -> None:
        writer = self.writers.pop(fold, None)
        if writer is not None:
            writer.flush()
            writer.close()


def _remove_event_files(folder: Path) -> None:
    if folder.is_dir():
        for path in folder.glob("events.out.tfevents.*"):
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- mlflow
#: a run's status in textclf -> the MLflow run status it ends with
MLFLOW_STATUS = {"ok": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
#: what every MLflow tracking server takes: older servers cap param values at 500 characters (newer at 6000),
#: keys at 250; config.yaml (an artifact) has every value in full
PARAM_VALUE_MAX, KEY_MAX, BATCH_MAX = 500, 250, 100


class MLflowLogger(Callback):
    """One MLflow run per textclf run, with one nested run per fold (train/<key> and eval/<key> metrics at the
    optimizer step, best/<metric> when the fold ends). The parent run gets the flattened config as parameters
    (values over 500 characters cut, longer keys left out), the tags textclf.run_dir/task/monitor (and
    textclf.sweep_dir/job/overrides in a sweep), at the end score (the CV score), mean/, std/, oof/ and test/
    metrics, and the run's files (summary["artifacts"]: metrics.json, config.yaml, plots) as artifacts; it ends
    FINISHED, FAILED or KILLED with the run.

    Experiment: `experiment`, else in a Hydra multirun one per sweep ("textclf-sweep-2026-12-02_10-00-00", from
    the sweep folder), else "textclf". Tracking URI: `tracking_uri`, else $MLFLOW_TRACKING_URI, else
    sqlite:///mlflow.db (MLflow's own default store, a SQLite file) with artifacts in ./mlruns, a relative path
    always taken from the folder textclf was started in (not the run folder); parallel sweep jobs creating a new
    SQLite store take turns (<database>.lock beside it). `mlflow ui` shows them; it needs SQLAlchemy 2, which the
    sweep extra's SQLAlchemy<2 pin rules out in the same environment (logging itself works with 1.4). The run's id is kept in
    <run>/mlflow_run.json: resuming the run (or rerunning it into its folder with the same settings) logs into
    the same MLflow run, and a resumed fold into the same nested run."""

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 tags: dict | None = None):
        try:
            import mlflow  # noqa: F401
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise TextclfError("logger=mlflow needs the mlflow package: pip install 'textclf[mlflow]'") from None
        self._client_cls = MlflowClient
        self.tracking_uri = resolve_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None,
                                                 launch_dir())
        _check_file_store(self.tracking_uri)
        self.experiment = str(experiment) if experiment else None
        self.run_name = str(run_name) if run_name else None
        self.tags = {str(k): param_text(v) for k, v in dict(tags or {}).items()}
        self.client = None
        self.run_dir: Path | None = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.fold_runs: dict[int, str] = {}
        self.open_folds: set[int] = set()
        self.failures: list[str] = []  # logging calls that failed (warned once each; training goes on)

    # -------------------------------------------------------------------- events
    def on_run_start(self, run: RunContext) -> None:
        from mlflow.exceptions import MlflowException

        self.run_dir = Path(run.run_dir)
        with _sqlite_lock(self.tracking_uri):
            # the client's store creates (or upgrades) the tables of a SQLite database on first use: parallel sweep
            # jobs (launcher=joblib) doing that at once collide ("duplicate column name"), so they take turns
            self.client = self._client_cls(tracking_uri=self.tracking_uri)
            self.client.search_experiments(max_results=1)
        state = self._read_state()
        existing_params: dict = {}
        if state and any(_fold_of(p) is not None for p in self.run_dir.glob("fold_*")):
            # the same run going on (its folds' folders are still there): log into the same MLflow run
            try:
                old = self.client.get_run(state["run_id"])
            except MlflowException:
                old = None
            if old is not None and old.info.lifecycle_stage == "active":
                self.run_id, self.experiment_id = old.info.run_id, old.info.experiment_id
                existing_params = dict(old.data.params)
                self.fold_runs = {int(k): v for k, v in (state.get("folds") or {}).items()}
                self.client.update_run(self.run_id, status="RUNNING")
                self.client.set_tag(self.run_id, "textclf.resumed", "true")
        if self.run_id is None:
            name = self.experiment or (f"textclf-sweep-{stamp_name(run.sweep['dir'])}" if run.sweep else "textclf")
            self.experiment_id = self._experiment_id(name)
            self.run_id = self.client.create_run(self.experiment_id, run_name=self._run_name(run),
                                                 tags=self._run_tags(run)).info.run_id
            self.fold_runs = {}
        self._write_state()
        log.info("MLflow: run %s in experiment %s at %s", self.run_id, self.experiment_id, self.tracking_uri)
        params = {}
        for key, value in flatten_config(run.config or {}).items():
            key = _key(key)
            if len(key) <= KEY_MAX and key not in existing_params:  # a logged param cannot change value
                params[key] = param_text(value)[:PARAM_VALUE_MAX]
        self._log_batch(self.run_id, params=params, strict=True)

    def on_fold_start(self, fold: int, start_step: int) -> None:
        self._safe("fold start", self._start_fold, fold, start_step)

    def on_step(self, fold: int, row: dict) -> None:
        self._safe("step metrics", self._log_row, fold, "train", row)

    def on_evaluate(self, fold: int, row: dict) -> None:
        self._safe("evaluation metrics", self._log_row, fold, "eval", row)

    def on_fold_end(self, fold: int, result: dict) -> None:
        self._safe("fold result", self._end_fold, fold, result)

    def on_run_end(self, summary: dict) -> None:
        self._safe("run metrics", self._end_run, summary)

    def close(self, status: str) -> None:
        if self.client is None or self.run_id is None:
            return
        state = MLFLOW_STATUS.get(status, "FAILED")
        for fold in sorted(self.open_folds):
            self._safe("fold status", self.client.set_terminated, self.fold_runs[fold], state)
        self.open_folds.clear()
        self._safe("run status", self.client.set_terminated, self.run_id, state)

    # -------------------------------------------------------------------- parts
    def _start_fold(self, fold: int, start_step: int) -> None:
        from mlflow.exceptions import MlflowException

        old = self.fold_runs.get(fold)
        kept = []
        if old is not None and start_step > 0:
            # MLflow cannot delete metric points: the fold's new nested run gets the earlier one's history up to
            # the checkpoint (what the killed process logged after it would otherwise show twice)
            try:
                for key in self.client.get_run(old).data.metrics:
                    kept += [m for m in self.client.get_metric_history(old, key) if m.step <= start_step]
            except MlflowException:
                kept = []
        if old is not None:  # replaced (resumed), or stale (the fold is trained again from its first step)
            try:
                self.client.delete_run(old)
            except MlflowException:
                pass
        run_id = self._new_fold_run(fold)
        if kept:
            from mlflow.entities import Metric

            kept = [Metric(m.key, m.value, m.timestamp, m.step) for m in kept]
            for i in range(0, len(kept), 1000):
                self.client.log_batch(run_id, metrics=kept[i:i + 1000])

    def _new_fold_run(self, fold: int) -> str:
        tags = {"mlflow.parentRunId": self.run_id, "textclf.fold": str(fold)}
        run_id = self.client.create_run(self.experiment_id, run_name=f"fold_{fold}", tags=tags).info.run_id
        self.fold_runs[fold] = run_id
        self.open_folds.add(fold)
        self._write_state()
        return run_id

    def _log_row(self, fold: int, prefix: str, row: dict) -> None:
        run_id = self.fold_runs.get(fold) or self._new_fold_run(fold)
        step = int(row["step"])
        self._log_batch(run_id, metrics={f"{prefix}/{k}": v for k, v in numbers(row)}, step=step)

    def _end_fold(self, fold: int, result: dict) -> None:
        # also for a fold kept from an earlier run: it has its nested run from then, or gets one now
        run_id = self.fold_runs.get(fold) or self._new_fold_run(fold)
        self._log_batch(run_id, metrics={f"best/{k}": v for k, v in numbers(result, skip=())})
        self.client.set_terminated(run_id, "FINISHED")
        self.open_folds.discard(fold)

    def _end_run(self, summary: dict) -> None:
        self._log_batch(self.run_id, metrics=summary_metrics(summary))
        for path in summary.get("artifacts") or []:
            path = Path(path)
            if not path.is_file():
                continue
            try:
                folder = path.resolve().parent.relative_to(self.run_dir.resolve()).as_posix()
            except ValueError:
                folder = ""
            self.client.log_artifact(self.run_id, str(path), artifact_path=None if folder in ("", ".") else folder)

    def _log_batch(self, run_id: str, metrics: dict | None = None, params: dict | None = None, step: int = 0,
                   strict: bool = False) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        entries = [Metric(_key(k), v, now, step) for k, v in (metrics or {}).items() if not math.isinf(v)]
        entries += [Param(k, v) for k, v in (params or {}).items()]
        for i in range(0, len(entries), BATCH_MAX):
            chunk = entries[i:i + BATCH_MAX]
            self.client.log_batch(run_id, metrics=[e for e in chunk if isinstance(e, Metric)],
                                  params=[e for e in chunk if isinstance(e, Param)])

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                return self.client.create_experiment(name, artifact_location=_artifact_location(self.tracking_uri))
            except MlflowException:  # a sweep job beside this one created it first
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage != "active":
            raise TextclfError(f"the MLflow experiment {name!r} is deleted: restore it (mlflow experiments restore "
                               f"--experiment-id {exp.experiment_id}) or log into another one "
                               f"(logger.mlflow.experiment=<name>)")
        return exp.experiment_id

    def _run_name(self, run: RunContext) -> str:
        if self.run_name:
            return self.run_name
        return self.run_dir.name if run.sweep else stamp_name(self.run_dir.resolve())

    def _run_tags(self, run: RunContext) -> dict:
        tags = {"textclf.run_dir": str(self.run_dir.resolve()), "textclf.task": str(run.task),
                "textclf.monitor": str(run.monitor), "textclf.n_folds": str(run.n_folds)}
        if run.sweep:
            tags.update({"textclf.sweep_dir": str(Path(run.sweep["dir"]).resolve()),
                         "textclf.job": str(run.sweep.get("job")),
                         "textclf.overrides": " ".join(map(str, run.sweep.get("overrides") or []))[:5000]})
        tags.update(self.tags)
        try:  # what MLflow's own start_run adds: mlflow.user, mlflow.source.name/type, the git commit
            from mlflow.tracking.context.registry import resolve_tags

            return resolve_tags(tags)
        except Exception:  # noqa: BLE001
            return tags

    def _read_state(self) -> dict | None:
        path = self.run_dir / MLFLOW_STATE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return state if state.get("tracking_uri") == self.tracking_uri and state.get("run_id") else None

    def _write_state(self) -> None:
        state = {"tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id, "run_id": self.run_id,
                 "folds": {str(k): v for k, v in sorted(self.fold_runs.items())}}
        tmp = self.run_dir / (MLFLOW_STATE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.run_dir / MLFLOW_STATE)

    def _safe(self, what: str, fn, *args) -> None:
        """A failed logging call (a tracking server gone for a while) is warned about once, and training goes on:
        the run folder keeps every number anyway."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            if what not in self.failures:
                log.warning("MLflow logging failed (%s), going on without it: %s", what, e)
            self.failures.append(what)


def resolve_tracking_uri(uri: str | None, base: Path) -> str:
    """The MLflow tracking URI with relative local paths made absolute against `base`: sqlite:///mlflow.db,
    file:mlruns, file:./mlruns and a bare path (MLflow's file store) resolve there; server and database URIs
    (http://, https://, databricks, postgresql://, sqlite:////abs.db) stay as they are. None: MLflow's own default
    store, a SQLite file mlflow.db, in `base`."""
    if not uri:
        return "sqlite:///" + (base / "mlflow.db").resolve().as_posix()
    uri = str(uri)
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and not path.startswith("/") and path != ":memory:":
            return "sqlite:///" + (base / path).resolve().as_posix()
        return uri
    if uri.startswith("file:"):
        rest = uri[len("file:"):]
        if rest.startswith("//"):  # file:///abs/path (or file://host/...)
            return uri
        return (base / rest).resolve().as_uri() if not rest.startswith("/") else Path(rest).resolve().as_uri()
    if "://" not in uri and ":" not in uri.split("/")[0] and uri != "databricks":
        return (base / uri).resolve().as_uri()  # a bare folder: the file store
    return uri


def _check_file_store(uri: str) -> None:
    if not uri.startswith("file:"):
        return
    try:
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    except ImportError:  # an MLflow from before the file store's maintenance mode takes it as it is
        return
    if not MLFLOW_ALLOW_FILE_STORE.get():
        raise TextclfError(f"logger=mlflow: {uri} is MLflow's file store, which this MLflow refuses unless "
                           f"MLFLOW_ALLOW_FILE_STORE=true is set; use a database store (the default, "
                           f"logger.mlflow.tracking_uri=sqlite:///mlflow.db) or a tracking server, or set "
                           f"MLFLOW_ALLOW_FILE_STORE=true")


@contextmanager
def _sqlite_lock(uri: str):
    """An exclusive lock on <database>.lock beside a local SQLite store (POSIX; elsewhere no lock)."""
    if not uri.startswith("sqlite:////") or fcntl is None:
        yield
        return
    path = Path(uri[len("sqlite:///"):] + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _artifact_location(uri: str) -> str | None:
    """Artifacts of an experiment textclf creates in a local SQLite store: the mlruns/ folder beside the
    database file (what MLflow itself does when started from that folder), whatever the current folder is."""
    if uri.startswith("sqlite:////"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlruns").as_uri()
    return None  # file store: inside the store; a server: the server's own artifact root


def _key(key: str) -> str:
    """A metric or param name MLflow takes: letters, digits, _ - . space : / (anything else becomes _)."""
    return re.sub(r"[^\w\-. :/]", "_", str(key))
