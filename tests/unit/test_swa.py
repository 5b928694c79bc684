"""trainer.average=last (the SWA hook) on a tiny BERT and a real Trainer: the average follows its formula over the
last steps, only averaged evaluations can be the fold's best (so the fold keeps averaged weights), it never changes
training, with EMA it averages EMA's shadow, and its state comes back for a resumed fold."""
from __future__ import annotations

import torch
from test_hooks import (WeightsAtEvaluation, assert_same_weights, fit, make_trainer, tiny_loaders, tiny_model,
                        weights_of)

from textclf.engine.hooks import Hook
from textclf.engine.hooks.ema import EMA
from textclf.engine.hooks.swa import SWA


class LiveAfterStep(Hook):
    """The live weights after each optimizer step (a hook placed before SWA sees what SWA averages)."""

    def __init__(self):
        self.steps = []

    def after_step(self, trainer):
        self.steps.append((trainer.global_step, weights_of(trainer.model)))


def test_the_average_is_the_mean_of_the_weights_after_each_step_past_the_start_and_the_fold_keeps_it():
    train, valid = tiny_loaders(n_train=32)  # 8 steps an epoch, 16 in 2 epochs; start 0.5: steps 9..16 averaged
    live, swa, seen = LiveAfterStep(), SWA(start=0.5), WeightsAtEvaluation()
    trainer = make_trainer(tiny_model(), [live, swa, seen], epochs=2, steps_per_epoch=8)
    scores, saved = iter([0.9, 0.1]), []  # the live epoch-1 evaluation scores higher than the averaged one
    result = fit(trainer, train, valid, lambda rows, logits: {"macro_f1": next(scores)}, saved)

    averaged = [w for step, w in live.steps if step > 8]
    assert len(averaged) == 8 and swa.count == 8
    for name, mean in swa.average_state().items():
        torch.testing.assert_close(mean, torch.stack([w[name] for w in averaged]).mean(0), rtol=1e-5, atol=1e-6)
    assert result.best_metrics["step"] == 16, "the averaged evaluation is the fold's best, though it scored lower"
    for name, mean in swa.average_state().items():
        assert torch.equal(saved[-1][name], mean), "the saved weights are the average"
        assert torch.equal(seen.seen[-1][name], mean), "the last evaluation saw the average"
    assert_same_weights(trainer.model, live.steps[-1][1])  # the fit ends on the live weights


def test_averaging_never_changes_training():
    train, valid = tiny_loaders(n_train=32)
    averaged, plain = tiny_model(), tiny_model()
    fit(make_trainer(averaged, [SWA(start=0.25)], epochs=2, steps_per_epoch=8), train, valid, lambda rows, logits: {"macro_f1": 0.5})
    fit(make_trainer(plain, [], epochs=2, steps_per_epoch=8), train, valid, lambda rows, logits: {"macro_f1": 0.5})
    assert_same_weights(averaged, weights_of(plain))


def test_with_ema_the_average_is_of_the_shadow_and_both_hooks_put_the_live_weights_back():
    train, valid = tiny_loaders(n_train=32)
    ema, swa = EMA(decay=0.5), SWA(start=0.5)
    shadows = []

    class ShadowAfterStep(Hook):
        def after_step(self, trainer):
            shadows.append({n: t.clone() for n, t in ema.shadow_state().items()})

    model = tiny_model()
    trainer = make_trainer(model, [ema, ShadowAfterStep(), swa], epochs=2, steps_per_epoch=8)
    fit(trainer, train, valid, lambda rows, logits: {"macro_f1": 0.5})
    for name, mean in swa.average_state().items():
        torch.testing.assert_close(mean, torch.stack([s[name] for s in shadows[8:]]).mean(0), rtol=1e-5, atol=1e-6)
    plain = tiny_model()
    fit(make_trainer(plain, [], epochs=2, steps_per_epoch=8), train, valid, lambda rows, logits: {"macro_f1": 0.5})
    assert_same_weights(model, weights_of(plain))  # EMA and SWA swapped in and out in turn: training unchanged


def test_a_resumed_fold_gets_the_average_back():
    train, valid = tiny_loaders(n_train=32)
    swa = SWA(start=0.5)
    fit(make_trainer(tiny_model(), [swa], epochs=2, steps_per_epoch=8), train, valid, lambda rows, logits: {"macro_f1": 0.5})
    again = SWA(start=0.5)
    again.on_fit_start(make_trainer(tiny_model(1), [again], epochs=2, steps_per_epoch=8))
    again.load_state_dict(swa.state_dict())
    assert again.count == swa.count
    for name, mean in swa.average_state().items():
        assert torch.equal(again.average_state()[name], mean)
