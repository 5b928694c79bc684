"""Fit one model on one split: the loop, evaluation (each epoch's end and every N steps), the best kept.

`Trainer(model, loss, optimizer, scheduler, FitSettings(...), evaluator, hooks=..., objective=..., callbacks=...)`;
`for evaluation in trainer.fit(train_loader): ...` yields each evaluation (the caller saves the best weights), and
`trainer.result` is the fit's summary. One optimizer step reads in this file (_train_epoch, optimizer_step), plus
the objective (engine/objective.py) and whichever hooks are on (engine/hooks/). The loop also reports the fold's
events to the callbacks (textclf.engine.callbacks): fold start, a step row every `log_every_steps` optimizer steps,
each evaluation, each new best, each checkpoint.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Generator, Iterator, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from textclf.errors import TextclfError
from textclf.io import bar_off
from textclf.data.metrics import better
from textclf.engine import distributed
from textclf.engine.callbacks import Callback, Callbacks, is_main
from textclf.run.checkpoint import fault_point, rng_state, set_rng_state
from textclf.engine.hooks import Hook
from textclf.engine.objective import Objective, StandardObjective, model_inputs

log = logging.getLogger(__name__)

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# a terminal gets a live bar; a log file or CI gets a line every 30 s instead of thousands of redraws
BAR_INTERVAL = 0.1 if sys.stderr.isatty() else 30.0
# an evaluation inside an epoch draws its bar below the epoch's in a terminal; a log file cannot move the cursor, so
# there it shares the epoch bar's line, instead of leaving cursor-up escapes ("\x1b[A") in the file
EVAL_BAR_PLACE = {} if sys.stderr.isatty() else {"position": 0}


def resolve_device(name: str) -> torch.device:
    """A device the config check accepted (auto, cpu, cuda or cuda:N: the schema's DEVICE), on this machine."""
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
    """Logits for every row the loader yields, returned with those rows' ids (loader order). A loader over a
    distributed.ShardedList (a multi-process run) yields this rank's batches; every rank gets all rows back,
    in the order one process would have produced them."""
    model.eval()
    rows, outs = [], []
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False, **bar_off(desc is None or not is_main()),
                      mininterval=BAR_INTERVAL, **EVAL_BAR_PLACE):
        batch = to_device(batch, device)
        with autocast(device, precision):
            logits = model(**model_inputs(batch))
        outs.append(logits.float().cpu())
        rows.append(batch["rows"].cpu())
    n_out = int(outs[0].shape[-1]) if outs else 0
    rows_np = torch.cat(rows).numpy() if rows else np.zeros(0, dtype=np.int64)
    logits_np = torch.cat(outs).numpy() if outs else np.zeros((0, n_out), dtype=np.float32)
    sharded = getattr(loader, "batch_sampler", None)
    if isinstance(sharded, distributed.ShardedList) and distributed.active():
        return distributed.gather_in_order(rows_np, logits_np, sharded.sizes)
    return rows_np, logits_np


class LossMeter:
    """The training loss, summed on the device and read back only at step rows and evaluations (a GPU would
    otherwise wait at every step). Keeps the epoch's mean and the mean since the last step row."""

    def __init__(self, device: torch.device):
        self.pending = torch.zeros((), dtype=torch.float32, device=device)
        self.pending_batches = 0
        self.epoch_sum = self.epoch_batches = self.row_sum = self.row_batches = 0
        self.row_samples = 0

    def add(self, loss: torch.Tensor, samples: int) -> None:
        self.pending += loss.detach().float()
        self.pending_batches += 1
        self.row_samples += samples

    def flush(self) -> float:
        """Move the pending sum to the host; returns its mean (checked for non-finite values by the caller)."""
        if not self.pending_batches:
            return 0.0
        if distributed.active():  # every rank flushes at the same batches: the mean over the ranks' shares
            distributed.average_([self.pending])
        chunk, k = self.pending.item(), self.pending_batches
        self.epoch_sum, self.epoch_batches = self.epoch_sum + chunk, self.epoch_batches + k
        self.row_sum, self.row_batches = self.row_sum + chunk, self.row_batches + k
        self.pending.zero_()
        self.pending_batches = 0
        return chunk / k

    def epoch_mean(self) -> float:
        return self.epoch_sum / max(self.epoch_batches, 1)

    def take_row(self) -> tuple[float, int]:
        """(mean loss, samples) since the last step row, and start the next row."""
        out = (self.row_sum / max(self.row_batches, 1), self.row_samples)
        self.row_sum = self.row_batches = self.row_samples = 0
        return out

    def start_epoch(self) -> None:
        self.epoch_sum = self.epoch_batches = 0

    def state_dict(self) -> dict:
        # the pending sum is saved as it is, not flushed: flushing early would group the float additions
        # differently from an uninterrupted run (a checkpoint at any step, e.g. on SIGTERM, must not show)
        return {"pending": self.pending.detach().clone(), "pending_batches": self.pending_batches,
                **{k: getattr(self, k) for k in ("epoch_sum", "epoch_batches", "row_sum", "row_batches",
                                                 "row_samples")}}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            if k == "pending":
                self.pending = v.to(device=self.pending.device, dtype=torch.float32)
            else:
                setattr(self, k, v)


