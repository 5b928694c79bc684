"""Poolings: (hidden states, attention mask) -> one vector per row. Padding never takes part.

Every pooling takes the backbone's `hidden_size` and exposes `output_dim`, so a new one is a class
plus a YAML file in conf/pooling/.
"""
from __future__ import annotations

import torch
from torch import nn


class Pooling(nn.Module):
    #: whether forward needs all layers' hidden states (output_hidden_states=True)
    needs_all_layers = False

    def __init__(self, hidden_size: int, summary_last: bool = False):
        super().__init__()
        self.output_dim = hidden_size
        self.summary_last = summary_last

    def forward(self, last_hidden: torch.Tensor, mask: torch.Tensor, outputs=None) -> torch.Tensor:
        raise NotImplementedError


class MeanPooling(Pooling):
    """Mean of the real tokens' vectors."""

    def forward(self, last_hidden, mask, outputs=None):
        m = mask.unsqueeze(-1).to(last_hidden.dtype)
        total = (last_hidden * m).sum(dim=1)
        return total / m.sum(dim=1).clamp(min=1.0)


class ClsPooling(Pooling):
    """The summary token: the first real token (BERT family) or the last real one (XLNet)."""

    def forward(self, last_hidden, mask, outputs=None):
        return last_hidden[torch.arange(mask.size(0), device=mask.device), summary_positions(mask, self.summary_last)]


def summary_positions(mask: torch.Tensor, last: bool) -> torch.Tensor:
    """Index of the first (or last) real token per row, whichever side the padding is on."""
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    real = mask.bool()
    if last:
        return torch.where(real, positions, -1).max(dim=1).values
    return torch.where(real, positions, mask.size(1)).min(dim=1).values
