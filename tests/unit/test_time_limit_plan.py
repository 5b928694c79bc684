"""trainer.time_limit's arithmetic: durations as users write them, and the plan that fits epochs and folds into a
budget from measured costs (textclf.engine.time_limit; the run's own measurement is tested end to end in
tests/integration/test_time_limit.py)."""
from __future__ import annotations

import pytest

from textclf.config.durations import parse_duration
from textclf.engine.time_limit import RESERVE, Costs, Plan, plan
from textclf.errors import TextclfError


@pytest.mark.parametrize("text, seconds", [("20m", 1200), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400),
                                           (300, 300), ("45", 45), ("2 min", 120), ("1d", 86400), (None, None)])
def test_a_duration_is_read_as_users_write_it(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "20x", "m20", "-5m", 0, -3, "0s", True, "10m junk"])
def test_a_duration_that_is_not_one_is_refused(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


COSTS = Costs(step_s=1.0, steps_per_epoch=100, eval_s=10.0, fold_s=5.0, end_s=15.0)  # an epoch: 110 s


def test_the_epochs_asked_for_are_kept_when_they_fit():
    p = plan(3600, 20, COSTS, epochs=3, folds=5)  # 5 x (3 x 110 + 5) + 20 + 15 = 1710 s
    assert (p.epochs, p.steps, p.folds) == (3, None, 5)
    assert p.planned_s == pytest.approx(1710)
    assert "the whole run fits" in p.describe()


def test_the_steps_shrink_to_the_budget_cutting_the_last_epoch_short():
    budget = 1000  # free: 950 - 20 - 15 = 915 s; 5 folds: 178 s each, less the 2 evaluations of 2 epochs -> 158 steps
    p = plan(budget, 20, COSTS, epochs=3, folds=5)
    assert (p.epochs, p.steps, p.folds) == (2, 158, 5)
    assert p.planned_s <= budget * (1 - RESERVE) + 1e-9
    assert p.planned_s >= budget * 0.85, "the budget is used, not left idle by rounding down to whole epochs"
    assert "trainer.epochs 3 -> 1.58: 158 of 300 optimizer steps a fold" in p.describe()


def test_folds_shrink_when_not_even_one_epoch_of_each_fits():
    p = plan(400, 20, COSTS, epochs=2, folds=5)  # free 345 s: 3 folds of 110 s (110 s each) and 5 s fixed
    assert (p.folds, p.epochs) == (3, 1)
    assert "folds 5 -> 3" in p.describe() and "out-of-fold outputs cover their validation rows only" in p.describe()


def test_a_budget_without_room_for_one_epoch_of_one_fold_is_refused_with_what_it_needs():
    with pytest.raises(TextclfError, match=r"trainer.time_limit=1.5 min does not fit one epoch of one fold.*"
                                           r"1.00 s per optimizer step x 100 steps"):
        plan(90, 20, COSTS, epochs=2, folds=5)


def test_the_plan_survives_its_file():
    p = plan(3600, 20, COSTS, epochs=3, folds=5)
    assert Plan.from_dict(p.to_dict()) == p
    assert p.deadline_s == pytest.approx(3600 * (1 - RESERVE) - COSTS.end_s)


# ----------------------------------------------------------------------------- the deadline inside a fit
def test_a_fit_past_its_deadline_stops_after_its_step_evaluated_there():
    import time

    from test_hooks import fit, make_trainer, tiny_loaders, tiny_model

    train, valid = tiny_loaders(n_train=32)  # 8 batches an epoch
    trainer = make_trainer(tiny_model(), epochs=3, deadline=time.time() - 1)
    result = fit(trainer, train, valid, lambda rows, logits: {"macro_f1": 0.5})
    assert trainer.global_step == 1, "the first optimizer step runs, then the fit stops"
    assert [row["step"] for row in result.history] == [1], "one evaluation, at the step where it stopped"
    assert result.history[0]["epoch"] == pytest.approx(1 / 8)
    assert result.best_metrics["step"] == 1


def test_a_fit_with_time_left_trains_every_epoch():
    import time

    from test_hooks import fit, make_trainer, tiny_loaders, tiny_model

    train, valid = tiny_loaders(n_train=32)
    trainer = make_trainer(tiny_model(), epochs=2, deadline=time.time() + 3600)
    result = fit(trainer, train, valid, lambda rows, logits: {"macro_f1": 0.5})
    assert trainer.global_step == 16 and [row["epoch"] for row in result.history] == [1, 2]


def test_a_fit_with_planned_steps_ends_inside_its_last_epoch_evaluated_there():
    from test_hooks import fit, make_trainer, tiny_loaders, tiny_model

    train, valid = tiny_loaders(n_train=32)  # 8 batches an epoch
    trainer = make_trainer(tiny_model(), epochs=2, max_steps=11)
    result = fit(trainer, train, valid, lambda rows, logits: {"macro_f1": 0.5})
    assert trainer.global_step == 11
    assert [row["step"] for row in result.history] == [8, 11]
    assert result.history[-1]["epoch"] == pytest.approx(1 + 3 / 8)
