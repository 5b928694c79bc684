"""`textclf ensemble <run> <run> ... [--output DIR]`: blend runs by their out-of-fold predictions.

The runs must describe the same rows split the same way (identical folds.csv, the same OOF rows and
labels), so every row's blended prediction is still out-of-fold. Probabilities (regression: predictions)
are averaged, optionally weighted; the blend is scored with the runs' monitored metric next to each run's
own OOF score. With --output the blend is written as a run folder of its own: oof.csv, metrics.json,
labels.json, folds.csv and, when every run has one, test_predictions.csv.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from textclf.data.metrics import METRICS, compute_metrics, default_monitor, metrics_for_task
from textclf.data.tasks import split_labels
from textclf.errors import TextclfError
from textclf.io import write_csv, write_json
from textclf.run import folder
from textclf.run.manifest import verify_run_files


@dataclass
class Member:
    path: Path
    labels: object  # LabelSpace
    monitor: str
    folds: object  # DataFrame
    oof: object  # DataFrame
    test: object | None


def load_member(path: Path) -> Member:
    path = Path(path)
    if not path.is_dir():
        raise TextclfError(f"{path}: not a run folder")
    missing = [f for f in (folder.LABELS, folder.OOF, folder.FOLDS) if not (path / f).exists()]
    if missing:
        raise TextclfError(f"{path}: no {', '.join(missing)}; blend finished runs of `textclf train`")
    verify_run_files(path, (folder.LABELS, folder.OOF, folder.FOLDS, folder.METRICS, folder.TEST_PREDICTIONS))
    labels = folder.read_labels(path)
    metrics = json.loads((path / folder.METRICS).read_text(encoding="utf-8")) if (path / folder.METRICS).exists() \
        else {}
    monitor = metrics.get("monitor") or default_monitor(labels.task)
    read = dict(keep_default_na=False, na_values=[])  # a multilabel row with no labels is "", not NaN
    oof = pd.read_csv(path / folder.OOF, dtype={"label": str, "pred": str}, **read)
    test = pd.read_csv(path / folder.TEST_PREDICTIONS, dtype={"pred": str}, **read) \
        if (path / folder.TEST_PREDICTIONS).exists() else None
    return Member(path, labels, monitor, pd.read_csv(path / folder.FOLDS), oof, test)


def output_columns(labels) -> list[str]:
    if labels.task == "regression":
        return [f"pred_{n}" for n in labels.names]
    return [f"prob_{n}" for n in labels.names]


def true_values(labels, oof) -> np.ndarray:
    """The OOF table's true labels, encoded as train encodes them (class ids, 0/1 matrix, values)."""
    names = labels.names
    if labels.task == "regression":
        return oof[[f"true_{n}" for n in names]].to_numpy(dtype=np.float64)
    index = {n: i for i, n in enumerate(names)}
    if labels.task == "multilabel":
        y = np.zeros((len(oof), len(names)), dtype=np.float64)
        for i, cell in enumerate(oof["label"].astype(str)):
            for c in split_labels(cell, labels.sep):
                y[i, index[c]] = 1.0
        return y
    return np.asarray([index[str(v)] for v in oof["label"]], dtype=np.int64)


def check_compatible(members: list[Member]) -> None:
    first = members[0]
    for m in members[1:]:
        if (m.labels.task, m.labels.names) != (first.labels.task, first.labels.names):
            raise TextclfError(f"{m.path} and {first.path} are different tasks or classes "
                               f"({m.labels.task}: {', '.join(m.labels.names[:10])} vs {first.labels.task}: "
                               f"{', '.join(first.labels.names[:10])}); only runs of the same task blend")
        if not m.folds.equals(first.folds):
            raise TextclfError(f"{m.path} and {first.path} were split differently (their folds.csv differ), so a "
                               f"blend would not be out-of-fold on every row: blend runs of the same data and kfold "
                               f"options (set kfold.seed to keep the folds when trainer.seed changes)")
        keys = ["source", "row"] if "source" in first.oof.columns else ["row"]
        if not m.oof[keys].equals(first.oof[keys]):
            raise TextclfError(f"{m.path} and {first.path} have out-of-fold predictions for different rows "
                               f"(oof.csv): blend runs that ran the same folds (kfold.folds)")
        truth = [c for c in first.oof.columns if c == "label" or c.startswith("true_")]
        if not m.oof[truth].equals(first.oof[truth]):
            raise TextclfError(f"{m.path} and {first.path} have different true labels in oof.csv: they were "
                               f"trained on different data")


