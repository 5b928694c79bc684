"""trainer.average=top: a "soup" of the fold's k best evaluations. Their weights are kept as they come; when the
fold's training ends the soup is made and becomes the fold's choice, the weights it saves and predicts with."""
from __future__ import annotations

import logging

import torch

from textclf.data.metrics import better
from textclf.engine.hooks import Hook, restore
from textclf.errors import TextclfError

log = logging.getLogger(__name__)


class Soup(Hook):
    """Keeps a CPU copy of the trainable weights of the k best evaluations (by the fold's monitor). At the fold's end:

    greedy   the ingredients in order of their score, the best first; each is added to the soup when the uniform
             average of the soup with it scores at least as well on the validation rows as the soup without it
             (Wortsman et al. 2022, "Model soups"). It starts from the best single evaluation, so the soup never
             scores below it on those rows. k - 1 more evaluations.
    uniform  the uniform average of all k. One more evaluation.

    With ema=default the ingredients are the weights the evaluations saw: EMA's shadow. Cost: k copies of the
    trainable weights in CPU memory while the fold trains, and in its resume checkpoint; none once it ends."""

    def __init__(self, k: int = 3, mode: str = "greedy"):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise TextclfError(f"trainer.average_top_k must be a whole number of evaluations >= 1, got {k!r}")
        if mode not in ("greedy", "uniform"):
            raise TextclfError(f"trainer.average_soup must be greedy or uniform, got {mode!r}")
        self.k, self.mode = k, mode
        self.params: list[torch.nn.Parameter] = []
        self.kept: list[dict] = []  # {"step", "score", "weights": [cpu tensors]}, best first
        self.chosen: list[int] = []  # the steps of the soup's ingredients, once made

    def on_fit_start(self, trainer) -> None:
        self.params = [p for p in trainer.model.parameters() if p.requires_grad and p.is_floating_point()]
        self.kept, self.chosen = [], []
        log.info("average=top: a %s soup of the fold's %d best evaluations, made when the fold's training ends",
                 self.mode, self.k)

    def state_dict(self) -> dict:
        return {"kept": self.kept}

    def load_state_dict(self, state: dict) -> None:
        self.kept = list(state["kept"])

    @torch.no_grad()
    def after_evaluate(self, trainer) -> None:
        """Runs while the evaluated weights are in (after_evaluate goes in reverse hook order: before EMA's)."""
        row, monitor = trainer.progress["history"][-1], trainer.settings.monitor
        score = float(row[monitor])
        place = next((i for i, k in enumerate(self.kept) if better(monitor, score, k["score"])), len(self.kept))
        if place >= self.k:
            return
        self.kept.insert(place, {"step": int(row["step"]), "score": score,
                                 "weights": [p.detach().to("cpu", copy=True) for p in self.params]})
        del self.kept[self.k:]

    @torch.no_grad()
    def _put(self, ingredients: list[dict]) -> None:
        """The uniform average of the ingredients' weights into the model."""
        mean = [torch.zeros_like(w, dtype=torch.float32) for w in ingredients[0]["weights"]]
        for ing in ingredients:
            torch._foreach_add_(mean, [w.float() for w in ing["weights"]])
        torch._foreach_div_(mean, float(len(ingredients)))
        restore(self.params, [m.to(device=p.device, dtype=p.dtype) for m, p in zip(mean, self.params)])

    def final_choice(self, trainer):
        """Make the soup, leave its weights in the model, and return its Scores on the validation rows (None: no
        evaluation was kept)."""
        if not self.kept:
            return None
        monitor, evaluate = trainer.settings.monitor, trainer.evaluator.evaluate
        if self.mode == "uniform":
            soup = list(self.kept)
            self._put(soup)
            scores = evaluate(trainer.model)
        else:
            soup = [self.kept[0]]
            self._put(soup)
            scores = evaluate(trainer.model)  # the best single evaluation's weights, scored again (the same rows)
            for ing in self.kept[1:]:
                self._put(soup + [ing])
                tried = evaluate(trainer.model)
                if not better(monitor, scores.metrics[monitor], tried.metrics[monitor]):  # at least as good
                    soup, scores = soup + [ing], tried
            self._put(soup)
        self.chosen = [ing["step"] for ing in soup]
        log.info("%s: %s soup of %d of the %d best evaluations (steps %s): %s=%.4f (the best single: %.4f)",
                 trainer.settings.desc, self.mode, len(soup), len(self.kept), ", ".join(map(str, self.chosen)),
                 monitor, scores.metrics[monitor], self.kept[0]["score"])
        return scores
