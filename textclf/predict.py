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
    if not run_dir.is_dir():
        raise TextclfError(f"run_dir {str(run_dir)!r} does not exist or is not a folder")
    needed = ["config.yaml", "labels.json", "backbone/config.json"]
    missing = [n for n in needed if not (run_dir / n).exists()]
    weights = find_folds(run_dir, folds)
    if not weights:
        missing.append("fold_<k>/model.safetensors" + (f" for folds {list(folds)}" if folds is not None else ""))
    if missing:
        raise TextclfError(f"run_dir {str(run_dir)!r} is not a finished textclf run: missing {', '.join(missing)}")
    from .manifest import verify

    verify(run_dir, weights)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    labels = json.loads((run_dir / "labels.json").read_text(encoding="utf-8"))
    return cfg, labels, weights


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
    from .engine.trainer import resolve_device
    from .io import write_csv
    from .metrics import compute_metrics
    from .models import build_classifier
    from .models.backbone import load_backbone_config, load_tokenizer

    validate_predict(cfg)
    run_dir = resolve_path(str(cfg.run_dir))
    run_cfg, label_map, weights = load_run(run_dir, cfg.get("folds"))
    labels = LabelSpace.from_dict(label_map)
    split = load_split("input", str(cfg.input), input_columns(cfg, run_cfg), need_labels=False, role="input",
                       keys={"text_col": "text_col", "text_pair_col": "text_pair_col", "label_col": "label_col"})
    # the input table is checked before the model loads
    y_true = labels.encode(split.labels, f"input {str(cfg.input)!r}") if split.labels is not None else None

    device = resolve_device(str(cfg.device))
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
    out = resolve_path(str(cfg.output))
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
