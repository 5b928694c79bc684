"""`textclf predict`: rebuild a run's model offline, ensemble its folds over a table, write predictions."""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from omegaconf import DictConfig, OmegaConf

from textclf.errors import TextclfError
from textclf.io import load_weights

if TYPE_CHECKING:
    import torch

    from textclf.data.tasks import LabelSpace

log = logging.getLogger(__name__)


def find_folds(run_dir: Path, folds=None) -> list[Path]:
    paths = sorted(run_dir.glob("fold_*/model.safetensors"), key=lambda p: int(p.parent.name.split("_")[1]))
    if folds is not None:
        wanted = {int(f) for f in folds}
        paths = [p for p in paths if int(p.parent.name.split("_")[1]) in wanted]
    return paths


def load_run(run_dir: Path, folds=None) -> tuple[DictConfig, dict, list[Path]]:
    """The run's resolved config, label map and fold weights; a clear error for anything missing."""
    if not run_dir.exists():
        raise TextclfError(f"run_dir {str(run_dir)!r} does not exist or is not a folder")
    if not run_dir.is_dir():
        raise TextclfError(f"run_dir {str(run_dir)!r} is a file, not a folder: give the run folder textclf train "
                           f"wrote (it holds config.yaml, labels.json and fold_<k>/)")
    needed = ["config.yaml", "labels.json", "backbone/config.json"]
    missing = [n for n in needed if not (run_dir / n).exists()]
    if len(missing) == len(needed):
        _not_a_run_folder(run_dir)
    weights = find_folds(run_dir, folds)
    if folds is not None and not missing:
        _check_folds(run_dir, folds)
    if not weights:
        missing.append("fold_<k>/model.safetensors" + (f" for folds {list(folds)}" if folds is not None else ""))
    if missing:
        raise TextclfError(f"run_dir {str(run_dir)!r} is not a finished textclf run: missing {', '.join(missing)}")
    from textclf.run.manifest import verify

    verify(run_dir, weights)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    labels = json.loads((run_dir / "labels.json").read_text(encoding="utf-8"))
    return cfg, labels, weights


def _not_a_run_folder(run_dir: Path) -> None:
    """A fold folder or a sweep folder given as run_dir: say which folder to give instead."""
    parent = run_dir.parent
    if run_dir.name.startswith("fold_") and (parent / "config.yaml").exists():
        number = run_dir.name[len("fold_"):]
        only = f" (folds=[{number}] uses only this fold)" if number.isdigit() else ""
        raise TextclfError(f"run_dir {str(run_dir)!r} is one fold of a run: give the run folder itself, "
                           f"run_dir={parent}{only}")
    runs = sorted({p.parent for pattern in ("*/run.json", "*/*/run.json", "*/*/*/run.json")
                   for p in run_dir.glob(pattern)})
    if runs:
        shown = ", ".join(str(r.relative_to(run_dir)) for r in runs[:5]) + (" …" if len(runs) > 5 else "")
        raise TextclfError(f"run_dir {str(run_dir)!r} holds {len(runs)} run(s) (a sweep or outputs folder), not one "
                           f"run: give one of them, e.g. run_dir={runs[0]} (runs: {shown}; `textclf report "
                           f"{run_dir}` ranks them)")


def _check_folds(run_dir: Path, folds) -> None:
    have = [int(p.parent.name.split("_")[1]) for p in find_folds(run_dir)]
    wanted = [int(f) for f in folds]
    if not wanted:
        raise TextclfError(f"folds=[] picks no fold; the run has fold(s) {', '.join(map(str, have))}: pick some, or "
                           f"folds=null for all")
    absent = [f for f in wanted if f not in have]
    if absent and have:
        raise TextclfError(f"folds={wanted}: the run has no fold(s) {', '.join(map(str, absent))}; it has fold(s) "
                           f"{', '.join(map(str, have))} (folds=null uses them all)")


#: files of a run folder that predictions must never overwrite (besides backbone/ and fold_<k>/)
RUN_FILES = {"config.yaml", "labels.json", "folds.csv", "oof.csv", "metrics.json", "test_predictions.csv", "run.json",
             "train.log", "status.json", "augment.json", "init_report.json", "inputs.json"}
#: output names that say another format: predict writes CSV
NOT_CSV = {".parquet", ".json", ".jsonl", ".xlsx", ".xls", ".tsv", ".gz", ".bz2", ".xz", ".zip", ".zst", ".pkl",
           ".pickle", ".feather", ".arrow", ".npy", ".npz"}


