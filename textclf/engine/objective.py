"""How a batch becomes a loss: the objective interface and the standard objective (R-Drop: textclf.engine.rdrop).

An objective is called as `objective(model, batch, loss_fn, autocast_ctx_factory) -> loss`, where
`autocast_ctx_factory()` returns the trainer's mixed-precision context. It runs the forward pass(es) and
returns the scalar the trainer backpropagates, so a new training objective never touches the loop.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Protocol

import torch

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict) -> dict:
    """The model's keyword arguments from a collated batch (which also holds `labels` and `rows`)."""
    return {k: batch[k] for k in INPUT_KEYS if k in batch}


class Objective(Protocol):
    """What the Trainer calls for each micro-batch (and a hook for each extra pass): the loss to backpropagate."""

    def __call__(self, model, batch: dict, loss_fn, autocast_ctx_factory: Callable) -> torch.Tensor: ...


class StandardObjective:
    """One forward pass, the loss on float32 logits."""

    def __call__(self, model, batch: dict, loss_fn, autocast_ctx_factory: Callable = contextlib.nullcontext):
        with autocast_ctx_factory():
            logits = model(**model_inputs(batch))
        return loss_fn(logits.float(), batch["labels"])
