"""Fit one model on one split: the loop, evaluation each epoch, the best epoch kept."""
from __future__ import annotations

import contextlib
import itertools
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
from .checkpoint import fault_point, rng_state, set_rng_state
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
        self.skipped_step = False
        self.group_size = self.accum  # batches in the current accumulation group
        self.objective = objective if objective is not None else StandardObjective()  # how a batch becomes a loss
        self.checkpoint = None

    # -- the pieces hooks reuse
    def compute_loss(self, batch: dict) -> torch.Tensor:
        return self.objective(self.model, batch, self.loss_fn, lambda: autocast(self.device, self.precision))

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.group_size).backward()

    def optimizer_step(self) -> None:
        if self.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # an fp16 overflow step is skipped by the scaler, which then lowers its scale: the schedule waits for it
        self.skipped_step = scale is not None and self.scaler.get_scale() < scale
        self.optimizer.zero_grad(set_to_none=True)
        if not self.skipped_step:
            self.scheduler.step()
        self.global_step += 1
        for h in self.hooks:
            h.after_step(self)

    # -- the loop
    def fit(self, train_loader, valid_loader, score_fn: Callable[[np.ndarray, np.ndarray], dict],
            on_improve: Callable[[dict], None] | None = None,
            reduce: Callable[[np.ndarray, np.ndarray], tuple] | None = None, checkpoint=None) -> FitResult:
        """score_fn(rows, logits) -> metrics dict; on_improve(state_dict) is called for each new best;
        reduce(rows, logits) -> (rows, logits) turns the loader's sequences into input rows (sliding windows);
        checkpoint (a FoldCheckpoint) saves the fold's state every N steps and each epoch, and a fit that finds
        one continues from it exactly."""
        self.checkpoint = checkpoint
        self.progress = {"best": None, "best_epoch": -1, "history": [], "stale": 0, "train_time": 0.0,
                         "train_samples": 0, "eval_time": 0.0, "eval_samples": 0}
        self.best_logits = None  # (rows, logits) of the best epoch's validation predictions
        start_epoch, start_batch, acc = 0, 0, None
        self.model.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        for h in self.hooks:
            h.on_fit_start(self)
        saved = checkpoint.load() if checkpoint is not None else None
        if saved is not None:
            start_epoch, start_batch, acc = self._restore(*saved)
            log.info("%s: resuming at epoch %d, batch %d (optimizer step %d)", self.desc, start_epoch + 1,
                     start_batch, self.global_step)
        p = self.progress
        for epoch in range(start_epoch, self.epochs):
            self.epoch = epoch
            if hasattr(train_loader.batch_sampler, "set_epoch"):
                train_loader.batch_sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            first = epoch == start_epoch
            train_loss, seen = self._train_epoch(train_loader, epoch, start_batch if first else 0,
                                                 acc if first else None)
            p["train_time"] += time.perf_counter() - t0
            p["train_samples"] += seen

            for h in self.hooks:
                h.before_evaluate(self)
            t0 = time.perf_counter()
            rows, logits = predict_logits(self.model, valid_loader, self.device, self.precision,
                                          desc=f"{self.desc} eval")
            p["eval_time"] += time.perf_counter() - t0
            p["eval_samples"] += len(rows)
            if reduce is not None:
                rows, logits = reduce(rows, logits)
            metrics = {"epoch": epoch + 1, "train_loss": train_loss, **score_fn(rows, logits)}
            p["history"].append(metrics)
            log.info("%s epoch %d/%d: %s", self.desc, epoch + 1, self.epochs,
                     "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch"))
            best = p["best"]
            if better(self.monitor, metrics[self.monitor], None if best is None else best[self.monitor]):
                p["best"], p["best_epoch"], p["stale"] = metrics, epoch + 1, 0
                order = np.argsort(rows, kind="stable")
                self.best_logits = (rows[order], logits[order])
                if on_improve is not None:
                    on_improve(self.model.state_dict())
            else:
                p["stale"] += 1
            for h in self.hooks:
                h.after_evaluate(self)
            if self.patience and p["stale"] >= self.patience:
                log.info("%s: early stop after epoch %d (%s did not improve for %d epochs)",
                         self.desc, epoch + 1, self.monitor, p["stale"])
                break
            if checkpoint is not None and epoch + 1 < self.epochs:
                checkpoint.save(self.model, self._snapshot(epoch + 1, 0, None))
                fault_point(f"epoch:{checkpoint.tag}:{epoch + 1}")
        return FitResult(p["best_epoch"], p["best"], self.best_logits, p["history"],
                         p["train_samples"] / max(p["train_time"], 1e-9), p["eval_samples"] / max(p["eval_time"], 1e-9))

    def _train_epoch(self, loader, epoch: int, start: int = 0, acc: dict | None = None) -> tuple[float, int]:
        """One epoch from batch `start` on (a resumed fold), with the loss accumulators it had there."""
        self.model.train()
        n_batches = len(loader)
        acc = acc or {"total": 0.0, "count": 0, "pending": 0.0, "seen": 0}
        total, count, seen = acc["total"], acc["count"], acc["seen"]
        pending = torch.tensor(acc["pending"], dtype=torch.float32, device=self.device)
        bar = tqdm(loader, desc=f"{self.desc} epoch {epoch + 1}/{self.epochs}", unit="batch", leave=False,
                   dynamic_ncols=True, mininterval=BAR_INTERVAL)
        # a resumed epoch skips the batches it had done: the epoch's batch order is the same as before
        for i, batch in enumerate(itertools.islice(bar, start, None), start=start):
            batch = to_device(batch, self.device)
            # the last accumulation group of an epoch may be short: average over the batches it has
            self.group_size = min(self.accum, n_batches - (i // self.accum) * self.accum)
            loss = self.compute_loss(batch)
            self.backward(loss)
            for h in self.hooks:
                h.after_backward(self, batch)
            stepped = (i + 1) % self.accum == 0 or i + 1 == n_batches
            if stepped:
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
            ckpt = self.checkpoint
            if stepped and ckpt is not None:
                if ckpt.due(self.global_step) and i + 1 < n_batches:
                    state = {"total": total, "count": count, "pending": pending.item(), "seen": seen}
                    ckpt.save(self.model, self._snapshot(epoch, i + 1, state))
                fault_point(f"step:{ckpt.tag}:{self.global_step}")
        return total / max(count, 1), seen

    # -- checkpoints
    def _snapshot(self, epoch: int, batch_index: int, acc: dict | None) -> dict:
        best_logits = self.best_logits
        return {"epoch": epoch, "batch_index": batch_index, "global_step": self.global_step, "acc": acc,
                "progress": self.progress,
                "best_rows": None if best_logits is None else best_logits[0],
                "best_logits": None if best_logits is None else best_logits[1],
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "hooks": [h.state_dict() for h in self.hooks],
                "rng": rng_state()}

    def _restore(self, weights: dict, state: dict):
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        for h, hs in zip(self.hooks, state["hooks"]):
            h.load_state_dict(hs)
        self.global_step = int(state["global_step"])
        self.progress = state["progress"]
        if state["best_rows"] is not None:
            self.best_logits = (state["best_rows"].numpy(), state["best_logits"].numpy())
        set_rng_state(state["rng"])
        return int(state["epoch"]), int(state["batch_index"]), state["acc"]