@dataclass(frozen=True)
class FitSettings:
    """How one fit trains, fixed for the fit: every number and name the loop reads besides its components (model,
    loss, optimizer, schedule, hooks, objective, evaluator, callbacks). train.py builds it from cfg.trainer and the
    fold; the defaults are the plain loop's (no accumulation, clipping, step rows, early stopping or limits)."""

    device: torch.device
    epochs: int
    monitor: str  # the metric that chooses the fold's best evaluation (and that early stopping watches)
    grad_accum_steps: int = 1
    max_grad_norm: float | None = None  # clip the gradients' total norm to this before each step; None: no clipping
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast; fp16 with loss scaling on CUDA)
    early_stopping_patience: int | None = None  # stop after this many evaluations without a new best
    log_every_steps: int = 0  # a step row (callbacks' on_step) every N optimizer steps; 0: none
    eval_every_steps: int | None = None  # evaluate every N optimizer steps, and at each epoch's end
    # N evaluations an epoch: N - 1 inside it, at evenly spread optimizer steps, and its end; unused when
    # eval_every_steps is set
    evals_per_epoch: int | None = None
    limit_train_batches: int | None = None  # train on each epoch's first N batches only
    steps_per_epoch: int | None = None  # the fold's optimizer steps an epoch: hooks' `auto` values are computed from it
    fold: int = 0  # the fold the events are reported for
    desc: str = "train"  # names the fit in logs, progress bars and error messages
    # trainer.time_limit: a time.time() past which the fit stops after its optimizer step, evaluated there, keeping
    # its best evaluation (textclf.engine.time_limit); None: no deadline
    deadline: float | None = None
    # trainer.time_limit's plan: the fit ends after this many optimizer steps (in its last epoch), evaluated there
    max_steps: int | None = None


@dataclass
class Scores:
    """What an evaluator returns: the metrics and the validation outputs they were computed from."""

    metrics: dict  # every metric of the task (loss, macro_f1, ...)
    rows: np.ndarray  # the validation rows scored (a long text's windows are folded into its row)
    logits: np.ndarray  # their logits, in `rows` order
    sequences: int  # the sequences the model ran on (each window of a long text counts): evaluation throughput


class Evaluator(Protocol):
    """Scores a model on the fold's validation rows (a run's: textclf.engine.evaluate.TaskEvaluator)."""

    def evaluate(self, model: torch.nn.Module) -> Scores: ...


@dataclass(frozen=True)
class Evaluation:
    """What `fit` yields after each evaluation. While the caller handles it, `model` holds the weights that were
    evaluated (with ema=default the average, swapped in for the evaluation): a caller that keeps the best model
    saves `model.state_dict()` then. Training goes on, with the live weights, when the caller asks for the next."""

    step: int  # optimizer steps so far
    epoch: float  # 1-based; fractional for an evaluation inside an epoch
    metrics: dict  # the evaluation's row: step, epoch, train_loss and every metric (callbacks' on_evaluate)
    is_best: bool  # the fold's best evaluation so far, by FitSettings.monitor
    model: torch.nn.Module  # the module itself (not a multi-process wrapper)


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict
    best_valid_logits: tuple  # (rows, logits) of the best evaluation, rows ascending
    history: list[dict] = field(default_factory=list)  # every evaluation row
    steps: list[dict] = field(default_factory=list)  # every step row
    train_samples_per_s: float = 0.0
    eval_samples_per_s: float = 0.0
    peak_gpu_memory_mb: float | None = None  # on CUDA: the most memory torch's tensors held during the fit


