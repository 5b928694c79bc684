"""trainer.average=last: a uniform average of the weights over the last share of a fold's optimizer steps (stochastic
weight averaging, SWA), which evaluation, the saved weights and the out-of-fold outputs see once it has begun."""
from __future__ import annotations

import logging

import torch

from textclf.engine.hooks import Hook, copy_of, restore, start_step, total_steps
from textclf.engine.hooks.ema import EMA

log = logging.getLogger(__name__)


class SWA(Hook):
    """mean = the running mean of the weights after each optimizer step past `start` (a share of the fold's steps):
    after n updates, mean_n = mean_(n-1) + (w - mean_(n-1)) / n, one fused lerp over the trainable parameters.

    Evaluations before the average begins see the weights as they are; from the first update on they see the
    average, and only those evaluations can become the fold's best (selectable): the fold saves and predicts with
    averaged weights. With ema=default the hook averages EMA's shadow, the weights EMA would evaluate. It costs one
    copy of the trainable weights, on their device; a checkpoint saves it, so a resumed fold continues the average.
    """

    def __init__(self, start: float = 0.75):
        self.start = float(start)
        self.names: list[str] = []
        self.params: list[torch.nn.Parameter] = []
        self.mean: list[torch.Tensor] = []
        self.count = 0
        self.start_step = 0
        self.ema: EMA | None = None
        self._live: list[torch.Tensor] | None = None

    def on_fit_start(self, trainer) -> None:
        named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad and p.is_floating_point()]
        self.names, self.params = [n for n, _ in named], [p for _, p in named]
        self.mean, self.count, self._live = copy_of([p.detach() for p in self.params]), 0, None
        hooks = list(getattr(trainer, "hooks", []))
        self.ema = next((h for h in hooks[:hooks.index(self)] if isinstance(h, EMA)), None) if self in hooks else None
        total = total_steps(trainer)
        self.start_step = start_step(self.start, self.start, total)
        log.info("average=last: the weights%s averaged uniformly after each optimizer step from step %d of %s",
                 " of EMA's shadow" if self.ema is not None else "", self.start_step + 1, total or "?")

    def state_dict(self) -> dict:
        return {"mean": [t.detach().cpu() for t in self.mean], "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.mean, [t.to(m.device) for t, m in zip(state["mean"], self.mean)])
        self.count = int(state["count"])

    @torch.no_grad()
    def after_step(self, trainer) -> None:
        if trainer.global_step <= self.start_step:
            return
        if self.mean and self.mean[0].device != self.params[0].device:
            self.mean = [m.to(p.device) for m, p in zip(self.mean, self.params)]
        self.count += 1
        source = self.ema.shadow if self.ema is not None else self.params
        if self.count == 1:
            torch._foreach_copy_(self.mean, source)
        else:
            torch._foreach_lerp_(self.mean, source, 1.0 / self.count)

    def selectable(self, trainer) -> bool:
        return self.count > 0

    def before_evaluate(self, trainer) -> None:
        self._live = None
        if self.count:
            self._live = copy_of([p.detach() for p in self.params])
            restore(self.params, self.mean)

    def after_evaluate(self, trainer) -> None:
        if self._live is not None:
            restore(self.params, self._live)
            self._live = None

    def average_state(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.mean))
