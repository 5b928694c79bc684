"""`textclf validate`: the checks `textclf train` makes on its config and data, on their own, with no model.

Same overrides as `textclf train`. Exits 2 with one message naming the file, column and rows at fault, or
prints what it found: rows per file, the task, the classes and their counts, text lengths, and warnings
(duplicated texts with conflicting labels, undecodable bytes).
"""
from __future__ import annotations

import logging

import numpy as np
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def validate_run_inputs(cfg: DictConfig) -> dict:
    from hydra.utils import instantiate

    from .config import validate
    from .data import LabelSpace, conflicting_duplicates, load_splits

    validate(cfg)
    splits = load_splits(cfg.data)
    train = splits["train"]
    label_cols = cfg.data.label_col
    names = [label_cols] if isinstance(label_cols, str) else [str(c) for c in label_cols]
    labels = LabelSpace.fit(train.labels, cfg.task, where=f"data.train_file {cfg.data.train_file!r}",
                            sep=str(cfg.data.label_sep), target_names=names)
    y = labels.encode(train.labels, f"data.train_file {cfg.data.train_file!r}")
    valid = splits.get("valid")
    if valid is not None:
        labels.encode(valid.labels, f"data.valid_file {cfg.data.valid_file!r}")
    splitter = instantiate(cfg.kfold)
    if valid is None and labels.task in ("binary", "multiclass") and hasattr(splitter, "check"):
        splitter.check(y, labels.names)
    report = {"task": labels.task, "classes": labels.names, "files": {}}
    for name, split in splits.items():
        lengths = np.array([len(t) for t in split.texts])
        report["files"][name] = {"path": split.source, "rows": len(split),
                                 "chars_median": float(np.median(lengths)), "chars_max": int(lengths.max())}
        if split.labels is not None:
            report["files"][name]["conflicting_duplicates"] = len(
                conflicting_duplicates(split.texts, split.pairs, split.labels))
    if labels.task in ("binary", "multiclass"):
        counts = np.bincount(y, minlength=len(labels.classes))
        report["class_counts"] = {n: int(c) for n, c in zip(labels.names, counts)}
    elif labels.task == "multilabel":
        report["class_counts"] = {n: int(c) for n, c in zip(labels.names, np.asarray(y).sum(axis=0))}
    _print(report)
    return report


def _print(report: dict) -> None:
    lines = [f"task            {report['task']}"]
    for name, f in report["files"].items():
        extra = (f", {f['conflicting_duplicates']} text(s) repeated with different labels"
                 if f.get("conflicting_duplicates") else "")
        lines.append(f"{name:<15} {f['rows']:,} rows from {f['path']} (text: median {f['chars_median']:.0f} "
                     f"characters, longest {f['chars_max']:,}){extra}")
    if "class_counts" in report:
        counts = ", ".join(f"{k} {v}" for k, v in list(report["class_counts"].items())[:30])
        lines.append(f"classes         {len(report['classes'])}: {counts}")
    lines.append("ok: textclf train would accept this data and config")
    print("\n".join(lines))
