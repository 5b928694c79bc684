"""`textclf predict`: rebuild a run's model offline, ensemble its folds over a table, write predictions."""
from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from textclf.commands.validate import check_cuda_index
from textclf.config.schema import column_clashes, validate_predict
from textclf.data.metrics import compute_metrics
from textclf.data.tables import Collator, load_split_chunks, resolve_path, tokenize_with
from textclf.engine.trainer import resolve_device
from textclf.errors import TextclfError
from textclf.inference.ensemble import FoldModel, ensemble
from textclf.inference.onnx_folds import check_export, onnx_folds
from textclf.inference.runs import RunModel, load_run
from textclf.inference.torch_folds import torch_folds
from textclf.io import atomic_path, remove_stale_temps, unwritable
from textclf.run import folder

log = logging.getLogger(__name__)


#: output names that say another format: predict writes CSV
NOT_CSV = {".parquet", ".json", ".jsonl", ".xlsx", ".xls", ".tsv", ".gz", ".bz2", ".xz", ".zip", ".zst", ".pkl",
           ".pickle", ".feather", ".arrow", ".npy", ".npz"}


def check_output(cfg: DictConfig, run_dir: Path) -> Path:
    """Where predictions go, refused when writing there would destroy something: the input table, a file of the
    run, a folder; or when the name says a format other than CSV."""
    out = resolve_path(str(cfg.output))
    where = f"output {str(cfg.output)!r}"
    if out.is_dir():
        raise TextclfError(f"{where} is a folder: give a file name, e.g. "
                           f"output={(Path(str(cfg.output)) / 'predictions.csv').as_posix()}")
    if out.suffix.lower() in NOT_CSV:
        raise TextclfError(f"{where}: predict writes CSV, but the name ends in {out.suffix!r}; name it "
                           f"{out.name[: -len(out.suffix)] if out.suffix else out.name}.csv")
    src = resolve_path(str(cfg.input))
    if (out.exists() and src.exists() and out.samefile(src)) or out.resolve() == src.resolve():
        raise TextclfError(f"{where} is the input table: the predictions would overwrite your data; choose "
                           f"another output, e.g. output=predictions.csv")
    try:
        inside = out.resolve().relative_to(run_dir.resolve())
    except ValueError:
        inside = None
    if inside is not None and (str(inside) in folder.RUN_FILES or inside.parts[0] == folder.BACKBONE
                               or inside.parts[0].startswith(folder.FOLD_PREFIX)):
        raise TextclfError(f"{where} is a file of the run itself ({inside}): writing predictions there would break "
                           f"the run; choose another output, e.g. output={run_dir / 'predictions.csv'}")
    problem = unwritable(out.parent)
    if problem:
        raise TextclfError(f"{where}: {problem}; choose an output in a folder you can write to")
    return out


def check_input_columns(cfg: DictConfig, run_cfg: DictConfig) -> None:
    """The columns predict reads against the run's: none named for two roles, no pair column the run never saw."""

    def key(name):
        return name if cfg[name] is not None else f"{name} (the run's data.{name})"

    columns = input_columns(cfg, run_cfg)
    clashes = column_clashes([(key(n), columns[n]) for n in ("text_col", "text_pair_col", "label_col")])
    if clashes:
        raise TextclfError("; ".join(f"{where}: {what}" for where, what in clashes))
    if cfg.text_pair_col and not run_cfg.data.text_pair_col:
        raise TextclfError(f"text_pair_col={cfg.text_pair_col}: the run was trained on single texts (no "
                           f"data.text_pair_col), so it cannot read text pairs; drop text_pair_col")


def check_predict_device(name: str):
    """predict's own `device` option (the trainer's messages name trainer.device)."""
    try:
        device = resolve_device(name)
    except TextclfError as e:
        raise TextclfError(str(e).replace("trainer.device=", "device=")) from None
    check_cuda_index(device, "device")
    return device


BACKENDS = ("torch", "onnx")