def eval_positions(steps_in_epoch: int, n: int) -> frozenset[int]:
    """The optimizer steps of an epoch (1-based, within it) after which evals_per_epoch=n evaluates before the
    epoch's end: ceil(j * steps / n) for j = 1 .. n - 1, fewer when the epoch has fewer steps than that."""
    return frozenset(p for p in (-(-j * steps_in_epoch // n) for j in range(1, n)) if 0 < p < steps_in_epoch)


class Trainer:
    """Fits one model on one split. `fit` is the loop, and it calls nothing outside the trainer but its components:
    the objective (how a batch becomes a loss), the hooks (tricks that change a step: textclf.engine.hooks), the
    evaluator (how the model scores), the callbacks (who watches: textclf.engine.callbacks); the caller gets each
    evaluation as an event. compute_loss, backward and optimizer_step are the pieces hooks reuse."""

    def __init__(self, model: torch.nn.Module, loss_fn: torch.nn.Module, optimizer, scheduler, settings: FitSettings,
                 evaluator: Evaluator | None, *, hooks: Sequence[Hook] = (), objective: Objective | None = None,
                 callbacks: Callback | None = None):
        self.model, self.loss_fn, self.optimizer, self.scheduler = model, loss_fn, optimizer, scheduler
        self.settings, self.evaluator, self.hooks = settings, evaluator, list(hooks)
        self.objective = objective if objective is not None else StandardObjective()
        self.callbacks = callbacks if callbacks is not None else Callbacks()
        self.device, self.accum = settings.device, max(1, settings.grad_accum_steps)
        # the fold's optimizer steps, which budget-aware defaults (hooks' `auto` values) are computed from
        self.steps_per_epoch = settings.steps_per_epoch
        self.total_steps = (settings.max_steps or settings.steps_per_epoch * settings.epochs) \
            if settings.steps_per_epoch else None
        # fp16 needs loss scaling on CUDA; bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=(settings.precision == "fp16" and self.device.type == "cuda"))
        # several processes: forwards and backwards go through the DDP wrapper; `model` stays the module itself
        # (what hooks, EMA and saving see). The gradient all-reduce runs once per optimizer step: on the group's
        # last micro-batch, in its last backward (FGM/PGD/AWP backward more than once: only the last syncs)
        self.main = is_main()
        self.ddp = distributed.wrap(model.to(self.device), self.device) if distributed.active() else None
        self.net = self.ddp if self.ddp is not None else model
        self.sync_group = True  # the micro-batch in flight is its accumulation group's last
        self.batch_scale = 1.0  # this rank's share of the global batch (distributed.ShardedBatches.scales)
        self.global_step = self.epoch = 0
        self.skipped_step = False
        self.group_size = self.accum  # batches in the current accumulation group
        self.checkpoint = self.stop = None
        self.meter = LossMeter(self.device)
        self.grad_norm: torch.Tensor | None = None
        self.step_lr = 0.0
        self.progress = self._fresh_progress()
        self.best_logits = None  # (rows, logits) of the best evaluation's validation predictions
        self.result: FitResult | None = None  # set when a fit has run to its end

    # -- the pieces hooks reuse
    def compute_loss(self, batch: dict, last: bool = True) -> torch.Tensor:
        """The batch's loss. last: the backward of this loss is the micro-batch's last (a hook that backwards
        again passes False for its earlier passes); with several processes only the group's last micro-batch's
        last backward all-reduces the gradients (DDP decides that at the forward)."""
        sync = self.ddp is None or (last and self.sync_group)
        with contextlib.nullcontext() if sync else self.ddp.no_sync():
            return self.objective(self.net, batch, self.loss_fn, lambda: autocast(self.device, self.settings.precision))

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss * (self.batch_scale / self.group_size)).backward()

    def average_across_ranks(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Copies of these gradients averaged over the processes (an attack's direction must be the global
        batch's, as in one process); the tensors themselves as they are in one process."""
        if self.ddp is None:
            return grads
        return distributed.average_([g.detach().clone() for g in grads])

    def optimizer_step(self) -> None:
        max_grad_norm = self.settings.max_grad_norm
        if max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.step_lr = self._lr()  # the learning rate this step uses (the schedule moves on below)
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
    def fit(self, train_loader, checkpoint=None, stop=None) -> Iterator[Evaluation]:
        """Train for settings.epochs, yielding an Evaluation after each evaluation (each epoch's end, and inside an
        epoch at settings.eval_every_steps or evals_per_epoch); once the events run out, self.result holds the
        FitResult. checkpoint (a FoldCheckpoint) saves the fold's state every N steps and each epoch, and a fit that
        finds one continues from it exactly; stop (run.signals.StopSignals): a signal stops the fit after the
        optimizer step or evaluation in progress, with a checkpoint there (Interrupted)."""
        s, self.stop, self.result = self.settings, stop, None
        start_epoch, start_batch = self._start(checkpoint)
        n_batches = self.batches_per_epoch(train_loader)
        p = self.progress
        for epoch in range(start_epoch, s.epochs):
            self.epoch = epoch
            if hasattr(train_loader.batch_sampler, "set_epoch"):
                train_loader.batch_sampler.set_epoch(epoch)
            t0, eval_time = time.perf_counter(), p["eval_time"]
            stopped = late = False
            done = start_batch if epoch == start_epoch else 0
            with contextlib.closing(self._train_epoch(train_loader, epoch, done, n_batches)) as steps:
                for done in steps:  # after each optimizer step (`done`: the epoch's batches trained so far)
                    stopped = yield from self._after_step(epoch, done, n_batches)
                    if stopped:
                        break
                    if done < n_batches and (self._planned_steps_done() or self._past_deadline()):
                        late = True
                        break
            if not stopped and not (late and p["history"] and p["history"][-1]["step"] == self.global_step):
                stopped = yield from self._evaluate(epoch + 1 if not late else round(epoch + done / n_batches, 4))
            p["train_time"] += time.perf_counter() - t0 - (p["eval_time"] - eval_time)
            if late and self._planned_steps_done():
                log.info("%s: the %d optimizer steps trainer.time_limit planned are done (epoch %d of %d)", s.desc,
                         self.global_step, epoch + 1, s.epochs)
                break
            if late or (not stopped and epoch + 1 < s.epochs and self._past_deadline()):
                log.warning("%s: trainer.time_limit reached at step %d (epoch %d of %d): the fold stops here and "
                            "keeps its best evaluation", s.desc, self.global_step, epoch + 1, s.epochs)
                break
            if stopped:
                log.info("%s: early stop at step %d (%s did not improve for %d evaluations)",
                         s.desc, self.global_step, s.monitor, p["stale"])
                break
            if checkpoint is not None and epoch + 1 < s.epochs:
                self._save_checkpoint(epoch + 1, 0)
                fault_point(f"epoch:{checkpoint.tag}:{epoch + 1}")
            if epoch + 1 < s.epochs:  # after the last epoch the fold finishes: its results are the safe point
                self._stop_if_asked(epoch + 1, 0, saved=True)
        for h in self.hooks:  # average=top: the soup of the best evaluations is the fold's choice
            scores = h.final_choice(self)
            if scores is not None:
                yield from self._choose(scores)
        trained = distributed.sum_over_ranks(p["train_samples"]) if self.ddp is not None else p["train_samples"]
        self.result = FitResult(p["best_epoch"], p["best"], self.best_logits, p["history"], p["steps"],
                                trained / max(p["train_time"], 1e-9), p["eval_samples"] / max(p["eval_time"], 1e-9),
                                self._peak_gpu_memory_mb())

    def _peak_gpu_memory_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None

    def time_steps(self, train_loader, n: int) -> list[float]:
        """The seconds each of the first n optimizer steps of a fresh fit takes (trainer.time_limit's measurement):
        started as a fit starts (the hooks' state made, their start-up lines not logged), then real steps through
        the hooks. The model is trained by them: throw it away after."""
        hooks_log = logging.getLogger("textclf.engine.hooks")  # they say what they do once, when the fold starts
        level = hooks_log.level
        hooks_log.setLevel(logging.WARNING)
        try:
            self._start(None)
        finally:
            hooks_log.setLevel(level)
        times, t = [], time.perf_counter()
        with contextlib.closing(self._train_epoch(train_loader, 0, 0, self.batches_per_epoch(train_loader))) as steps:
            for _ in zip(range(n), steps):
                now = time.perf_counter()
                times.append(now - t)
                t = now
        return times

    def _planned_steps_done(self) -> bool:
        return self.settings.max_steps is not None and self.global_step >= self.settings.max_steps

    def _past_deadline(self) -> bool:
        """trainer.time_limit's deadline has passed (with several processes: on any of them, so all stop together)."""
        if self.settings.deadline is None:
            return False
        late = int(time.time() > self.settings.deadline)
        return bool(distributed.max_over_ranks(late) if self.ddp is not None else late)

    def batches_per_epoch(self, loader) -> int:
        limit = self.settings.limit_train_batches
        return len(loader) if limit is None else min(len(loader), int(limit))

    def _train_epoch(self, loader, epoch: int, start: int = 0, n_batches: int | None = None) -> Iterator[int]:
        """One epoch from batch `start` on (a resumed fold): forward, backward and the hooks for each batch, an
        optimizer step at each accumulation group's end, after which it yields the number of batches done."""
        n_batches = self.batches_per_epoch(loader) if n_batches is None else n_batches
        self.model.train()
        if start == 0:
            self.meter.start_epoch()
        self._row_t0 = time.perf_counter()
        self._bar = tqdm(total=n_batches, initial=start, desc=f"{self.settings.desc} epoch {epoch + 1}/"
                         f"{self.settings.epochs}", unit="batch", leave=False, dynamic_ncols=True,
                         mininterval=BAR_INTERVAL, **bar_off(not self.main))
        # a resumed epoch skips the batches it had done: the epoch's batch order is the same as before
        batches = itertools.islice(loader, start, n_batches)
        scales = getattr(getattr(loader, "batch_sampler", None), "scales", None)  # set by iterating: after islice
        try:
            for i, batch in enumerate(batches, start=start):
                batch = to_device(batch, self.device)
                # the last accumulation group of an epoch may be short: average over the batches it has
                self.group_size = min(self.accum, n_batches - (i // self.accum) * self.accum)
                self.sync_group = (i + 1) % self.accum == 0 or i + 1 == n_batches
                self.batch_scale = scales[i] if scales else 1.0
                again = self.ddp is not None and any(h.backwards_again(self) for h in self.hooks)
                loss = self.compute_loss(batch, last=not again)
                self.backward(loss)
                for h in self.hooks:
                    h.after_backward(self, batch)
                self.meter.add(loss * self.batch_scale, batch["input_ids"].size(0))
                self.progress["train_samples"] += batch["input_ids"].size(0)
                self._bar.update()
                if (i + 1) % self.accum == 0 or i + 1 == n_batches:
                    self.optimizer_step()
                    yield i + 1
        finally:
            self._bar.close()

    def _after_step(self, epoch: int, done: int, n_batches: int) -> Generator[Evaluation, None, bool]:
        """Step rows, step-level evaluation and checkpoints after an optimizer step; returns True to stop early."""
        step, ckpt, mid_epoch = self.global_step, self.checkpoint, done < n_batches
        log_every, eval_every = self.settings.log_every_steps, self.settings.eval_every_steps
        row_due = bool(log_every) and step % log_every == 0
        eval_due = mid_epoch and (bool(eval_every) and step % eval_every == 0
                                  or self._evaluation_inside_epoch(done, n_batches))
        ckpt_due = ckpt is not None and ckpt.due(step) and mid_epoch
        # the loss is read back (and checked) every 10 batches, and before anything that reports it
        if row_due or eval_due or ckpt_due or not mid_epoch or done % 10 == 0:
            self._check_loss(epoch, done)
        if row_due:
            self._step_row(epoch)
        stop = False
        if eval_due:
            stop = yield from self._evaluate(round(epoch + done / n_batches, 4))
            self.model.train()
        if ckpt is not None and not stop:
            if ckpt_due:
                self._save_checkpoint(epoch, done)
            fault_point(f"step:{ckpt.tag}:{step}")
        if mid_epoch and not stop:  # an epoch's last step stops after the epoch's evaluation instead
            self._stop_if_asked(epoch, done, saved=ckpt_due)
        return stop

    def _evaluation_inside_epoch(self, done: int, n_batches: int) -> bool:
        """evals_per_epoch=N: True at the optimizer steps that split this epoch into N even parts (the epoch's end
        evaluates anyway). Counted within the epoch, so an epoch whose steps N does not divide evaluates N times too.
        eval_every_steps, when set, wins."""
        n = None if self.settings.eval_every_steps else self.settings.evals_per_epoch
        return bool(n) and -(-done // self.accum) in eval_positions(-(-n_batches // self.accum), int(n))

    def _stop_if_asked(self, epoch: int, batch_index: int, saved: bool) -> None:
        """A safe point: when a signal asked the run to stop, checkpoint here (unless just done) and stop. With
        several processes they agree first (a signal may reach one rank a step before another): all stop here."""
        if self.stop is None:
            return
        if self.ddp is not None:  # the signal one rank got (the largest number, when they differ)
            signum = distributed.max_over_ranks(self.stop.requested or 0)
            self.stop.requested = signum or None
        if self.stop.requested is None:
            return
        if self.checkpoint is not None and not saved:
            self._save_checkpoint(epoch, batch_index)
        self.stop.check(f"at fold {self.settings.fold}, step {self.global_step}",
                        "checkpoint saved" if self.checkpoint is not None else "no checkpoint in this process")

    def _check_loss(self, epoch: int, done: int) -> None:
        k = self.meter.pending_batches
        mean = self.meter.flush()
        if not math.isfinite(mean):
            raise TextclfError(f"{self.settings.desc}: the training loss became {mean} at epoch {epoch + 1}, in "
                               f"batches {done + 1 - k}..{done} (optimizer step {self.global_step}); lower "
                               f"optimizer.lr or use precision=fp32")
        self._bar.set_postfix(loss=f"{mean:.4f}", lr=f"{self.step_lr:.2e}")

    def _step_row(self, epoch: int) -> None:
        loss, samples = self.meter.take_row()
        samples = distributed.sum_over_ranks(samples) if self.ddp is not None else samples  # every rank's rows
        now = time.perf_counter()
        row = {"step": self.global_step, "epoch": epoch + 1, "loss": loss, "lr": self.step_lr,
               "grad_norm": None if self.grad_norm is None else float(self.grad_norm),
               "samples_per_s": samples / max(now - self._row_t0, 1e-9)}
        if self.device.type == "cuda":
            row["peak_gpu_memory_mb"] = self._peak_gpu_memory_mb()
        self._row_t0 = now
        self.progress["steps"].append(row)
        self.callbacks.on_step(self.settings.fold, row)

    def _lr(self) -> float:
        return max(g["lr"] for g in self.optimizer.param_groups)

    def _evaluate(self, epoch: float) -> Generator[Evaluation, None, bool]:
        """Evaluate and keep a new best; yields the Evaluation between the hooks' before_evaluate and after_evaluate
        (so the caller sees the evaluated weights); returns True when early stopping ends the fit."""
        s, p = self.settings, self.progress
        self.meter.flush()
        for h in self.hooks:
            h.before_evaluate(self)
        t0 = time.perf_counter()
        scores = self.evaluator.evaluate(self.model)
        fault_point(f"eval:{s.fold}:{self.global_step}")
        elapsed = time.perf_counter() - t0
        p["eval_time"] += elapsed
        self._row_t0 += elapsed  # a step row's samples/s counts training time only
        p["eval_samples"] += scores.sequences
        row = {"step": self.global_step, "epoch": epoch, "train_loss": self.meter.epoch_mean(), **scores.metrics}
        p["history"].append(row)
        log.info("%s step %d (epoch %s/%d): %s", s.desc, self.global_step, epoch, s.epochs,
                 "  ".join(f"{k}={v:.4f}" for k, v in row.items() if k not in ("step", "epoch")))
        self.callbacks.on_evaluate(s.fold, row)
        best = p["best"]
        # an evaluation a hook does not count yet (SWA before its average begins) is the best only until one counts
        counts, best_counts = all(h.selectable(self) for h in self.hooks), p.get("best_counts", True)
        beats = better(s.monitor, row[s.monitor], None if best is None else best[s.monitor])
        is_best = (beats or not best_counts) if counts else (best is None or (not best_counts and beats))
        if is_best:
            p["best"], p["best_epoch"], p["stale"], p["best_counts"] = row, math.ceil(epoch), 0, counts
            order = np.argsort(scores.rows, kind="stable")
            self.best_logits = (scores.rows[order], scores.logits[order])
        else:
            p["stale"] += 1
        yield Evaluation(self.global_step, epoch, row, is_best, self.model)
        if is_best:
            self.callbacks.on_best(s.fold, row)
        for h in reversed(self.hooks):
            h.after_evaluate(self)
        return bool(s.early_stopping_patience and p["stale"] >= s.early_stopping_patience)

    def _choose(self, scores: Scores) -> Generator[Evaluation, None, None]:
        """Weights a hook made at the fit's end (in the model now, scored on the validation rows) become the fold's
        best: its row, outputs and saved weights. The row is not part of the history (the training curve)."""
        p = self.progress
        last = p["history"][-1] if p["history"] else None
        row = {"step": self.global_step, "epoch": last["epoch"] if last else float(self.settings.epochs),
               "train_loss": last["train_loss"] if last else float("nan"), **scores.metrics}
        p["best"], p["best_epoch"], p["best_counts"] = row, math.ceil(row["epoch"]), True
        order = np.argsort(scores.rows, kind="stable")
        self.best_logits = (scores.rows[order], scores.logits[order])
        yield Evaluation(self.global_step, row["epoch"], row, True, self.model)
        self.callbacks.on_best(self.settings.fold, row)

    # -- checkpoints
    @staticmethod
    def _fresh_progress() -> dict:
        return {"best": None, "best_epoch": -1, "history": [], "steps": [], "stale": 0, "train_time": 0.0,
                "train_samples": 0, "eval_time": 0.0, "eval_samples": 0}

    def _start(self, checkpoint) -> tuple[int, int]:
        """Fresh state for a fit, or the state of the fold's last checkpoint; (epoch, batch) to start at."""
        self.checkpoint, self.progress, self.best_logits = checkpoint, self._fresh_progress(), None
        self.meter = LossMeter(self.device)
        self.model.to(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        for h in self.hooks:
            h.on_fit_start(self)
        saved = checkpoint.load() if checkpoint is not None else None
        position = (0, 0) if saved is None else self._restore(*saved)
        if saved is not None:
            log.info("%s: resuming at epoch %d, batch %d (optimizer step %d)", self.settings.desc, position[0] + 1,
                     position[1], self.global_step)
        self.callbacks.on_fold_start(self.settings.fold, self.global_step)
        return position

    def _save_checkpoint(self, epoch: int, batch_index: int) -> None:
        snapshot = self._snapshot(epoch, batch_index)  # every rank: it gathers each rank's own part
        if self.main:
            self.checkpoint.save(self.model, snapshot)
        self.callbacks.on_checkpoint(self.settings.fold, self.global_step)

    def _snapshot(self, epoch: int, batch_index: int) -> dict:
        best_logits = self.best_logits
        return {"epoch": epoch, "batch_index": batch_index, "global_step": self.global_step,
                "meter": self.meter.state_dict(), "progress": self.progress,
                "best_rows": None if best_logits is None else best_logits[0],
                "best_logits": None if best_logits is None else best_logits[1],
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "hooks": [h.state_dict() for h in self.hooks],
                "rng": rng_state(),
                # several processes: each rank's own random state (dropout) and unflushed loss sum, by rank
                "ranks": distributed.all_gather({"rng": rng_state(), "meter": self.meter.state_dict()})
                if self.ddp is not None else None}

    def _own_part(self, state: dict) -> dict:
        """This rank's random state and loss meter from a checkpoint; one written by another number of
        processes cannot continue this run exactly."""
        ranks, world = state.get("ranks"), distributed.world_size() if self.ddp is not None else 1
        if (len(ranks) if ranks else 1) != world:
            raise TextclfError(f"{self.settings.desc}: the checkpoint in {self.checkpoint.folder} was written by a run of "
                               f"{len(ranks) if ranks else 1} process(es), this one has {world}: resume with the "
                               f"same number of processes, or delete that folder to restart the fold")
        return ranks[distributed.rank()] if ranks else state

    def _restore(self, weights: dict, state: dict) -> tuple[int, int]:
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        for h, hs in zip(self.hooks, state["hooks"]):
            h.load_state_dict(hs)
        self.global_step = int(state["global_step"])
        self.progress = state["progress"]
        own = self._own_part(state)
        self.meter.load_state_dict(own["meter"])
        if state["best_rows"] is not None:
            self.best_logits = (state["best_rows"].numpy(), state["best_logits"].numpy())
        set_rng_state(own["rng"])
        return int(state["epoch"]), int(state["batch_index"])
