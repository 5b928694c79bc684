"""trainer.time_limit: fit a run into a wall-clock budget.

Before the first fold trains, the run measures what its work costs on this machine (TrainRun.measure_costs: a few
real optimizer steps of fold 0's model on its own batches, a few validation batches) and `plan` turns the measured
costs into the epochs each fold trains and, with k-fold, how many folds fit. The schedule (warmup, decay) is then
built for the steps that will really run. The plan is written to the run folder (time_plan.json) so a resumed run
keeps it: measured again, the numbers would differ and the resumed fold would not continue the same schedule.

While the run trains, the deadline stops a fold that runs late after its optimizer step (the best evaluation so far
is kept, as with early stopping): the plan is an estimate, the deadline is the promise.

Pure arithmetic here (no torch): the measurements come in as numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from textclf.errors import TextclfError

#: the share of the budget kept free for what the plan does not measure (start-up, writing the run's files)
RESERVE = 0.05


def say(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


@dataclass(frozen=True)
class Costs:
    """What one fold's work costs, measured on this machine (seconds)."""

    step_s: float  # one optimizer step (forward, backward, hooks, optimizer) on a training batch
    steps_per_epoch: int  # the fold's optimizer steps an epoch
    eval_s: float  # one evaluation of the fold's validation rows
    evals_per_epoch: int = 1  # evaluations an epoch (evals_per_epoch, eval_every_steps)
    fold_s: float = 0.0  # a fold's fixed cost: building its model, saving it, predicting the test rows
    end_s: float = 0.0  # the run's end: out-of-fold assembly, error analysis, plots, report

    def epoch_s(self) -> float:
        return self.steps_per_epoch * self.step_s + self.evals_per_epoch * self.eval_s


@dataclass(frozen=True)
class Plan:
    budget_s: float
    epochs: int  # each fold's epochs (<= trainer.epochs); the last one may be cut short by `steps`
    steps: int | None  # each fold's optimizer steps when fewer than epochs x steps an epoch (None: every step)
    folds: int  # folds trained, the first ones of the split (<= the split's)
    planned_s: float  # what the plan expects the run to take, from its start
    asked_epochs: int
    asked_folds: int
    steps_per_epoch: int
    step_s: float
    deadline_s: float  # from the run's start: a fold still training then stops after its step

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Plan":
        return Plan(**{k: d[k] for k in Plan.__dataclass_fields__})

    def describe(self) -> str:
        cut = []
        total = self.asked_epochs * self.steps_per_epoch
        trained = self.steps if self.steps is not None else self.epochs * self.steps_per_epoch
        if trained < total:
            cut.append(f"trainer.epochs {self.asked_epochs} -> {trained / self.steps_per_epoch:.2f}: {trained} of "
                       f"{total} optimizer steps a fold")
        if self.folds < self.asked_folds:
            cut.append(f"folds {self.asked_folds} -> {self.folds} (the first {self.folds}; the out-of-fold outputs "
                       f"cover their validation rows only)")
        return (f"time_limit {say(self.budget_s)}: {self.step_s:.2f} s per optimizer step measured; planned "
                f"{self.folds} fold(s) x {trained / self.steps_per_epoch:.2f} epoch(s), about {say(self.planned_s)}"
                + (f" ({'; '.join(cut)})" if cut else " (the whole run fits)"))


def plan(budget_s: float, elapsed_s: float, costs: Costs, epochs: int, folds: int) -> Plan:
    """The most optimizer steps a fold (up to `epochs` epochs of them) that let every fold train within the budget,
    the last epoch cut short where a whole one does not fit; when not even one epoch of every fold fits, the most
    folds that fit one epoch each. Raises TextclfError when not one epoch of one fold fits."""
    free = budget_s * (1 - RESERVE) - elapsed_s - costs.end_s
    epoch_s, spe = costs.epoch_s(), max(1, costs.steps_per_epoch)

    def per_fold(n: int) -> float:  # the seconds each of n folds may train
        return (free - n * costs.fold_s) / n

    n_folds = folds
    while n_folds >= 1 and per_fold(n_folds) < epoch_s:
        n_folds -= 1
    if n_folds < 1:
        need = elapsed_s + costs.end_s + epoch_s + costs.fold_s
        raise TextclfError(
            f"trainer.time_limit={say(budget_s)} does not fit one epoch of one fold: measured "
            f"{costs.step_s:.2f} s per optimizer step x {costs.steps_per_epoch} steps an epoch plus "
            f"{say(costs.eval_s)} an evaluation; one epoch of one fold needs about {say(need / (1 - RESERVE))} "
            f"in all. Give a larger trainer.time_limit, or train less per epoch (model.max_length, "
            f"trainer.limit_train_batches, a smaller data.train_file)")
    asked = epochs * spe
    room = per_fold(n_folds)
    steps = min(asked, int(room / epoch_s * spe)) if epoch_s > 0 else asked
    n_epochs = -(-steps // spe)
    evals_s = n_epochs * costs.evals_per_epoch * costs.eval_s  # a cut epoch still ends with its evaluation
    if steps * costs.step_s + evals_s > room and costs.step_s > 0:
        steps = max(spe * (n_epochs - 1), int((room - evals_s) / costs.step_s))
        n_epochs = -(-steps // spe)
    fold_train_s = steps * costs.step_s + n_epochs * costs.evals_per_epoch * costs.eval_s
    planned = elapsed_s + n_folds * (fold_train_s + costs.fold_s) + costs.end_s
    return Plan(budget_s=budget_s, epochs=n_epochs, steps=steps if steps < n_epochs * spe else None, folds=n_folds,
                planned_s=planned, asked_epochs=epochs, asked_folds=folds, steps_per_epoch=spe,
                step_s=costs.step_s, deadline_s=budget_s * (1 - RESERVE) - costs.end_s)
