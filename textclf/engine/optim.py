"""Optimizers (built from the model: parameter groups, layer-wise LR decay) and learning-rate schedules.

Config: `optimizer=adamw` is `_target_: textclf.engine.optim.adamw` with `_partial_: true`; train.py calls
`instantiate(cfg.optimizer)(model)`. `scheduler=cosine` is `_partial_: true` too and is called
`instantiate(cfg.scheduler)(optimizer, total_steps=N)`. Every schedule is a LambdaLR factor of each
group's own lr, so layer-wise learning rates keep their ratios throughout.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from textclf.errors import TextclfError
from textclf.models.layers import find_layers


# ----------------------------------------------------------------------------- parameter groups
def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None, head_lr: float | None = None,
                 layer_decay: float = 1.0) -> list[dict]:
    """Parameter groups: no weight decay on biases and norm weights; layer-wise learning rates.

    The head (everything outside `model.backbone`: pooling, head) gets `head_lr` (default `lr`). With
    `layer_decay` d != 1 the backbone's top layer gets `lr`, layer i of L gets lr·d^(L-1-i), the embeddings
    lr·d^L, and the rest of the backbone (a pooler, a final norm) the top layer's lr. Each group records
    `name` ("head", "layer_5", "embeddings", ...) and, when `lr` is given, its `lr`. Only parameters that
    require grad are handed over, so frozen weights stay untouched. Groups come top layer first, so group 0
    holds the base lr.
    """
    layer_decay = float(layer_decay)
    backbone = getattr(model, "backbone", model)
    sections: dict[int, tuple[str, float | None]] = {}  # id(param) -> (group name, lr)
    order: list[str] = []

    def assign(name: str, group_lr: float | None, params) -> None:
        order.append(name)
        for p in params:
            sections.setdefault(id(p), (name, group_lr))

    if layer_decay != 1.0:
        if lr is None:
            raise ValueError("param_groups: layer_decay needs the base lr")
        embeddings, layers = find_layers(backbone)
        n = len(layers)
        for i in reversed(range(n)):
            assign(f"layer_{i}", lr * layer_decay ** (n - 1 - i), layers[i].parameters())
        assign("embeddings", lr * layer_decay ** n, embeddings.parameters())
        assign("backbone_other", lr, backbone.parameters())
    elif backbone is not model and head_lr is not None and head_lr != lr:
        assign("backbone", lr, backbone.parameters())
    else:
        assign("model", lr, model.parameters())  # one learning rate for everything: two groups, as fast as it gets
    assign("head", lr if head_lr is None else head_lr, model.parameters())

    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:  # frozen, or tied and already placed
                continue
            seen.add(id(p))
            is_norm = isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()
            no_decay = pname.endswith("bias") or is_norm
            buckets.setdefault((sections[id(p)][0], no_decay), []).append(p)

    lrs = {name: group_lr for name, group_lr in sections.values()}
    groups = []
    for name in order:
        for no_decay in (False, True):
            params = buckets.get((name, no_decay))
            if params:
                group = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay, "name": name}
                if lrs[name] is not None:
                    group["lr"] = lrs[name]
                groups.append(group)
    return groups


# ----------------------------------------------------------------------------- optimizers
def describe_learning_rates(optimizer: torch.optim.Optimizer) -> str | None:
    """The learning rate of each named parameter group, in the optimizer's order ("layer_5 0.0001, ..., head
    0.001"), or None when every group shares one (nothing to report beyond optimizer.lr). The base rates, before
    any schedule's factor (a scheduler keeps them as initial_lr)."""
    lrs: dict[str, float] = {}
    for group in optimizer.param_groups:
        lrs.setdefault(str(group.get("name", f"group_{len(lrs)}")), float(group.get("initial_lr", group["lr"])))
    if len(set(lrs.values())) <= 1:
        return None
    return ", ".join(f"{name} {lr:.3g}" for name, lr in lrs.items())


def _fused(model: nn.Module) -> dict:
    """The fused (single-kernel) Adam/AdamW step, on CPU and CUDA: about 6x faster than the per-tensor loop
    for a 22M-parameter model on a CPU (scripts/bench_train.py). The trainer moves the model to its device
    before the first step, so only the device type matters here."""
    devices = {p.device.type for p in model.parameters() if p.requires_grad}
    return {"fused": True} if devices <= {"cpu", "cuda"} else {}


def adamw(model: nn.Module, lr: float = 1e-4, weight_decay: float = 0.01, eps: float = 1e-6,
          betas: Sequence[float] = (0.9, 0.999), head_lr: float | None = None,
          layer_decay: float = 1.0) -> torch.optim.AdamW:
    """AdamW (decoupled weight decay) over param_groups(model, ...)."""
    lr, head_lr, weight_decay = _check(lr, head_lr, weight_decay, layer_decay)
    groups = param_groups(model, weight_decay, lr, head_lr, layer_decay)
    return torch.optim.AdamW(groups, lr=lr, eps=float(eps), betas=_betas(betas), weight_decay=weight_decay,
                             **_fused(model))


