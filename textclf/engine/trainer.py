"""Fit one model on one split: the loop, evaluation each epoch, the best epoch kept."""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import TextclfError
from ..metrics import better
from .hooks import Hook
from .objective import StandardObjective, model_inputs

log = logging.getLogger(__name__)

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# a terminal gets a live bar; a log file or CI gets a line every 30 s instead of thousands of redraws
BAR_INTERVAL = 0.1 if sys.stderr.isatty() else 30.0


def resolve_device(name: str) -> torch.device:
    if not (name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())):
        raise TextclfError(f"device={name!r}: use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TextclfError(f"trainer.device={name} but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[precision])


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.inference_mode()
def predict_logits(model, loader, device: torch.device, precision: str = "fp32", n_rows: int | None = None,
                   desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits for every row the loader yields, returned with those rows' ids (loader order)."""
    model.eval()
    rows, outs = [], []
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False, disable=desc is None, mininterval=BAR_INTERVAL):
        batch = to_device(batch, device)
        with autocast(device, precision):
            logits = model(**model_inputs(batch))
        outs.append(logits.float().cpu())
        rows.append(batch["rows"].cpu())
    return torch.cat(rows).numpy(), torch.cat(outs).numpy()


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict
    best_valid_logits: np.ndarray  # aligned with the valid rows as given to fit()
    history: list[dict] = field(default_factory=list)
    train_samples_per_s: float = 0.0
    eval_samples_per_s: float = 0.0


class Trainer:
    def __init__(self, model: torch.nn.Module, loss_fn: torch.nn.Module, optimizer, scheduler, *,
                 device: torch.device, epochs: int, grad_accum_steps: int = 1, max_grad_norm: float | None = 1.0,
                 precision: str = "fp32", monitor: str = "macro_f1", early_stopping_patience: int | None = None,
                 hooks: Sequence[Hook] = (), objective=None, log_every_steps: int = 50, desc: str = "train"):
        self.model, self.loss_fn, self.optimizer, self.scheduler = model, loss_fn, optimizer, scheduler
        self.device, self.epochs, self.accum = device, epochs, max(1, grad_accum_steps)
        self.max_grad_norm, self.precision, self.monitor = max_grad_norm, precision, monitor
        self.patience, self.hooks, self.log_every, self.desc = early_stopping_patience, list(hooks), log_every_steps, desc
        # fp16 needs loss scaling on CUDA; bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16" and device.type == "cuda"))
        self.global_step = 0
        self.epoch = 0
        self.group_size = self.accum  # batches in the current accumulation group
        self.objective = objective if objective is not None else StandardObjective()  # how a batch becomes a loss

    # -- the pieces hooks reuse
    def compute_loss(self, batch: dict) -> torch.Tensor:
        return self.objective(self.model, batch, self.loss_fn, lambda: autocast(self.device, self.precision))

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.group_size).backward()

    def optimizer_step(self) -> None:
        if self.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1
        for h in self.hooks:
            h.after_step(self)

    # -- the loop
    def fit(self, train_loader, valid_loader, score_fn: Callable[[np.ndarray, np.ndarray], dict],
            on_improve: Callable[[dict], None] | None = None,
            reduce: Callable[[np.ndarray, np.ndarray], tuple] | None = None) -> FitResult:
        """score_fn(rows, logits) -> metrics dict; on_improve(state_dict) is called for each new best;
        reduce(rows, logits) -> (rows, logits) turns the loader's sequences into input rows (sliding windows)."""
        best, best_epoch, best_logits, history, stale = None, -1, None, [], 0
        train_time = train_samples = eval_time = eval_samples = 0.0
        self.model.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        for h in self.hooks:
            h.on_fit_start(self)
        for epoch in range(self.epochs):
            self.epoch = epoch
            if hasattr(train_loader.batch_sampler, "set_epoch"):
                train_loader.batch_sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            train_loss, seen = self._train_epoch(train_loader, epoch)
            train_time += time.perf_counter() - t0
            train_samples += seen

            for h in self.hooks:
                h.before_evaluate(self)
            t0 = time.perf_counter()
            rows, logits = predict_logits(self.model, valid_loader, self.device, self.precision,
                                          desc=f"{self.desc} eval")
            eval_time += time.perf_counter() - t0
            eval_samples += len(rows)
            if reduce is not None:
                rows, logits = reduce(rows, logits)
            metrics = {"epoch": epoch + 1, "train_loss": train_loss, **score_fn(rows, logits)}
            history.append(metrics)
            log.info("%s epoch %d/%d: %s", self.desc, epoch + 1, self.epochs,
                     "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch"))
            if better(self.monitor, metrics[self.monitor], None if best is None else best[self.monitor]):
                best, best_epoch, stale = metrics, epoch + 1, 0
                order = np.argsort(rows, kind="stable")
                best_logits = (rows[order], logits[order])
                if on_improve is not None:
                    on_improve(self.model.state_dict())
            else:
                stale += 1
            for h in self.hooks:
                h.after_evaluate(self)
            if self.patience and stale >= self.patience:
                log.info("%s: early stop after epoch %d (%s did not improve for %d epochs)",
                         self.desc, epoch + 1, self.monitor, stale)
                break
        return FitResult(best_epoch, best, best_logits, history,
                         train_samples / max(train_time, 1e-9), eval_samples / max(eval_time, 1e-9))

    def _train_epoch(self, loader, epoch: int) -> tuple[float, int]:
        self.model.train()
        n_batches = len(loader)
        total, count, seen = 0.0, 0, 0
        pending = torch.zeros((), device=self.device)
        bar = tqdm(loader, desc=f"{self.desc} epoch {epoch + 1}/{self.epochs}", unit="batch", leave=False,
                   dynamic_ncols=True, mininterval=BAR_INTERVAL)
        for i, batch in enumerate(bar):
            batch = to_device(batch, self.device)
            # the last accumulation group of an epoch may be short: average over the batches it has
            self.group_size = min(self.accum, n_batches - (i // self.accum) * self.accum)
            loss = self.compute_loss(batch)
            self.backward(loss)
            for h in self.hooks:
                h.after_backward(self, batch)
            if (i + 1) % self.accum == 0 or i + 1 == n_batches:
                self.optimizer_step()
            pending += loss.detach()
            seen += batch["input_ids"].size(0)
            # read the loss back only now and then: a GPU would otherwise wait at every step
            if (i + 1) % 10 == 0 or i + 1 == n_batches:
                chunk = pending.item()
                k = (i % 10) + 1
                if not math.isfinite(chunk):
                    raise TextclfError(f"{self.desc}: the training loss became {chunk} at epoch {epoch + 1}, "
                                       f"in batches {i + 2 - k}..{i + 1} (optimizer step {self.global_step}); "
                                       f"lower optimizer.lr or use precision=fp32")
                total, count = total + chunk, count + k
                pending.zero_()
                bar.set_postfix(loss=f"{chunk / k:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if self.log_every and (i + 1) % self.log_every == 0:
                log.debug("%s epoch %d step %d/%d loss %.4f", self.desc, epoch + 1, i + 1, n_batches,
                          total / max(count, 1))
        return total / max(count, 1), seen
