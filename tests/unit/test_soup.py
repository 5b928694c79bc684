"""trainer.average=top (the Soup hook) on a tiny BERT and a real Trainer: it keeps the k best evaluations' weights,
the greedy soup adds an ingredient only when the soup scores at least as well with it, the uniform soup is the mean
of all k, the soup is what the fold saves and predicts with, training is unchanged, and a resumed fold gets the kept
weights back."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_hooks import WeightsAtEvaluation, fit, make_trainer, tiny_loaders, tiny_model, weights_of

from textclf.engine.hooks.ema import EMA
from textclf.engine.hooks.soup import Soup
from textclf.engine.trainer import predict_logits
from textclf.errors import TextclfError

# 8 evaluations (2 epochs x 4; 8 optimizer steps an epoch: at steps 2, 4, 6, 8, 10, 12, 14, 16)
TRAINING = [0.1, 0.5, 0.3, 0.9, 0.2, 0.8, 0.4, 0.7]  # the best three: steps 8 (0.9), 12 (0.8), 16 (0.7)


def soup_fit(soup, soup_scores, hooks_before=()):
    train, valid = tiny_loaders(n_train=32)
    seen = WeightsAtEvaluation()
    trainer = make_trainer(tiny_model(), [*hooks_before, seen, soup], epochs=2, steps_per_epoch=8,
                           evals_per_epoch=4)
    scores, saved = iter(TRAINING + soup_scores), []
    result = fit(trainer, train, valid, lambda rows, logits: {"macro_f1": next(scores)}, saved)
    assert next(scores, None) is None, "the soup evaluated the expected number of times"
    return trainer, result, saved, seen, valid


def mean_of(seen, steps):
    at = {2 * (i + 1): w for i, w in enumerate(seen.seen[:8])}  # the weights each training evaluation saw, by step
    return {n: torch.stack([at[s][n] for s in steps]).mean(0) for n in at[2]}


def test_the_greedy_soup_adds_an_evaluation_only_when_the_soup_scores_at_least_as_well_and_the_fold_keeps_it():
    soup = Soup(k=3, mode="greedy")
    # the best single again: 0.9; with step 12: 0.9 (as good: added); with step 16 too: 0.85 (worse: left out)
    trainer, result, saved, seen, valid = soup_fit(soup, [0.9, 0.9, 0.85])
    assert [k["step"] for k in soup.kept] == [8, 12, 16]
    assert soup.chosen == [8, 12]
    expected = mean_of(seen, [8, 12])
    for name, mean in expected.items():
        torch.testing.assert_close(saved[-1][name], mean, rtol=1e-6, atol=1e-7)  # the fold saves the soup
    assert result.best_metrics["macro_f1"] == 0.9 and result.best_metrics["step"] == 16
    assert len(result.history) == 8, "the soup's evaluations are not part of the training curve"
    rows, logits = predict_logits(trainer.model, valid, torch.device("cpu"))
    order = np.argsort(rows)
    np.testing.assert_allclose(result.best_valid_logits[1], logits[order], rtol=1e-5, atol=1e-6)


def test_a_soup_that_scores_worse_keeps_the_best_single_evaluation():
    soup = Soup(k=3, mode="greedy")
    _, result, saved, seen, _ = soup_fit(soup, [0.9, 0.6, 0.7])
    assert soup.chosen == [8]
    for name, w in mean_of(seen, [8]).items():
        assert torch.equal(saved[-1][name], w)
    assert result.best_metrics["macro_f1"] == 0.9


def test_the_uniform_soup_is_the_mean_of_the_k_best():
    soup = Soup(k=3, mode="uniform")
    _, result, saved, seen, _ = soup_fit(soup, [0.7])  # one evaluation, kept whatever it scores
    assert soup.chosen == [8, 12, 16]
    for name, mean in mean_of(seen, [8, 12, 16]).items():
        torch.testing.assert_close(saved[-1][name], mean, rtol=1e-6, atol=1e-7)
    assert result.best_metrics["macro_f1"] == 0.7


def test_the_soup_never_changes_training():
    train, valid = tiny_loaders(n_train=32)
    plain = tiny_model()
    fit(make_trainer(plain, [], epochs=2, steps_per_epoch=8, evals_per_epoch=4), train, valid,
        lambda rows, logits: {"macro_f1": 0.5})
    _, _, _, seen, _ = soup_fit(Soup(k=3), [0.9, 0.9, 0.85])
    for name, w in weights_of(plain).items():  # the weights the last training evaluation saw: the plain fit's end
        assert torch.equal(seen.seen[7][name], w)


def test_with_ema_the_soup_is_of_the_shadows_the_evaluations_saw():
    soup = Soup(k=2, mode="uniform")
    _, _, saved, seen, _ = soup_fit(soup, [0.1], hooks_before=[EMA(decay=0.5)])
    assert soup.chosen == [8, 12]
    for name, mean in mean_of(seen, [8, 12]).items():  # `seen` sits after EMA: it records the shadow evaluated
        torch.testing.assert_close(saved[-1][name], mean, rtol=1e-6, atol=1e-7)


def test_a_resumed_fold_gets_the_kept_evaluations_back():
    soup = Soup(k=3)
    soup_fit(soup, [0.9, 0.9, 0.85])
    again = Soup(k=3)
    again.on_fit_start(make_trainer(tiny_model(1), [again], epochs=2, steps_per_epoch=8))
    again.load_state_dict(soup.state_dict())
    assert [(k["step"], k["score"]) for k in again.kept] == [(k["step"], k["score"]) for k in soup.kept]
    for a, b in zip(again.kept, soup.kept):
        assert all(torch.equal(x, y) for x, y in zip(a["weights"], b["weights"]))


@pytest.mark.parametrize("kwargs, message", [({"k": 0}, "average_top_k"), ({"mode": "best"}, "average_soup")])
def test_bad_settings_are_refused_clearly(kwargs, message):
    with pytest.raises(TextclfError, match=message):
        Soup(**kwargs)
