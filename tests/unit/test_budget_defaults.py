"""Budget-aware defaults: each trick's `auto` value computed as documented (conf/adversarial, conf/ema, README)
for a few run lengths and widths; an explicit value wins; the attack really waits for its start step. And the
class-balanced sampler: class frequencies within a bound, length grouping kept, reproducible."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from textclf.data.tables import EpochBatches, balanced_weights
from textclf.engine.hooks.awp import AWP
from textclf.engine.hooks.ema import EMA
from textclf.engine.hooks.fgm import FGM
from textclf.engine.hooks.pgd import PGD
from textclf.engine.trainer import FitSettings, Trainer, eval_positions
from textclf.errors import TextclfError


def tiny_model(hidden: int = 32) -> nn.Module:
    from transformers import BertConfig, BertModel

    from textclf.models.classifier import TextClassifier
    from textclf.models.heads import ClassificationHead
    from textclf.models.pooling import MeanPooling

    torch.manual_seed(0)
    backbone = BertModel(BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    return TextClassifier(backbone, MeanPooling(hidden), ClassificationHead(hidden, 3, dropout=0.0)).train()


def trainer_for(model, hooks, *, steps_per_epoch: int | None, epochs: int = 2) -> Trainer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    settings = FitSettings(torch.device("cpu"), epochs, "macro_f1", log_every_steps=10, steps_per_epoch=steps_per_epoch)
    return Trainer(model, nn.CrossEntropyLoss(), optimizer, scheduler, settings, None, hooks=hooks)


def batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 100, (4, 6), generator=g), "attention_mask": torch.ones(4, 6, dtype=torch.long),
            "labels": torch.randint(0, 3, (4,), generator=g)}


@pytest.mark.parametrize("hidden", [32, 768])
def test_fgm_and_pgd_auto_epsilon_scale_with_the_embedding_width(hidden):
    for hook in (FGM(), PGD()):
        hook.on_fit_start(hook_trainer := trainer_for(tiny_model(hidden), [hook], steps_per_epoch=50))
        base = 0.3 if isinstance(hook, FGM) else 0.15  # PGD's three aimed steps: half of FGM's ball
        assert hook.epsilon == pytest.approx(base * math.sqrt(hidden / 768))
        if isinstance(hook, PGD):
            assert hook.alpha == pytest.approx(0.3 * hook.epsilon)
        assert hook_trainer.total_steps == 100


def test_explicit_values_win_over_auto():
    fgm, pgd = FGM(epsilon=1.0, start=0), PGD(epsilon=0.5)
    for hook in (fgm, pgd):
        hook.on_fit_start(trainer_for(tiny_model(), [hook], steps_per_epoch=50))
    assert (fgm.epsilon, fgm.start_step) == (1.0, 0)
    assert (pgd.epsilon, pgd.alpha) == (0.5, pytest.approx(0.15))
    ema = EMA(decay=0.99)
    ema.on_fit_start(trainer_for(tiny_model(), [ema], steps_per_epoch=50))
    assert ema.decay == 0.99


@pytest.mark.parametrize("steps_per_epoch,epochs,fgm_start,awp_start", [(63, 2, 63, 63), (1000, 3, 1500, 1500),
                                                                        (3, 1, 2, 2)])
def test_attacks_start_after_their_share_of_the_fold(steps_per_epoch, epochs, fgm_start, awp_start):
    fgm, awp = FGM(), AWP()
    for hook in (fgm, awp):
        hook.on_fit_start(trainer_for(tiny_model(), [hook], steps_per_epoch=steps_per_epoch, epochs=epochs))
    assert fgm.start_step == fgm_start == math.ceil(0.5 * steps_per_epoch * epochs)
    assert awp.start_step == awp_start == math.ceil(0.5 * steps_per_epoch * epochs)
    share, step = FGM(start=0.25), FGM(start=7)
    for hook in (share, step):
        hook.on_fit_start(trainer_for(tiny_model(), [hook], steps_per_epoch=10))
    assert (share.start_step, step.start_step) == (5, 7)


def test_awp_start_epoch_still_wins():
    awp = AWP(start_epoch=1)
    awp.on_fit_start(trainer_for(tiny_model(), [awp], steps_per_epoch=10))
    assert awp.start_step == 10


@pytest.mark.parametrize("steps,decay", [(126, 1 - 1 / 12.6), (5000, 0.998), (20, 0.9), (10 ** 7, 0.9999)])
def test_ema_auto_decay_averages_over_a_tenth_of_the_steps(steps, decay):
    ema = EMA()
    ema.on_fit_start(trainer_for(tiny_model(), [ema], steps_per_epoch=steps, epochs=1))
    assert ema.decay == pytest.approx(decay)


@pytest.mark.parametrize("setting,steps,expected", [("auto", 126, math.ceil(EMA.AUTO_START * 126)),
                                                     (0.5, 126, 63), (0.25, 10, 3), (7, 126, 7), (0, 126, 0)])
def test_ema_start_step_is_a_share_of_the_fold_or_a_step(setting, steps, expected):
    ema = EMA(start_step=setting)
    ema.on_fit_start(trainer_for(tiny_model(), [ema], steps_per_epoch=steps, epochs=1))
    assert ema.start_step == expected


def test_the_attack_adds_no_backward_before_its_start_step():
    model = tiny_model()
    fgm = FGM(start=2)
    trainer = trainer_for(model, [fgm], steps_per_epoch=4)
    fgm.on_fit_start(trainer)
    calls = []
    plain = trainer.compute_loss
    trainer.compute_loss = lambda b, last=True: calls.append(trainer.global_step) or plain(b, last)
    for step in range(4):
        b = batch(step)
        trainer.backward(trainer.compute_loss(b))
        fgm.after_backward(trainer, b)
        trainer.optimizer_step()
    # steps 0, 1: the plain forward only; steps 2, 3: plain + adversarial
    assert calls == [0, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("make", [lambda: FGM(start=1.5), lambda: FGM(start=-1), lambda: FGM(epsilon="big"),
                                  lambda: EMA(decay="fast"), lambda: EMA(start_step=1.0), lambda: EMA(start_step=-2), lambda: AWP(start_epoch=-1)])
def test_bad_budget_values_are_refused_with_the_key(make):
    with pytest.raises(TextclfError, match="adversarial|ema"):
        make()


def test_evals_per_epoch_spreads_the_evaluations_inside_each_epoch():
    assert eval_positions(63, 3) == {21, 42}
    assert eval_positions(10, 3) == {4, 7}
    assert eval_positions(223, 3) == {75, 149}
    assert eval_positions(2, 3) == {1}  # fewer steps than evaluations: one per step, the epoch's end included
    assert eval_positions(63, 1) == frozenset()


def sized_loaders(n_train: int, batch_size: int = 4):
    from textclf.data.tables import Collator, Encoded, sorted_batches

    rng = np.random.default_rng(0)
    n = n_train + 8
    lengths = rng.integers(3, 10, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    encoded = Encoded(rng.integers(5, 100, offsets[-1]).astype(np.int32), offsets)
    collate = Collator(encoded, rng.integers(0, 3, n).astype(np.int64), pad_id=0)
    loader = torch.utils.data.DataLoader
    train = loader(range(n), batch_sampler=EpochBatches(np.arange(n_train), encoded.lengths, batch_size, 2, seed=0),
                   collate_fn=collate)
    valid = loader(range(n), batch_sampler=sorted_batches(np.arange(n_train, n), encoded.lengths, batch_size),
                   collate_fn=collate)
    return train, valid


@pytest.mark.parametrize("accum, expected", [(1, [4, 8, 11, 15, 19, 22]), (2, [2, 4, 6, 8, 10, 12])])
def test_evals_per_epoch_evaluates_n_times_in_every_epoch(accum, expected):
    """11 batches an epoch, 3 evaluations each: a steady interval (every 4 steps) would evaluate at 12 right after
    the first epoch's end at 11, 7 times in 2 epochs; and trainer.eval_every_steps still wins."""
    from test_hooks import fit  # tests/unit is on sys.path (pytest's rootdir-relative import)

    train, valid = sized_loaders(44)
    optimizer = torch.optim.SGD((model := tiny_model()).parameters(), lr=0.01)
    settings = FitSettings(torch.device("cpu"), 2, "macro_f1", max_grad_norm=1.0, log_every_steps=10, evals_per_epoch=3,
                           grad_accum_steps=accum)
    trainer = Trainer(model, nn.CrossEntropyLoss(), optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                      settings, None)
    result = fit(trainer, train, valid, lambda rows, logits: {"macro_f1": 0.5})
    assert [row["step"] for row in result.history] == expected
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    settings = FitSettings(torch.device("cpu"), 2, "macro_f1", max_grad_norm=1.0, log_every_steps=10, evals_per_epoch=3,
                           eval_every_steps=5)
    trainer = Trainer(model, nn.CrossEntropyLoss(), optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                      settings, None)
    assert [row["step"] for row in fit(trainer, train, valid, lambda rows, logits: {"macro_f1": 0.5}).history] == \
        [5, 10, 11, 15, 20, 22]


