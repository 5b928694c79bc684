"""Losses: forward(logits, target) -> scalar. Raw logits in; fused, numerically stable forms only.

Targets: class ids (N,) for binary/multiclass; float (N, K) multi-hot for multilabel; float (N, T) for
regression. A loss lists the tasks it fits in `tasks`; `single_logit_binary = True` gives a binary model one
sigmoid output instead of two softmax outputs.
"""
from __future__ import annotations

from importlib.resources import files

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from textclf.errors import TextclfError

#: the loss option each task gets from loss=auto
DEFAULT_LOSS = {"binary": "ce", "multiclass": "ce", "multilabel": "bce", "regression": "mse"}


def auto():
    """Placeholder target of loss=auto: train.py swaps in the task's default loss before building."""
    raise TextclfError("loss=auto is replaced by the task's default loss before it is built")


def default_loss_for(task: str):
    """The composed YAML node of the task's default loss option (conf/loss/<name>.yaml)."""
    return OmegaConf.create(files("textclf.conf").joinpath("loss", f"{DEFAULT_LOSS[task]}.yaml").read_text())


def build_loss(loss_cfg, labels, y_train):
    """Instantiate the loss; `class_weights: balanced` becomes n / (K * count_k) on this fold's rows."""
    weights = loss_cfg.get("class_weights")  # only the losses that weight classes (ce, bce, focal, ...) have the key
    if weights is None:
        return instantiate(loss_cfg)
    k = len(labels.classes)
    if weights == "balanced":
        counts = y_train.sum(axis=0) if labels.task == "multilabel" else np.bincount(y_train, minlength=k)
        weights = (len(y_train) / (k * np.maximum(counts, 1))).tolist()
    weights = [float(w) for w in weights]
    if len(weights) != k:
        raise TextclfError(f"loss.class_weights has {len(weights)} values but there are {k} classes "
                           f"({', '.join(labels.names[:20])})")
    return instantiate(loss_cfg, class_weights=weights)


def _weights(values, what: str = "class_weights") -> torch.Tensor | None:
    """A per-class list from the config (list or ListConfig) as a float tensor; None stays None."""
    if values is None:
        return None
    try:
        return torch.tensor([float(v) for v in values], dtype=torch.float)
    except (TypeError, ValueError) as e:
        raise TextclfError(f"loss.{what}: expected null or a list of numbers, got {values!r}") from e


def _check_classes(values: torch.Tensor | None, num_classes: int, what: str) -> None:
    if values is not None and values.numel() != num_classes:
        raise TextclfError(f"loss.{what} has {values.numel()} values but the model has {num_classes} outputs")


def _weighted_mean(loss: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean over rows; with class weights, PyTorch's weighted mean sum(w_y * loss) / sum(w_y)."""
    if weight is None:
        return loss.mean()
    w = weight[target]
    return (w * loss).sum() / w.sum()


class CrossEntropyLoss(nn.Module):
    """Cross-entropy on raw logits (log-softmax inside); optional per-class weights."""

    tasks = ("binary", "multiclass")

    def __init__(self, class_weights: list[float] | None = None):
        super().__init__()
        self.register_buffer("weight", _weights(class_weights))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target.long(), weight=self.weight)


def smooth_targets(target: torch.Tensor, num_classes: int, epsilon: float, convention: str = "uniform"):
    """The smoothed target distribution (N, K) of class ids (N,).

    uniform (PyTorch's `label_smoothing`): 1 - ε + ε/K on the true class, ε/K on every other class.
    others: 1 - ε on the true class, ε/(K-1) on each of the others.
    """
    off = epsilon / num_classes if convention == "uniform" else epsilon / (num_classes - 1)
    on = 1 - epsilon + off if convention == "uniform" else 1 - epsilon
    out = torch.full((target.numel(), num_classes), off, dtype=torch.float, device=target.device)
    return out.scatter_(1, target.long().view(-1, 1), on)


