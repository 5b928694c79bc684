"""Heads: pooled vector -> logits."""
from __future__ import annotations

from torch import nn


class ClassificationHead(nn.Module):
    def __init__(self, in_features: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(in_features, num_labels)

    def forward(self, pooled):
        return self.out(self.dropout(pooled))