# ----------------------------------------------------------------------------- balanced sampler
def test_balanced_sampler_evens_out_class_frequencies_and_keeps_length_grouping():
    rng = np.random.default_rng(0)
    y = np.array([0] * 900 + [1] * 90 + [2] * 10)
    lengths = rng.integers(5, 60, size=len(y))
    sampler = EpochBatches(np.arange(len(y)), lengths, 16, 50, seed=3, weights=balanced_weights(y, "multiclass"))
    drawn = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)  # as many batches as an unbalanced epoch
        assert sum(len(b) for b in batches) == len(y)
        spread = [lengths[b].max() - lengths[b].min() for b in batches if len(b) == 16]
        assert np.median(spread) <= 3  # still sorted by length inside windows
        drawn.extend(i for b in batches for i in b)
    share = np.bincount(y[drawn], minlength=3) / len(drawn)
    assert np.all(np.abs(share - 1 / 3) < 0.03), share
    again = EpochBatches(np.arange(len(y)), lengths, 16, 50, seed=3, weights=balanced_weights(y, "multiclass"))
    again.set_epoch(4)
    assert list(again) == batches  # reproducible by seed and epoch


def test_balanced_weights_multilabel_and_regression():
    y = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 0]])
    w = balanced_weights(y, "multilabel")
    assert w[3] == pytest.approx(3 * w[0])  # label 1 is three times rarer
    assert w[4] > 0
    with pytest.raises(TextclfError, match="regression"):
        balanced_weights(np.array([0.5, 1.5]), "regression")