def predict(cfg: DictConfig) -> None:
    validate_predict(cfg)
    run_dir = resolve_path(str(cfg.run_dir))
    run_cfg, labels, weights = load_run(run_dir, cfg.folds)
    out = check_output(cfg, run_dir)
    check_input_columns(cfg, run_cfg)
    backend = check_backend(cfg, run_dir, weights)
    source = InputTable(str(cfg.input), input_columns(cfg, run_cfg), int(cfg.chunk_rows))
    n_rows, y_true = source.scan(labels)  # the whole input is checked before any model loads
    run = RunModel.load(run_dir, run_cfg, labels, weights)
    folds = backend(run)
    outputs = write_predictions(out, source, run, folds, batch_size=int(cfg.batch_size), n_rows=n_rows,
                                keep=y_true is not None)
    log.info("wrote %d predictions (%d fold(s) averaged, backend=%s) to %s", n_rows, len(folds), cfg.backend, out)
    if y_true is not None:
        metrics = compute_metrics(labels, y_true, outputs)
        log.info("metrics on %s: %s", cfg.input, "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        print(json.dumps(metrics, indent=2), file=sys.stdout)


def check_backend(cfg: DictConfig, run_dir: Path, weights: list[Path]) -> Callable[[RunModel], list[FoldModel]]:
    """What runs the folds, checked before the input is read: torch on predict's device, or the exported ONNX
    models (the extra installed, the export folder present and made from these very weights)."""
    if str(cfg.backend) == "onnx":
        if str(cfg.precision) != "fp32":
            raise TextclfError(f"precision={cfg.precision} applies to backend=torch; backend=onnx runs the exported "
                               f"models as they were exported (fp32, or int8 with `textclf export ... quantize=int8`): "
                               f"drop precision")
        export_dir = check_export(run_dir, weights, cfg.export_dir)
        return lambda run: onnx_folds(export_dir, run.weights, str(cfg.device))
    device = check_predict_device(str(cfg.device))
    return lambda run: torch_folds(run.weights, run.make_model, device, str(cfg.precision))


@dataclass
class InputTable:
    """The table predict reads, in chunks of chunk_rows rows."""

    path: str
    columns: DictConfig
    chunk_rows: int

    def chunks(self, warn: bool = False):
        return load_split_chunks("input", self.path, self.columns, self.chunk_rows, need_labels=False, role="input",
                                 keys={k: k for k in ("text_col", "text_pair_col", "label_col")}, warn=warn)

    def scan(self, labels) -> tuple[int, np.ndarray | None]:
        """Check every chunk as a whole-table read would (columns, texts, labels known to the run) and count the
        rows; the true labels when the table has them (for metrics)."""
        n_rows, y_parts, labelled = 0, [], None
        for _, split in self.chunks(warn=True):
            has_labels = split.labels is not None
            if labelled is None:
                labelled = has_labels
            if has_labels and labelled:
                y_parts.append(labels.encode(split.labels, f"input {self.path!r}"))
            n_rows += len(split)
        return n_rows, (np.concatenate(y_parts) if labelled and y_parts else None)


def write_predictions(out: Path, source: InputTable, run: RunModel, folds: list[FoldModel], *, batch_size: int,
                      n_rows: int, keep: bool) -> np.ndarray | None:
    """Tokenize, ensemble and write chunk after chunk into a temporary file beside `out`, renamed to `out` at the
    end: an interrupted predict leaves no file that looks complete. keep: return every row's outputs (metrics)."""
    for stale in remove_stale_temps(out):  # an earlier predict into `out` that was killed outright
        log.info("removed %s, the partial output of a predict that was killed", stale.name)
    mcfg, labels, kept = run.cfg.model, run.labels, []
    aggregate = str(mcfg.window_aggregate)
    with interrupt_as_exit(out), atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f, \
            tqdm(total=n_rows, desc="predict", unit="rows", unit_scale=True, mininterval=1.0) as bar:
        for start, split in source.chunks():
            encoded = tokenize_with(run.tokenizer, split.texts, split.pairs, mcfg, desc=None)
            outputs = ensemble(folds, encoded, Collator.for_tokenizer(run.tokenizer, encoded), labels,
                               batch_size=batch_size, aggregate=aggregate, progress=False)
            table = labels.table(outputs, extra={"row": np.arange(start, start + len(outputs))})
            table.to_csv(f, index=False, header=start == 0)
            bar.update(len(outputs))
            if keep:
                kept.append(outputs)
    return np.concatenate(kept) if keep else None


@contextlib.contextmanager
def interrupt_as_exit(out: Path):
    """Ctrl-C or SIGTERM while predicting: the partial output is removed (atomic_path) and predict exits 130 or
    143 with one line saying so, instead of a traceback."""

    def stop(signum, frame):
        raise KeyboardInterrupt(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if main else None
    try:
        yield
    except KeyboardInterrupt as e:
        signum = e.args[0] if e.args and isinstance(e.args[0], int) else signal.SIGINT
        print(f"textclf: interrupted ({signal.Signals(signum).name}): {out} was not written (the partial output was "
              f"removed)", file=sys.stderr)
        sys.exit(128 + int(signum))
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def input_columns(cfg: DictConfig, run_cfg: DictConfig) -> DictConfig:
    """The input table's columns and encoding: predict's options, else the run's own."""
    return OmegaConf.create({
        "text_col": cfg.text_col or run_cfg.data.text_col,
        "text_pair_col": cfg.text_pair_col if cfg.text_pair_col is not None else run_cfg.data.text_pair_col,
        "label_col": cfg.label_col or run_cfg.data.label_col,
        "label_sep": run_cfg.data.label_sep,
        "encoding": run_cfg.data.encoding,
        "encoding_errors": run_cfg.data.encoding_errors,
    })
