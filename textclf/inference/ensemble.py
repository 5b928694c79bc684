"""The fold ensemble: every fold's logits over an encoded table, aggregated per text (sliding windows) and averaged
as probabilities, in input order. train's test predictions and `textclf predict` (either backend) share it, so a
run's test_predictions.csv is what predict writes for the same table."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from textclf.data.tables import sorted_batches


@dataclass
class FoldModel:
    """One fold as inference runs it: `logits(batches, desc)` gives (rows, logits) for every batch of a loader, in
    loader order, whatever runs the model (PyTorch, ONNX Runtime); desc names its progress bar (None: none)."""

    name: str
    logits: Callable[..., tuple[np.ndarray, np.ndarray]]


def ensemble(folds: list[FoldModel], encoded, collate, labels, *, batch_size: int, aggregate: str = "mean",
             progress: bool = True) -> np.ndarray:
    """The folds' outputs averaged over every row of an encoded table, in input order. Evaluation runs
    longest-first, and the input order is restored; sliding windows are aggregated per row (Encoded.aggregate,
    which validation during training uses too) before each fold's logits become probabilities."""
    batches = sorted_batches(np.arange(len(encoded)), encoded.lengths, int(batch_size))
    loader = torch.utils.data.DataLoader(range(len(encoded)), batch_sampler=batches, collate_fn=collate)
    outputs = np.zeros((encoded.n_docs, len(labels.classes)), dtype=np.float64)
    for fold in folds:
        rows, logits = encoded.aggregate(*fold.logits(loader, f"predict {fold.name}" if progress else None), aggregate)
        outputs[rows] += labels.outputs(logits) / len(folds)
    return outputs
