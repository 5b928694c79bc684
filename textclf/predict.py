"""`textclf predict`: rebuild a run's model offline, ensemble its folds over a table, write predictions."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .errors import TextclfError

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


def predict(cfg: DictConfig) -> None:
    from .config import validate_predict
    from .data import LabelSpace, load_split, resolve_path

    validate_predict(cfg)
    run_dir = resolve_path(str(cfg.run_dir))
    run_cfg, label_map, weights = load_run(run_dir, cfg.get("folds"))
    labels = LabelSpace.from_dict(label_map)

    # the input table, checked before the model loads
    data_cfg = OmegaConf.create({
        "text_col": cfg.text_col or run_cfg.data.text_col,
        "text_pair_col": cfg.text_pair_col if cfg.text_pair_col is not None else run_cfg.data.get("text_pair_col"),
        "label_col": cfg.label_col or run_cfg.data.label_col,
        "label_sep": run_cfg.data.get("label_sep", "|"),
        "encoding": run_cfg.data.get("encoding", "utf-8"),
        "encoding_errors": run_cfg.data.get("encoding_errors", "replace"),
    })
    split = load_split("input", str(cfg.input), data_cfg, need_labels=False, role="input",
                       keys={"text_col": "text_col", "text_pair_col": "text_pair_col", "label_col": "label_col"})
    y_true = labels.encode(split.labels, f"input {str(cfg.input)!r}") if split.labels is not None else None

    import torch

    from .data import Collator, sorted_batches, tokenize_with
    from .engine.trainer import predict_logits, resolve_device
    from .models import build_classifier
    from .models.backbone import load_backbone_config, load_tokenizer
    from .metrics import compute_metrics
    from .train import load_weights

    device = resolve_device(str(cfg.device))
    precision = str(cfg.precision)
    backbone_dir = str(run_dir / "backbone")
    mcfg = run_cfg.model
    tokenizer = load_tokenizer(backbone_dir, truncation=mcfg.truncation, trust_remote_code=mcfg.trust_remote_code)
    backbone_config = load_backbone_config(backbone_dir, trust_remote_code=mcfg.trust_remote_code)
    encoded = tokenize_with(tokenizer, split.texts, split.pairs, mcfg)
    collate = Collator.for_tokenizer(tokenizer, encoded)
    batches = sorted_batches(np.arange(len(encoded)), encoded.lengths, int(cfg.batch_size))
    loader = torch.utils.data.DataLoader(range(len(encoded)), batch_sampler=batches, collate_fn=collate)

    outputs = np.zeros((encoded.n_docs, len(labels.classes)), dtype=np.float64)
    for path in weights:
        model = build_classifier(mcfg, run_cfg.pooling, run_cfg.head, labels.num_outputs,
                                 name_or_path=backbone_dir, pretrained=False, backbone_config=backbone_config)
        model.load_state_dict(load_weights(path))
        model.to(device)
        rows, logits = encoded.aggregate(
            *predict_logits(model, loader, device, precision, desc=f"predict {path.parent.name}"),
            str(mcfg.get("window_aggregate", "mean")))
        outputs[rows] += labels.outputs(logits) / len(weights)
        del model
    table = labels.table(outputs, extra={"row": np.arange(len(outputs))})
    from .io import write_csv

    out = resolve_path(str(cfg.output))
    write_csv(out, table)
    log.info("wrote %d predictions (%d fold(s) averaged) to %s", len(table), len(weights), out)
    if y_true is not None:
        metrics = compute_metrics(labels, y_true, outputs)
        log.info("metrics on %s: %s", cfg.input, "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        print(json.dumps(metrics, indent=2), file=sys.stdout)
