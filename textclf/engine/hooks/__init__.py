"""Hooks: the tricks that change a training step (FGM, PGD, AWP, EMA), one file each; this file is the interface.

A hook overrides some of the no-op events below. Per fit (one fold; every fold gets fresh hooks) the Trainer
(textclf.engine.trainer) calls, in this order:

  on_fit_start(trainer)            once, before the first step (and before a resumed fold's state is loaded back)
  after_backward(trainer, batch)   after each micro-batch's backward, before the optimizer step
  after_step(trainer)              after each optimizer step (the gradients are cleared, global_step counts it)
  before_evaluate(trainer)         before each evaluation: the weights the model holds now are the ones evaluated,
                                   and, when the evaluation is the fold's best, the ones saved as model.safetensors
  after_evaluate(trainer)          after it (and after the best weights are saved), in the reverse order of the
                                   hooks, so hooks that swap weights in (EMA, then SWA) put them back in turn:
                                   training goes on from here
  final_choice(trainer)            once, when training ends: a hook may put other weights in the model (a soup of
                                   its best evaluations) and return their Scores; they become the fold's best,
                                   saved and predicted with

What a hook may change: the gradients (a hook calls the trainer's own `compute_loss` and `backward`, so autocast,
loss scaling, accumulation and the multi-process gradient sync live in one place) and the weights, provided it puts
the live weights back before the next step (after_backward) or after the evaluation (after_evaluate). What it may
read: trainer.model, global_step, epoch, total_steps, steps_per_epoch, group_size, scaler and average_across_ranks.
A hook that backwards a micro-batch more than once says so (backwards_again), and a hook with state that a
resumed fold needs back saves it (state_dict / load_state_dict; checkpoints are taken between optimizer steps).

Observing a run (loggers, checkpoints, signals) is the other interface: textclf.engine.callbacks.
A new hook: a class in a file named for it here, and a conf/<group>/<option>.yaml whose `_target_` names it.
"""
from __future__ import annotations

import math

import torch
from hydra.utils import instantiate

from textclf.errors import TextclfError, own_errors


class Hook:
    def on_fit_start(self, trainer) -> None: ...
    def after_backward(self, trainer, batch) -> None: ...
    def after_step(self, trainer) -> None: ...
    def before_evaluate(self, trainer) -> None: ...
    def after_evaluate(self, trainer) -> None: ...
    # True when after_backward backwards this micro-batch again (several processes: only its last backward
    # all-reduces the gradients, so the plain one does not)
    def backwards_again(self, trainer) -> bool: return False
    # False while the weights this hook evaluates are not yet the ones the fold may keep (SWA before its average
    # begins): such an evaluation is the fold's best only until one that counts comes
    def selectable(self, trainer) -> bool: return True
    # at the fit's end: None, or the Scores of the weights this hook has put in the model, which become the fold's
    # choice (average=top's soup)
    def final_choice(self, trainer): return None
    # what a resumed fold needs back (checkpoints are taken between optimizer steps)
    def state_dict(self) -> dict: return {}
    def load_state_dict(self, state: dict) -> None: ...


def build_hooks(*nodes) -> list[Hook]:
    """Instantiate the config nodes that name a `_target_`; an empty node (a group's `none`) builds nothing."""
    with own_errors():  # a hook's own TextclfError, not Hydra's InstantiationException around it
        return [instantiate(node) for node in nodes if node is not None and node.get("_target_")]


# ----------------------------------------------------------------------------- weights, copied and put back
def copy_of(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies, made with one fused copy rather than a clone per tensor."""
    copies = [torch.empty_like(t) for t in tensors]
    if tensors:
        with torch.no_grad():
            torch._foreach_copy_(copies, tensors)
    return copies


@torch.no_grad()
def restore(params: list, originals: list[torch.Tensor]) -> None:
    torch._foreach_copy_(params, originals)  # a copy, not `w - r`: bit-exact


# ----------------------------------------------------------------------------- budget-aware values
def total_steps(trainer) -> int | None:
    """The fold's optimizer steps (Trainer.total_steps); None for a trainer that does not say."""
    n = getattr(trainer, "total_steps", None)
    return int(n) if n else None


def check_start(name: str, value):
    """auto, a share of the fold's optimizer steps in [0, 1), or a step number (an integer >= 1)."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
            isinstance(value, float) and value >= 1):
        raise TextclfError(f"{name} must be auto, a share of the optimizer steps in [0, 1) (0.2) or a step number "
                           f"(an integer, 100), got {value!r}")
    return value


def start_step(value, auto_share: float, total: int | None) -> int:
    """The optimizer step a trick starts at: a share of the fold's steps (auto: auto_share), or the step given."""
    share = auto_share if value == "auto" else value
    if isinstance(share, float) or value == "auto":
        return int(math.ceil(float(share) * total)) if total else 0
    return int(share)


def check_auto(name: str, value):
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise TextclfError(f"{name} must be auto or a positive number, got {value!r}")
    return float(value)