# ----------------------------------------------------------------------------- multilabel at small budgets
def test_tune_threshold_auto_is_on_for_multilabel_only():
    from omegaconf import OmegaConf

    from textclf.commands.train import tunes_threshold

    auto = OmegaConf.create({"tune_threshold": "auto"})
    assert tunes_threshold(auto, "multilabel") and not tunes_threshold(auto, "binary")
    assert not tunes_threshold(OmegaConf.create({"tune_threshold": False}), "multilabel")
    assert tunes_threshold(OmegaConf.create({"tune_threshold": True}), "binary")


def test_multilabel_output_bias_starts_at_the_labels_log_odds():
    from textclf.data.tasks import LabelSpace
    from textclf.commands.train import prior_bias

    model = tiny_model()
    labels = LabelSpace(task="multilabel", classes=["a", "b", "c"])
    y = np.array([[1, 0, 0]] * 9 + [[1, 1, 0]])  # rates 1.0, 0.1, 0.0 (clipped)
    prior_bias(model, labels, y)
    bias = model.head.out.bias.detach().numpy()
    assert bias[1] == pytest.approx(np.log(0.1 / 0.9), rel=1e-5)
    assert bias[0] > 9 and bias[2] < -9  # clipped at 1e-4, finite
    before = tiny_model().head.out.bias.detach().clone()
    multiclass = tiny_model()
    prior_bias(multiclass, LabelSpace(task="multiclass", classes=["a", "b", "c"]), np.array([0, 1, 2]))
    assert torch.equal(multiclass.head.out.bias.detach(), before)  # softmax tasks keep their initialisation


def test_validate_refuses_bad_trick_values_and_a_balanced_regression_before_data_loads(tmp_path):
    import pandas as pd
    from hydra import compose, initialize_config_module

    from textclf.commands.validate import check_tricks, preflight

    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        bad = compose(config_name="train", overrides=["adversarial=fgm", "adversarial.start=1.5"])
        pd.DataFrame({"text": ["a b", "c d", "e f", "g h"] * 5, "label": [0.5, 1.5, 2.5, 3.5] * 5}).to_csv(
            tmp_path / "r.csv", index=False)
        regression = compose(config_name="train", overrides=["data=csv", f"data.train_file={tmp_path / 'r.csv'}",
                                                             "trainer.sampler=balanced"])
    with pytest.raises(TextclfError, match=r"adversarial.start must be auto, a share .* got 1.5"):
        check_tricks(bad)
    with pytest.raises(TextclfError, match="trainer.sampler=balanced needs classes.*trainer.sampler=random"):
        preflight(regression)


# ----------------------------------------------------------------------------- batch size
@pytest.mark.parametrize("rows,epochs,accum,world,expected", [
    (400, 2, 1, 1, 8),      # the news table: 50 steps at 16, 100 at 8
    (1000, 2, 1, 1, 16),    # 126 steps at 16: kept
    (800, 2, 1, 1, 16),     # exactly 100 steps at 16
    (784, 2, 1, 1, 8),      # 49 x 2 = 98 steps at 16
    (40, 1, 1, 1, 8),       # never below 8
    (1000, 2, 2, 1, 8),     # accumulation counts: 32 optimizer steps per epoch at 16 x 2
    (1600, 2, 1, 2, 16),    # per process: 2 processes x 16 rows = 50 steps per epoch
    (1500, 2, 1, 2, 8),
])
def test_auto_batch_size_gives_a_small_fold_at_least_100_optimizer_steps(rows, epochs, accum, world, expected):
    from omegaconf import OmegaConf

    from textclf.commands.train import fold_batch_size

    tcfg = OmegaConf.create({"batch_size": "auto", "epochs": epochs, "grad_accum_steps": accum})
    assert fold_batch_size(tcfg, rows, world) == expected
    tcfg.batch_size = 16  # a number set wins, however small the fold
    assert fold_batch_size(tcfg, rows, world) == 16
