"""AWP: the weights moved against the gradient within a bound relative to each weight, and the loss there added."""
from __future__ import annotations

import torch

from textclf.engine.hooks.attack import Attack
from textclf.errors import TextclfError


class AWP(Attack):
    """Adversarial weight perturbation (Wu et al. 2020), as in the Feedback Prize solutions: from the start step
    on, move each matching weight w by lr·g/‖g‖·‖w‖, clamped to [w − ε|w|, w + ε|w|], backward the loss there
    (gradients add up), restore the exact weights.

    start=auto: after AUTO_START of the fold's optimizer steps (the solutions start it once the validation score
    is decent, an epoch or two into 3-5). start_epoch (0-based), when set, wins: the older way to say it."""

    def __init__(self, lr: float = 1.0, epsilon: float = 0.001, start: float | str = "auto", param_name: str = "weight",
                 start_epoch: int | None = None):
        super().__init__(param_name, start)
        _positive("adversarial.lr", lr)
        _positive("adversarial.epsilon", epsilon)
        if start_epoch is not None and (isinstance(start_epoch, bool) or not isinstance(start_epoch, int)
                                        or start_epoch < 0):
            raise TextclfError(f"adversarial.start_epoch must be an integer >= 0 or null, got {start_epoch!r}")
        self.lr, self.epsilon, self.start_epoch = float(lr), float(epsilon), start_epoch

    def resolve(self, trainer) -> None:
        if self.start_epoch is not None:  # before the start is logged, so the log says the step it starts at
            self.start_step = self.start_epoch * int(getattr(trainer, "steps_per_epoch", 0) or 0)

    def active(self, trainer) -> bool:
        if self.start_epoch is not None:
            return getattr(trainer, "epoch", 0) >= self.start_epoch
        return super().active(trainer)

    def describe(self) -> str:
        return f"lr={self.lr:g}, epsilon={self.epsilon:g}" + (
            f", start_epoch={self.start_epoch}" if self.start_epoch is not None else "")

    def after_backward(self, trainer, batch) -> None:
        if not self.active(trainer):
            return
        self._perturbed_backward(trainer, batch, self._perturb)

    def _perturb(self, params, grads, norms, originals) -> None:
        w_norms = torch.stack([n.float() for n in torch._foreach_norm(originals)]).tolist()
        step = torch._foreach_mul(grads, [self.lr * (w + 1e-6) / (n + 1e-6) for n, w in zip(norms, w_norms)])
        bound = torch._foreach_abs(originals)
        torch._foreach_mul_(bound, self.epsilon)
        torch._foreach_minimum_(step, bound)
        torch._foreach_neg_(bound)
        torch._foreach_maximum_(step, bound)
        torch._foreach_add_(params, step)


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise TextclfError(f"{name} must be a positive number, got {value!r}")
