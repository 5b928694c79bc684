"""What the adversarial hooks (FGM, PGD, AWP) share: the attacked parameters, this micro-batch's gradient of them,
the frame of a one-shot attack, and the `auto` size of an attack on the embeddings."""
from __future__ import annotations

import contextlib
import logging
import math

import torch

from textclf.engine.hooks import Hook, check_start, copy_of, restore, start_step, total_steps
from textclf.errors import TextclfError

log = logging.getLogger(__name__)


class Attack(Hook):
    """What FGM, PGD and AWP share: the attacked parameters (by name), this micro-batch's gradient of them,
    a backup and a bit-exact restore. The adversarial loss goes through `trainer.backward`, so its gradients
    add to the plain ones before the optimizer step.

    With gradient accumulation, `.grad` after a backward holds the whole group's gradient so far; the direction
    of the attack is this micro-batch's own gradient, so the gradients so far are kept while more micro-batches
    of the group follow (one copy of the attacked parameters' gradients, only when accumulating).
    """

    #: start=auto: the share of the fold's optimizer steps trained plainly before the attack begins. Half: on the
    #: kaomoji tags (2 epochs) FGM from 10% of the steps scored 10 points of macro-F1 below plain, from 50% above it
    AUTO_START = 0.5

    def __init__(self, param_name: str, start: float | str = "auto"):
        if not isinstance(param_name, str) or not param_name:
            raise TextclfError(f"adversarial.param_name must be a non-empty string, got {param_name!r}")
        self.param_name = param_name
        self.start = check_start("adversarial.start", start)
        self.start_step = 0  # resolved at on_fit_start from the fold's number of optimizer steps
        self.names: list[str] = []
        self.params: list[torch.nn.Parameter] = []
        self._prev: list[torch.Tensor | None] | None = None
        self._seen = 0

    def on_fit_start(self, trainer) -> None:
        model = trainer.model
        named = [(n, p) for n, p in model.named_parameters() if self.param_name in n]
        option = type(self).__name__.lower()
        if not named:
            raise TextclfError(f"adversarial={option}: param_name={self.param_name!r} matches no parameter of the "
                               f"model; {embedding_hint(model)}")
        trainable = [(n, p) for n, p in named if p.requires_grad]
        if not trainable:
            raise TextclfError(f"adversarial={option}: every parameter matching {self.param_name!r} is frozen "
                               f"({', '.join(n for n, _ in named[:3])}), so there is no gradient to attack along; "
                               f"unfreeze it (model.freeze_embeddings=false) or choose another param_name")
        self.names = [n for n, _ in trainable]
        self.params = [p for _, p in trainable]
        self._prev, self._seen = None, 0
        self.start_step = start_step(self.start, self.AUTO_START, total_steps(trainer))
        self.resolve(trainer)
        log.info("adversarial=%s: %s; from optimizer step %d of %s", option, self.describe(), self.start_step,
                 total_steps(trainer) or "?")

    def resolve(self, trainer) -> None:
        """Budget-aware values (`auto`) from the run the hook is in; explicit ones stay."""

    def describe(self) -> str:
        return ""

    def active(self, trainer) -> bool:
        return getattr(trainer, "global_step", 0) >= self.start_step

    def after_step(self, trainer) -> None:
        self._prev, self._seen = None, 0  # the optimizer step cleared the gradients

    def backwards_again(self, trainer) -> bool:
        return self.active(trainer)

    def _directions(self, trainer=None) -> tuple[list, list, list[float]]:
        """(parameters, this micro-batch's gradients, their norms) for the attacked parameters. With several
        processes the gradients are each rank's own until the step's all-reduce: the direction is their average
        (what one process would see over the global batch), one all-reduce of the attacked parameters only."""
        pairs = [(i, p) for i, p in enumerate(self.params) if p.grad is not None]
        grads = [p.grad for _, p in pairs]
        if self._prev is not None and grads:
            prev = [self._prev[i] for i, _ in pairs]
            if all(t is not None for t in prev):
                grads = torch._foreach_sub(grads, prev)
            else:
                grads = [g if t is None else g - t for g, t in zip(grads, prev)]
        return usable([p for _, p in pairs], averaged(trainer, grads))

    def _perturbed_backward(self, trainer, batch, perturb) -> None:
        """The frame of a one-shot attack (FGM, AWP): `perturb(params, grads, norms, originals)` moves the usable
        attacked parameters in place (under no_grad), the loss there is backwarded so its gradients add to the
        plain ones, and the exact weights are restored."""
        params, grads, norms = self._directions(trainer)
        if params:
            originals = copy_of(params)
            with torch.no_grad():
                perturb(params, grads, norms, originals)
            trainer.backward(trainer.compute_loss(batch))
            restore(params, originals)
        self._remember(trainer)

    def _remember(self, trainer) -> None:
        """Keep the gradients so far when more micro-batches of this accumulation group follow."""
        self._seen += 1
        if self._seen >= getattr(trainer, "group_size", 1):
            self._prev = None
            return
        grads = [p.grad for p in self.params]
        have = [g for g in grads if g is not None]
        copies = copy_of(have)
        it = iter(copies)
        self._prev = [None if g is None else next(it) for g in grads]


def averaged(trainer, grads: list) -> list:
    """The gradients averaged over a multi-process run's ranks (Trainer.average_across_ranks; the same tensors in
    one process, or with a trainer that has no ranks); None entries (no gradient) stay None."""
    average = getattr(trainer, "average_across_ranks", None)
    present = [g for g in grads if g is not None]
    if average is None or not present:
        return grads
    it = iter(average(present))
    return [None if g is None else next(it) for g in grads]


def usable(params: list, grads: list) -> tuple[list, list, list[float]]:
    """Drop parameters whose gradient norm is zero (nothing to follow) or not finite (an fp16 overflow: the
    scaler skips this step anyway). The norm is scale-invariant in direction, so scaled gradients are fine.
    One host sync for all of them."""
    if not grads:
        return [], [], []
    norms = torch.stack([n.float() for n in torch._foreach_norm(grads)]).tolist()
    keep = [k for k, n in enumerate(norms) if n > 0 and math.isfinite(n)]
    return [params[k] for k in keep], [grads[k] for k in keep], [norms[k] for k in keep]


def embedding_hint(model) -> str:
    names = [n for n, _ in model.named_parameters()]
    weight = None
    for module in model.modules():
        if hasattr(module, "get_input_embeddings"):
            with contextlib.suppress(Exception):
                weight = module.get_input_embeddings().weight
                break
    for n, p in model.named_parameters():
        if weight is not None and p is weight:
            short = n.rsplit(".", 2)[-2] if n.count(".") >= 1 else n
            return f"this model's input embeddings are {n!r} (use adversarial.param_name={short})"
    embeddings = [n for n in names if "embed" in n.lower()][:5] or names[:5]
    return f"parameters include: {', '.join(embeddings)}"


def auto_epsilon(base: float, params: list) -> float:
    """base·√(width/768): the attacked embedding's width against BERT-base's, for which the common values were
    found (the perturbation's norm grows with the square root of the width at equal per-coordinate size)."""
    width = int(params[0].shape[-1]) if params else 768
    return base * math.sqrt(width / 768)