class LabelSmoothingLoss(nn.Module):
    """Cross-entropy against smoothed targets (see smooth_targets); optional per-class weights.

    Both conventions run through PyTorch's fused `F.cross_entropy(label_smoothing=...)`: the `others`
    distribution is exactly the uniform one with ε' = ε·K/(K-1). Class weights follow PyTorch: each class's
    term is scaled by its weight and the sum is divided by the total weight of the rows' true classes.
    """

    tasks = ("binary", "multiclass")
    CONVENTIONS = ("uniform", "others")

    def __init__(self, epsilon: float = 0.1, convention: str = "uniform", class_weights: list[float] | None = None):
        super().__init__()
        if convention not in self.CONVENTIONS:
            raise TextclfError(f"loss.convention: must be uniform (ε/K on every class) or others "
                               f"(ε/(K-1) on the non-target classes), got {convention!r}")
        if not 0 <= epsilon < 1:
            raise TextclfError(f"loss.epsilon: must be in [0, 1), got {epsilon!r}")
        self.epsilon, self.convention = float(epsilon), convention
        self.register_buffer("weight", _weights(class_weights))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = logits.size(-1)
        eps = self.epsilon if self.convention == "uniform" else self.epsilon * k / (k - 1)
        if eps > 1:
            raise TextclfError(f"loss.epsilon={self.epsilon} with convention=others leaves the true class less "
                               f"than the others with {k} classes (must be <= {(k - 1) / k:.3g})")
        return F.cross_entropy(logits.float(), target.long(), weight=self.weight, label_smoothing=eps)


class FocalLoss(nn.Module):
    """Softmax focal loss −α_y (1 − p_y)^γ log p_y (binary as two classes, multiclass).

    log p from log_softmax; log(1 − p_y) as the log-sum-exp of the other classes' log-probabilities, so the
    loss and its gradient stay finite when p_y reaches 0 or 1 in float32. `alpha`: null (1 for every class)
    or one value per class, a plain factor of each row (mean over rows). `class_weights` additionally give
    PyTorch's weighted mean, sum(w_y·loss) / sum(w_y). γ = 0 with no α is cross-entropy exactly.
    """

    tasks = ("binary", "multiclass")

    def __init__(self, gamma: float = 2.0, alpha: list[float] | None = None,
                 class_weights: list[float] | None = None):
        super().__init__()
        if gamma < 0:
            raise TextclfError(f"loss.gamma: must be >= 0, got {gamma!r}")
        self.gamma = float(gamma)
        self.register_buffer("alpha", _weights(alpha, "alpha"))
        self.register_buffer("weight", _weights(class_weights))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.long()
        _check_classes(self.alpha, logits.size(-1), "alpha")
        logp = F.log_softmax(logits, dim=-1)
        logp_y = logp.gather(1, target.view(-1, 1)).squeeze(1)
        loss = -logp_y
        if self.gamma:
            is_y = F.one_hot(target, logits.size(-1)).bool()
            log_not_y = torch.logsumexp(logp.masked_fill(is_y, float("-inf")), dim=-1)  # log(1 - p_y)
            loss = torch.exp(self.gamma * log_not_y) * loss
        if self.alpha is not None:
            loss = self.alpha[target] * loss
        return _weighted_mean(loss, target, self.weight)


class BCEWithLogitsLoss(nn.Module):
    """Binary cross-entropy on logits (binary: one sigmoid output; multilabel: one per class)."""

    tasks = ("binary", "multilabel")
    single_logit_binary = True

    def __init__(self, class_weights: list[float] | None = None):
        super().__init__()
        self.register_buffer("weight", _weights(class_weights))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = _binary_view(logits, target)
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        if self.weight is not None:
            # binary: weight of the sample's class; multilabel: weight of each label column
            w = self.weight[target.long()] if logits.size(-1) == 1 else self.weight
            loss = loss * w
        return loss.mean()


