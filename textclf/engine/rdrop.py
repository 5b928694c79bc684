"""R-Drop (Liang et al. 2021): an objective that runs each batch twice (two dropout masks a row) and adds the
passes' divergence to their task loss. It changes how a batch becomes a loss, so it is an objective
(textclf.engine.objective), not a hook."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

from textclf.engine.objective import model_inputs
from textclf.errors import TextclfError

TASKS = ("binary", "multiclass", "multilabel", "regression")


class RDrop:
    """R-Drop (Liang et al. 2021): the task loss of two dropout passes plus α times their divergence.

    loss = ½·(loss_fn(l1, y) + loss_fn(l2, y)) + α·D(l1, l2), where D is
      - softmax outputs (binary with two logits, multiclass): symmetric KL ½·(KL(p1‖p2) + KL(p2‖p1)),
        summed over classes and averaged over rows;
      - sigmoid outputs (multilabel; binary with one logit): the symmetric KL of each label's Bernoulli,
        averaged over rows and labels like the BCE loss (for one logit this equals the two-class softmax KL);
      - regression: the mean squared difference between the two passes.

    The two passes are ONE forward over the batch repeated twice (each input tensor concatenated with itself
    along the batch dimension): in train mode every row gets its own dropout mask, so the halves differ.
    One pass over 2N rows is faster than two over N, but it doubles activation memory: a step of
    batch_size N needs the memory of plain training at 2N (halve trainer.batch_size if it no longer fits).
    """

    def __init__(self, alpha: float = 1.0, task: str = "multiclass", single_logit: bool = False):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
            raise TextclfError(f"rdrop.alpha: must be a number >= 0, got {alpha!r}")
        if task not in TASKS:
            raise TextclfError(f"R-Drop: unknown task {task!r} (known: {', '.join(TASKS)})")
        self.alpha, self.task, self.single_logit = float(alpha), task, bool(single_logit)
        if task == "regression":
            self.divergence = mse_between
        elif task == "multilabel" or (task == "binary" and single_logit):
            self.divergence = symmetric_bernoulli_kl
        else:
            self.divergence = symmetric_softmax_kl

    def __call__(self, model, batch: dict, loss_fn, autocast_ctx_factory: Callable = contextlib.nullcontext):
        inputs = {k: torch.cat([v, v]) for k, v in model_inputs(batch).items()}
        with autocast_ctx_factory():
            logits = model(**inputs)
        l1, l2 = logits.float().chunk(2)
        y = batch["labels"]
        return 0.5 * (loss_fn(l1, y) + loss_fn(l2, y)) + self.alpha * self.divergence(l1, l2)

    def describe(self) -> str:
        """One line for the run's log: what a step now computes."""
        kind = DIVERGENCE_NAMES[self.divergence]
        return (f"alpha={self.alpha:g}: each batch runs twice (two dropout masks a row); loss = the passes' mean "
                f"task loss + {self.alpha:g} x their {kind}")

    def __repr__(self) -> str:
        return f"RDrop(alpha={self.alpha}, task={self.task!r}, single_logit={self.single_logit})"


def symmetric_softmax_kl(l1: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """½·(KL(p1‖p2) + KL(p2‖p1)) of softmax(l1), softmax(l2), summed over classes, mean over rows."""
    lp1, lp2 = F.log_softmax(l1.float(), dim=-1), F.log_softmax(l2.float(), dim=-1)
    # kl_div(input, target) is KL(target ‖ input)
    return 0.5 * (F.kl_div(lp2, lp1, reduction="batchmean", log_target=True)
                  + F.kl_div(lp1, lp2, reduction="batchmean", log_target=True))


def symmetric_bernoulli_kl(l1: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """½·(KL(p‖q) + KL(q‖p)) of the Bernoullis p = σ(l1), q = σ(l2), averaged over every element.

    Written as ½·[(p − q)(log p − log q) + ((1−p) − (1−q))(log(1−p) − log(1−q))] with every log from
    logsigmoid(±x) and 1 − p as exp(logsigmoid(−x)): finite for any logit, and accurate where σ saturates in
    float32 (1 − p would round to 0 there).
    """
    l1, l2 = l1.float(), l2.float()
    lp1, lp2 = F.logsigmoid(l1), F.logsigmoid(l2)
    ln1, ln2 = F.logsigmoid(-l1), F.logsigmoid(-l2)
    kl = (lp1.exp() - lp2.exp()) * (lp1 - lp2) + (ln1.exp() - ln2.exp()) * (ln1 - ln2)
    return 0.5 * kl.mean()


def mse_between(l1: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the two passes' outputs (regression)."""
    return F.mse_loss(l1.float(), l2.float())


#: how the run's log names each divergence R-Drop can use
DIVERGENCE_NAMES = {symmetric_softmax_kl: "symmetric KL", symmetric_bernoulli_kl: "per-label symmetric KL",
                    mse_between: "mean squared difference"}
