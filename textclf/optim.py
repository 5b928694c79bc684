"""Parameter groups and learning-rate schedules."""
from __future__ import annotations

import math

from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights that decay; biases and LayerNorm weights with weight_decay=0.

    Only parameters that require grad are handed over, so frozen weights stay untouched.
    """
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()
            (no_decay if name.endswith("bias") or is_norm else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def warmup_steps_for(total_steps: int, warmup_ratio: float = 0.0, warmup_steps: int | None = None) -> int:
    if warmup_steps is not None:
        return int(warmup_steps)
    return int(math.ceil(total_steps * float(warmup_ratio)))


def linear_schedule(optimizer, total_steps: int, warmup_ratio: float = 0.1, warmup_steps: int | None = None):
    """lr factor rises linearly 0 -> 1 over the warmup, then falls linearly to 0 at total_steps."""
    warm = warmup_steps_for(total_steps, warmup_ratio, warmup_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return LambdaLR(optimizer, factor)