class BCEFocalLoss(nn.Module):
    """Sigmoid focal loss −α(1 − p)^γ y log p − (1 − α) p^γ (1 − y) log(1 − p), mean over every element.

    Binary (one sigmoid output) and multilabel. log p = logsigmoid(x), log(1 − p) = logsigmoid(−x), and the
    modulating factors as exp(γ·logsigmoid(±x)): finite values and gradients for any logit.
    """

    tasks = ("binary", "multilabel")
    single_logit_binary = True

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25):
        super().__init__()
        if gamma < 0 or not 0 <= alpha <= 1:
            raise TextclfError(f"loss.gamma must be >= 0 and loss.alpha in [0, 1], got {gamma!r}, {alpha!r}")
        self.gamma, self.alpha = float(gamma), float(alpha)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = _binary_view(logits, target)
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        pos = -self.alpha * torch.exp(self.gamma * log_not_p) * target * log_p
        neg = -(1 - self.alpha) * torch.exp(self.gamma * log_p) * (1 - target) * log_not_p
        return (pos + neg).mean()


class DiceLoss(nn.Module):
    """1 − (2·Σ p·y + s) / (Σ p + Σ y + s) per class over the batch, averaged over the classes.

    p: softmax over the K outputs (binary as two classes, multiclass) against one-hot targets, or a sigmoid
    per label (multilabel). Averaging per-class scores keeps a rare class as heavy as a common one; the
    smoothing term s keeps the loss and its gradient finite when a class is absent from the batch.
    """

    tasks = ("binary", "multiclass", "multilabel")

    def __init__(self, smooth: float = 1.0):
        super().__init__()
        if smooth < 0:
            raise TextclfError(f"loss.smooth: must be >= 0, got {smooth!r}")
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if target.dim() == 1:  # class ids
            p = logits.softmax(dim=-1)
            y = F.one_hot(target.long(), logits.size(-1)).float()
        else:  # multi-hot labels
            p, y = logits.sigmoid(), target.float()
        inter = (p * y).sum(0)
        total = p.sum(0) + y.sum(0)
        dice = (2 * inter + self.smooth) / (total + self.smooth).clamp_min(1e-7)
        return 1 - dice.mean()


class MSELoss(nn.Module):
    """Mean squared error (regression, identity outputs)."""

    tasks = ("regression",)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.float(), target.float().view_as(logits))


class MSECorrLoss(nn.Module):
    """MSE + p·(1 − corr) with corr per target column over the batch, averaged over the targets.

    corr = mean(dx·dy) / (std(x)·std(y)) with population covariance and sample (n − 1) standard deviations:
    the common notebook form that reproduces SPEC §3's reference (1.9949). It is Pearson's r scaled by
    (n − 1)/n, which only shifts the loss by a constant and scales this term's gradient by (n − 1)/n.
    `eps` keeps a batch with constant predictions or targets finite (that column's corr is then ~0).
    """

    tasks = ("regression",)

    def __init__(self, p: float = 1.5, eps: float = 1e-8):
        super().__init__()
        self.p, self.eps = float(p), float(eps)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = logits.float()
        y = target.float().view_as(x)
        if x.dim() == 1:
            x, y = x.unsqueeze(-1), y.unsqueeze(-1)
        mse = F.mse_loss(x, y)
        n = x.size(0)
        dx, dy = x - x.mean(0), y - y.mean(0)
        cov = (dx * dy).mean(0)
        var_x, var_y = dx.pow(2).sum(0) / max(n - 1, 1), dy.pow(2).sum(0) / max(n - 1, 1)
        corr = cov / torch.sqrt(var_x * var_y + self.eps)
        return mse + self.p * (1 - corr).mean()


def _binary_view(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary with one logit: (N, 1) logits and (N,) class ids -> matching float shapes."""
    logits = logits.float()
    if target.dim() == 1:
        target = target.float().unsqueeze(-1)
    return logits, target.float()


class SoftTargetLoss(nn.Module):
    """A teacher's outputs as the targets (distill): cross-entropy against a probability vector per row (softmax
    outputs), binary cross-entropy against per-output probabilities (sigmoid outputs: multilabel, a single-logit
    binary), mean squared error against values (regression). With one-hot targets it is the plain loss."""

    def __init__(self, task: str, single_logit: bool = False):
        super().__init__()
        self.kind = "mse" if task == "regression" else "bce" if task == "multilabel" or single_logit else "ce"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype).reshape(logits.shape)
        if self.kind == "ce":
            return -(target * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
        if self.kind == "bce":
            return nn.functional.binary_cross_entropy_with_logits(logits, target)
        return nn.functional.mse_loss(logits, target)
