"""`textclf predict`: rebuild a run's model offline, ensemble its folds over a table, write predictions."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .errors import TextclfError
from .io import load_weights

if TYPE_CHECKING:
    import torch

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
    from .manifest import verify

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
             "train.log", "status.json"}
#: output names that say another format: predict writes CSV
NOT_CSV = {".parquet", ".json", ".jsonl", ".xlsx", ".xls", ".tsv", ".gz", ".bz2", ".xz", ".zip", ".zst", ".pkl",
           ".pickle", ".feather", ".arrow", ".npy", ".npz"}


def check_output(cfg: DictConfig, run_dir: Path) -> Path:
    """Where predictions go, refused when writing there would destroy something: the input table, a file of the
    run, a folder; or when the name says a format other than CSV."""
    from .data import resolve_path

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
    from .config import column_clashes

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
    from .check import check_cuda_index
    from .engine.trainer import resolve_device

    try:
        device = resolve_device(name)
    except TextclfError as e:
        raise TextclfError(str(e).replace("trainer.device=", "device=")) from None
    check_cuda_index(device, "device")
    return device


def ensemble_folds(weights: list[Path], make_model: Callable[[], "torch.nn.Module"], encoded, collate, labels, *,
                   batch_size: int, device, precision: str = "fp32", aggregate: str = "mean") -> np.ndarray:
    """The folds' outputs averaged over every row of an encoded table, in input order: `textclf predict` and
    train's test pass both ensemble a run's folds with this. make_model() builds an empty model to load each
    fold's weights into; evaluation runs longest-first, and the input order is restored."""
    import torch

    from .data import sorted_batches
    from .engine.trainer import predict_logits

    batches = sorted_batches(np.arange(len(encoded)), encoded.lengths, int(batch_size))
    loader = torch.utils.data.DataLoader(range(len(encoded)), batch_sampler=batches, collate_fn=collate)
    outputs = np.zeros((encoded.n_docs, len(labels.classes)), dtype=np.float64)
    for path in weights:
        model = make_model()
        model.load_state_dict(load_weights(path))
        model.to(device)
        rows, logits = encoded.aggregate(*predict_logits(model, loader, device, precision,
                                                         desc=f"predict {path.parent.name}"), aggregate)
        outputs[rows] += labels.outputs(logits) / len(weights)
        del model
    return outputs


def predict(cfg: DictConfig) -> None:
    from .config import validate_predict
    from .data import Collator, LabelSpace, load_split, resolve_path, tokenize_with
    from .io import write_csv
    from .metrics import compute_metrics
    from .models import build_classifier
    from .models.backbone import load_backbone_config, load_tokenizer

    validate_predict(cfg)
    run_dir = resolve_path(str(cfg.run_dir))
    run_cfg, label_map, weights = load_run(run_dir, cfg.get("folds"))
    out = check_output(cfg, run_dir)
    check_input_columns(cfg, run_cfg)
    labels = LabelSpace.from_dict(label_map)
    split = load_split("input", str(cfg.input), input_columns(cfg, run_cfg), need_labels=False, role="input",
                       keys={"text_col": "text_col", "text_pair_col": "text_pair_col", "label_col": "label_col"})
    # the input table is checked before the model loads
    y_true = labels.encode(split.labels, f"input {str(cfg.input)!r}") if split.labels is not None else None

    device = check_predict_device(str(cfg.device))
    backbone_dir = str(run_dir / "backbone")
    mcfg = run_cfg.model
    tokenizer = load_tokenizer(backbone_dir, truncation=mcfg.truncation, trust_remote_code=mcfg.trust_remote_code)
    backbone_config = load_backbone_config(backbone_dir, trust_remote_code=mcfg.trust_remote_code)
    encoded = tokenize_with(tokenizer, split.texts, split.pairs, mcfg)
    outputs = ensemble_folds(
        weights, lambda: build_classifier(mcfg, run_cfg.pooling, run_cfg.head, labels.num_outputs,
                                          name_or_path=backbone_dir, pretrained=False, backbone_config=backbone_config),
        encoded, Collator.for_tokenizer(tokenizer, encoded), labels, batch_size=int(cfg.batch_size), device=device,
        precision=str(cfg.precision), aggregate=str(mcfg.get("window_aggregate", "mean")))
    table = labels.table(outputs, extra={"row": np.arange(len(outputs))})
    write_csv(out, table)
    log.info("wrote %d predictions (%d fold(s) averaged) to %s", len(table), len(weights), out)
    if y_true is not None:
        metrics = compute_metrics(labels, y_true, outputs)
        log.info("metrics on %s: %s", cfg.input, "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        print(json.dumps(metrics, indent=2), file=sys.stdout)


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