def adam(model: nn.Module, lr: float = 1e-4, weight_decay: float = 0.0, eps: float = 1e-6,
         betas: Sequence[float] = (0.9, 0.999), head_lr: float | None = None,
         layer_decay: float = 1.0) -> torch.optim.Adam:
    """Adam; its weight_decay is an L2 penalty added to the gradient (AdamW decouples it), hence 0 by default."""
    lr, head_lr, weight_decay = _check(lr, head_lr, weight_decay, layer_decay)
    groups = param_groups(model, weight_decay, lr, head_lr, layer_decay)
    return torch.optim.Adam(groups, lr=lr, eps=float(eps), betas=_betas(betas), weight_decay=weight_decay,
                            **_fused(model))


def sgd(model: nn.Module, lr: float, momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0,
        head_lr: float | None = None, layer_decay: float = 1.0) -> torch.optim.SGD:
    """SGD with (optionally Nesterov) momentum; weight_decay is L2."""
    lr, head_lr, weight_decay = _check(lr, head_lr, weight_decay, layer_decay)
    momentum = float(momentum)
    if momentum < 0:
        raise TextclfError(f"optimizer.momentum must be 0 or more, got {momentum}")
    if nesterov and momentum == 0:
        raise TextclfError("optimizer.nesterov=true needs optimizer.momentum > 0")
    groups = param_groups(model, weight_decay, lr, head_lr, layer_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=bool(nesterov), weight_decay=weight_decay)


def _check(lr, head_lr, weight_decay, layer_decay) -> tuple[float, float | None, float]:
    lr = float(lr)
    head_lr = None if head_lr is None else float(head_lr)
    weight_decay = float(weight_decay)
    if not lr > 0:
        raise TextclfError(f"optimizer.lr must be positive, got {lr}")
    if head_lr is not None and not head_lr > 0:
        raise TextclfError(f"optimizer.head_lr must be null or positive, got {head_lr}")
    if weight_decay < 0:
        raise TextclfError(f"optimizer.weight_decay must be 0 or more, got {weight_decay}")
    if not 0 < float(layer_decay) <= 1:
        raise TextclfError(f"optimizer.layer_decay must be in (0, 1] (1 = same lr for every layer), "
                           f"got {layer_decay}")
    return lr, head_lr, weight_decay


def _betas(betas) -> tuple[float, float]:
    b = tuple(float(x) for x in betas)
    if len(b) != 2 or not all(0 <= x < 1 for x in b):
        raise TextclfError(f"optimizer.betas must be two numbers in [0, 1), got {list(betas)}")
    return b


# ----------------------------------------------------------------------------- schedules
def warmup_steps_for(total_steps: int, warmup_ratio: float = 0.0, warmup_steps: int | None = None) -> int:
    """warmup_steps when set, else ceil(total_steps · warmup_ratio)."""
    if warmup_steps is not None:
        if int(warmup_steps) < 0:
            raise TextclfError(f"scheduler.warmup_steps must be null or 0 or more, got {warmup_steps}")
        return int(warmup_steps)
    ratio = float(warmup_ratio)
    if not 0 <= ratio <= 1:
        raise TextclfError(f"scheduler.warmup_ratio must be in [0, 1], got {warmup_ratio}")
    # round first: 100 * 0.07 is 7.000000000000001 in floating point, which must not become 8 steps
    return int(math.ceil(round(total_steps * ratio, 9)))


def _warmup(step: int, warm: int) -> float:
    # (step+1)/(warm+1), not step/warm: the first optimizer step already learns
    return (step + 1) / (warm + 1)


def constant(optimizer, total_steps: int) -> LambdaLR:
    """Every group keeps its own lr throughout (total_steps is accepted and unused)."""
    return LambdaLR(optimizer, lambda step: 1.0)


def constant_warmup(optimizer, total_steps: int, warmup_ratio: float = 0.1, warmup_steps: int | None = None):
    """lr factor rises linearly over the warmup, then stays at 1."""
    warm = warmup_steps_for(total_steps, warmup_ratio, warmup_steps)
    return LambdaLR(optimizer, lambda step: _warmup(step, warm) if step < warm else 1.0)


def linear_schedule(optimizer, total_steps: int, warmup_ratio: float = 0.1, warmup_steps: int | None = None):
    """lr factor rises linearly 0 -> 1 over the warmup, then falls linearly to 0 at total_steps."""
    warm = warmup_steps_for(total_steps, warmup_ratio, warmup_steps)

    def factor(step: int) -> float:
        if step < warm:
            return _warmup(step, warm)
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return LambdaLR(optimizer, factor)



def cosine(optimizer, total_steps: int, warmup_ratio: float = 0.1, warmup_steps: int | None = None,
           num_cycles: float = 0.5, min_lr_ratio: float = 0.0):
    """Warmup as `linear`, then min + (1 - min)·0.5·(1 + cos(2π·num_cycles·progress)), progress 0 -> 1."""
    warm = warmup_steps_for(total_steps, warmup_ratio, warmup_steps)
    num_cycles, min_lr_ratio = float(num_cycles), float(min_lr_ratio)
    if not num_cycles > 0:
        raise TextclfError(f"scheduler.num_cycles must be positive, got {num_cycles}")
    if not 0 <= min_lr_ratio <= 1:
        raise TextclfError(f"scheduler.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    def factor(step: int) -> float:
        if step < warm:
            return _warmup(step, warm)
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1.0 + math.cos(2 * math.pi * num_cycles * progress))

    return LambdaLR(optimizer, factor)