def check_output(cfg: DictConfig, run_dir: Path) -> Path:
    """Where predictions go, refused when writing there would destroy something: the input table, a file of the
    run, a folder; or when the name says a format other than CSV."""
    from textclf.data.tables import resolve_path

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
    if inside is not None and (str(inside) in RUN_FILES or inside.parts[0] == "backbone"
                               or inside.parts[0].startswith("fold_")):
        raise TextclfError(f"{where} is a file of the run itself ({inside}): writing predictions there would break "
                           f"the run; choose another output, e.g. output={run_dir / 'predictions.csv'}")
    return out


def check_input_columns(cfg: DictConfig, run_cfg: DictConfig) -> None:
    """The columns predict reads against the run's: none named for two roles, no pair column the run never saw."""
    from textclf.config.schema import column_clashes

    def key(name):
        return name if cfg.get(name) is not None else f"{name} (the run's data.{name})"

    columns = input_columns(cfg, run_cfg)
    clashes = column_clashes([(key(n), columns[n]) for n in ("text_col", "text_pair_col", "label_col")])
    if clashes:
        raise TextclfError("; ".join(f"{where}: {what}" for where, what in clashes))
    if cfg.get("text_pair_col") and not run_cfg.data.get("text_pair_col"):
        raise TextclfError(f"text_pair_col={cfg.text_pair_col}: the run was trained on single texts (no "
                           f"data.text_pair_col), so it cannot read text pairs; drop text_pair_col")


def check_predict_device(name: str):
    """predict's own `device` option (the trainer's messages name trainer.device)."""
    from textclf.commands.validate import check_cuda_index
    from textclf.engine.trainer import resolve_device

    try:
        device = resolve_device(name)
    except TextclfError as e:
        raise TextclfError(str(e).replace("trainer.device=", "device=")) from None
    check_cuda_index(device, "device")
    return device


@dataclass
class FoldModel:
    """One fold as predict runs it: `logits(batches, desc)` gives (rows, logits) for every batch of a loader, in
    loader order, whatever runs the model (PyTorch, ONNX Runtime); desc names its progress bar (None: none)."""

    name: str
    logits: Callable[..., tuple[np.ndarray, np.ndarray]]


def ensemble(folds: list[FoldModel], encoded, collate, labels, *, batch_size: int, aggregate: str = "mean",
             progress: bool = True) -> np.ndarray:
    """The folds' outputs averaged over every row of an encoded table, in input order. Evaluation runs
    longest-first, and the input order is restored; sliding windows are aggregated per row."""
    import torch

    from textclf.data.tables import sorted_batches

    batches = sorted_batches(np.arange(len(encoded)), encoded.lengths, int(batch_size))
    loader = torch.utils.data.DataLoader(range(len(encoded)), batch_sampler=batches, collate_fn=collate)
    outputs = np.zeros((encoded.n_docs, len(labels.classes)), dtype=np.float64)
    for fold in folds:
        rows, logits = encoded.aggregate(*fold.logits(loader, f"predict {fold.name}" if progress else None), aggregate)
        outputs[rows] += labels.outputs(logits) / len(folds)
    return outputs


def ensemble_folds(weights: list[Path], make_model: Callable[[], "torch.nn.Module"], encoded, collate, labels, *,
                   batch_size: int, device, precision: str = "fp32", aggregate: str = "mean") -> np.ndarray:
    """ensemble() over a run's fold weights, each loaded when its turn comes and freed after: train's test pass
    ensembles a run's folds with this. make_model() builds an empty model to load each fold's weights into."""
    folds = [FoldModel(path.parent.name, functools.partial(_load_and_predict, path, make_model, device, precision))
             for path in weights]
    return ensemble(folds, encoded, collate, labels, batch_size=batch_size, aggregate=aggregate)


def load_torch_model(path: Path, make_model: Callable[[], "torch.nn.Module"], device):
    model = make_model()
    model.load_state_dict(load_weights(path))
    return model.to(device).eval()


def _load_and_predict(path, make_model, device, precision, loader, desc):
    from textclf.engine.trainer import predict_logits

    model = load_torch_model(path, make_model, device)
    try:
        return predict_logits(model, loader, device, precision, desc=desc)
    finally:
        del model


def torch_folds(weights: list[Path], make_model: Callable[[], "torch.nn.Module"], device,
                precision: str) -> list[FoldModel]:
    """Every fold loaded once, for a predict that streams its input through them chunk after chunk."""
    from textclf.engine.trainer import predict_logits

    folds = []
    for path in weights:
        model = load_torch_model(path, make_model, device)
        folds.append(FoldModel(path.parent.name, lambda loader, desc, model=model: predict_logits(
            model, loader, device, precision, desc=desc)))
    return folds


