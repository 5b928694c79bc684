"""A run's folds as PyTorch models behind the FoldModel interface: each fold's weights loaded into an empty
classifier of the run's architecture."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from textclf.engine.trainer import predict_logits
from textclf.inference.ensemble import FoldModel
from textclf.io import load_weights


def load_torch_model(path: Path, make_model: Callable[[], torch.nn.Module], device) -> torch.nn.Module:
    """One fold's weights in a fresh model from make_model(), on device, in eval mode."""
    model = make_model()
    model.load_state_dict(load_weights(path))
    return model.to(device).eval()


def torch_folds(weights: list[Path], make_model: Callable[[], torch.nn.Module], device, precision: str, *,
                lazy: bool = False) -> list[FoldModel]:
    """Every fold of `weights` as a FoldModel. Loaded now and kept (predict streams its input through them chunk
    after chunk), or with lazy=True each loaded when its turn comes and freed after (train's test pass, which
    runs each fold once and so holds one model at a time). make_model() builds an empty model of the run's
    architecture."""
    if lazy:
        return [FoldModel(path.parent.name, functools.partial(_load_and_predict, path, make_model, device, precision))
                for path in weights]
    return [FoldModel(path.parent.name, functools.partial(_predict, load_torch_model(path, make_model, device), device,
                                                          precision)) for path in weights]


def _predict(model, device, precision: str, loader, desc: str | None) -> tuple[np.ndarray, np.ndarray]:
    return predict_logits(model, loader, device, precision, desc=desc)


def _load_and_predict(path: Path, make_model, device, precision: str, loader, desc: str | None):
    model = load_torch_model(path, make_model, device)
    try:
        return _predict(model, device, precision, loader, desc)
    finally:
        del model
