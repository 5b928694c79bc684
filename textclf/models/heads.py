"""Heads: pooled vector -> logits."""
from __future__ import annotations

import torch
from torch import nn

from textclf.errors import TextclfError

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class ClassificationHead(nn.Module):
    """[LayerNorm] -> [dropout -> Linear(hidden_dim) -> activation] -> dropout -> Linear(num_labels).

    multi_sample_dropout=k draws k dropout masks on the vector that feeds the output layer and averages the
    k logits (Inoue 2019); in eval mode dropout is the identity, so the logits are computed once.
    prior_bias (multilabel): the output bias starts at each label's log-odds in the training rows (set by the
    run, textclf.commands.train.prior_bias); the head only records the setting.
    """

    def __init__(self, in_features: int, num_labels: int, dropout: float = 0.1, multi_sample_dropout: int = 1,
                 hidden_dim: int | None = None, activation: str = "gelu", layer_norm: bool = False,
                 prior_bias: bool = True):
        super().__init__()
        if not isinstance(prior_bias, bool):
            raise TextclfError(f"head.prior_bias must be true or false, got {prior_bias!r}")
        self.prior_bias = prior_bias
        _check_head(dropout, multi_sample_dropout, hidden_dim, activation, layer_norm)
        self.norm = nn.LayerNorm(in_features) if layer_norm else nn.Identity()
        self.hidden = None
        if hidden_dim is not None:
            self.hidden = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, hidden_dim),
                                        ACTIVATIONS[activation]())
            in_features = hidden_dim
        self.dropout = nn.Dropout(dropout)
        self.samples = multi_sample_dropout
        self.out = nn.Linear(in_features, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.norm(pooled)
        if self.hidden is not None:
            x = self.hidden(x)
        if self.samples == 1 or not self.training or self.dropout.p == 0:
            return self.out(self.dropout(x))
        return torch.stack([self.out(self.dropout(x)) for _ in range(self.samples)]).mean(dim=0)


def _check_head(dropout, samples, hidden_dim, activation, layer_norm) -> None:
    problems = []
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        problems.append(f"head.dropout: must be a number in [0, 1), got {dropout!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        problems.append(f"head.multi_sample_dropout: must be an integer >= 1 (1 = plain dropout), got {samples!r}")
    if hidden_dim is not None and (isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1):
        problems.append(f"head.hidden_dim: must be null or an integer >= 1, got {hidden_dim!r}")
    if activation not in ACTIVATIONS:
        problems.append(f"head.activation: must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if not isinstance(layer_norm, bool):
        problems.append(f"head.layer_norm: must be true or false, got {layer_norm!r}")
    if problems:
        raise TextclfError("invalid head:\n" + "\n".join(f"  - {p}" for p in problems))