@dataclass
class RunModel:
    """What rebuilding a run's classifier offline needs: its config, tokenizer and backbone config."""

    run_dir: Path
    cfg: DictConfig
    labels: "LabelSpace"
    weights: list[Path]
    tokenizer: object
    backbone_config: object

    @classmethod
    def load(cls, run_dir: Path, run_cfg: DictConfig, labels, weights: list[Path]) -> "RunModel":
        from textclf.models.backbone import load_backbone_config, load_tokenizer

        backbone_dir, mcfg = str(run_dir / "backbone"), run_cfg.model
        tokenizer = load_tokenizer(backbone_dir, truncation=mcfg.truncation, trust_remote_code=mcfg.trust_remote_code)
        backbone_config = load_backbone_config(backbone_dir, trust_remote_code=mcfg.trust_remote_code)
        return cls(run_dir, run_cfg, labels, weights, tokenizer, backbone_config)

    def make_model(self):
        """An empty classifier of the run's architecture, for one fold's weights."""
        from textclf.models import build_classifier

        cfg = self.cfg
        return build_classifier(cfg.model, cfg.pooling, cfg.head, self.labels.num_outputs,
                                name_or_path=str(self.run_dir / "backbone"), pretrained=False,
                                backbone_config=self.backbone_config)


BACKENDS = ("torch", "onnx")


def predict(cfg: DictConfig) -> None:
    from textclf.config.schema import validate_predict
    from textclf.data.tables import LabelSpace, resolve_path

    validate_predict(cfg)
    run_dir = resolve_path(str(cfg.run_dir))
    run_cfg, label_map, weights = load_run(run_dir, cfg.get("folds"))
    out = check_output(cfg, run_dir)
    check_input_columns(cfg, run_cfg)
    labels = LabelSpace.from_dict(label_map)
    backend = check_backend(cfg, run_dir, weights)
    source = InputTable(str(cfg.input), input_columns(cfg, run_cfg), int(cfg.chunk_rows))
    n_rows, y_true = source.scan(labels)  # the whole input is checked before any model loads
    run = RunModel.load(run_dir, run_cfg, labels, weights)
    folds = backend(run)
    outputs = write_predictions(out, source, run, folds, batch_size=int(cfg.batch_size), n_rows=n_rows,
                                keep=y_true is not None)
    log.info("wrote %d predictions (%d fold(s) averaged, backend=%s) to %s", n_rows, len(folds), cfg.backend, out)
    if y_true is not None:
        from textclf.data.metrics import compute_metrics

        metrics = compute_metrics(labels, y_true, outputs)
        log.info("metrics on %s: %s", cfg.input, "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        print(json.dumps(metrics, indent=2), file=sys.stdout)


def check_backend(cfg: DictConfig, run_dir: Path, weights: list[Path]) -> Callable[[RunModel], list[FoldModel]]:
    """What runs the folds, checked before the input is read: torch on predict's device, or the exported ONNX
    models (the extra installed, the export folder present and made from these very weights)."""
    if str(cfg.backend) == "onnx":
        from textclf.commands.export import check_onnx_predict, onnx_folds

        if str(cfg.precision) != "fp32":
            raise TextclfError(f"precision={cfg.precision} applies to backend=torch; backend=onnx runs the exported "
                               f"models as they were exported (fp32, or int8 with `textclf export ... quantize=int8`): "
                               f"drop precision")
        export_dir = check_onnx_predict(cfg, run_dir, weights)
        return lambda run: onnx_folds(export_dir, run, str(cfg.device))
    device = check_predict_device(str(cfg.device))
    return lambda run: torch_folds(run.weights, run.make_model, device, str(cfg.precision))


@dataclass
class InputTable:
    """The table predict reads, in chunks of chunk_rows rows."""

    path: str
    columns: DictConfig
    chunk_rows: int

    def chunks(self, warn: bool = False):
        from textclf.data.tables import load_split_chunks

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
    from tqdm.auto import tqdm

    from textclf.data.tables import Collator, tokenize_with
    from textclf.io import atomic_path, remove_stale_temps

    for stale in remove_stale_temps(out):  # an earlier predict into `out` that was killed outright
        log.info("removed %s, the partial output of a predict that was killed", stale.name)
    mcfg, labels, kept = run.cfg.model, run.labels, []
    aggregate = str(mcfg.get("window_aggregate", "mean"))
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
    import signal
    import threading

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
        "text_pair_col": cfg.text_pair_col if cfg.text_pair_col is not None else run_cfg.data.get("text_pair_col"),
        "label_col": cfg.label_col or run_cfg.data.label_col,
        "label_sep": run_cfg.data.get("label_sep", "|"),
        "encoding": run_cfg.data.get("encoding", "utf-8"),
        "encoding_errors": run_cfg.data.get("encoding_errors", "replace"),
    })