def blend(members: list[Member], weights: list[float] | None = None) -> dict:
    """The weighted mean of the members' OOF (and test) outputs, with every member's and the blend's metrics."""
    if len(members) < 2:
        raise TextclfError("textclf ensemble needs at least two runs")
    check_compatible(members)
    if weights is None:
        weights = [1.0] * len(members)
    if len(weights) != len(members) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise TextclfError(f"--weights: give one non-negative weight per run ({len(members)}), got {weights}")
    w = np.asarray(weights, dtype=np.float64) / float(sum(weights))
    labels = members[0].labels
    thresholds = {json.dumps(m.labels.threshold) for m in members}
    if labels.task in ("binary", "multilabel") and len(thresholds) > 1:
        labels = dataclasses.replace(labels, threshold=0.5)  # the runs tuned different thresholds: none fits the blend
    # the members' tables hold calibrated probabilities already; a blend has no logits
    labels = dataclasses.replace(labels, temperature=None)
    cols = output_columns(labels)
    y = true_values(labels, members[0].oof)
    outs = [m.oof[cols].to_numpy(dtype=np.float64) for m in members]
    blended = sum(wi * o for wi, o in zip(w, outs))
    monitor = members[0].monitor
    if monitor not in metrics_for_task(labels.task) or monitor == "loss":
        monitor = default_monitor(labels.task)  # the loss is not in the OOF table
    result = {"task": labels.task, "monitor": monitor, "runs": [str(m.path) for m in members],
              "weights": w.tolist(), "rows": int(len(y)),
              "members": {str(m.path): compute_metrics(labels, y, o) for m, o in zip(members, outs)},
              "oof": compute_metrics(labels, y, blended), "labels": labels, "oof_outputs": blended}
    if all(m.test is not None for m in members):
        tests = [m.test[cols].to_numpy(dtype=np.float64) for m in members]
        if len({t.shape for t in tests}) == 1:
            result["test_outputs"] = sum(wi * t for wi, t in zip(w, tests))
    return result


def write_blend(output: Path, members: list[Member], result: dict) -> None:
    labels = result["labels"]
    oof = members[0].oof
    extra = {k: oof[k].to_numpy() for k in ("source", "row") if k in oof.columns}
    write_csv(output / folder.OOF, labels.table(result["oof_outputs"], y_true=true_values(labels, oof), extra=extra))
    write_csv(output / folder.FOLDS, members[0].folds)
    folder.write_labels(output, labels)
    write_json(output / folder.METRICS, {k: result[k] for k in ("task", "monitor", "runs", "weights", "rows",
                                                               "members", "oof")})
    if "test_outputs" in result:
        write_csv(output / folder.TEST_PREDICTIONS, labels.table(result["test_outputs"]))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="textclf ensemble",
        description="Average the out-of-fold and test probabilities of runs trained on the same folds and score "
                    "the blend with their monitored metric.")
    parser.add_argument("runs", nargs="+", help="run folders (outputs/<date>/<time> or multirun job folders)")
    parser.add_argument("--weights", type=float, nargs="+", help="one weight per run (default: equal)")
    parser.add_argument("--output", "-o", help="write the blend as a run folder: oof.csv, metrics.json, "
                                               "test_predictions.csv, ...")
    args = parser.parse_args(argv)
    try:
        members = [load_member(Path(r)) for r in args.runs]
        result = blend(members, args.weights)
        if args.output:
            write_blend(Path(args.output), members, result)
    except TextclfError as e:
        print(f"textclf: error: {e}", file=sys.stderr)
        return 2
    monitor = result["monitor"]
    better = "higher" if METRICS.get(monitor, True) else "lower"
    print(f"ensemble of {len(members)} runs on {result['rows']} out-of-fold rows ({monitor}, {better} is better)")
    names = [str(m.path) for m in members] + ["blend"]
    width = max(len(n) for n in names)
    print(f"  {'run'.ljust(width)}  weight  {monitor}")
    for m, wi in zip(members, result["weights"]):
        print(f"  {str(m.path).ljust(width)}  {wi:6.3f}  {result['members'][str(m.path)][monitor]:.4f}")
    print(f"  {'blend'.ljust(width)}  {'':6}  {result['oof'][monitor]:.4f}")
    if args.output:
        wrote = "oof.csv, metrics.json" + (", test_predictions.csv" if "test_outputs" in result else "")
        print(f"wrote {wrote} to {args.output}")
    elif any(m.test is not None for m in members):
        print("(--output DIR writes the blended test predictions)")
    return 0
