"""Losses: forward(logits, target) -> scalar. Raw logits in; fused, numerically stable forms only."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropyLoss(nn.Module):
    """Cross-entropy on raw logits (log-softmax inside)."""

    tasks = ("binary", "multiclass")

    def __init__(self, weight: list[float] | None = None):
        super().__init__()
        self.register_buffer("weight", torch.tensor(weight, dtype=torch.float) if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, weight=self.weight)
