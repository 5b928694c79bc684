"""Training hooks on a tiny BERT and a real Trainer.

FGM, PGD and AWP leave the weights bit-identical and add the gradients of the adversarial loss computed by
hand; EMA follows its formula, is what evaluation and the saved checkpoint see, and never changes training;
the `none` options compose to an empty node that builds nothing.
"""
from __future__ import annotations

import copy
from importlib import resources

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from textclf.engine.hooks import Hook, build_hooks
from textclf.engine.hooks.awp import AWP
from textclf.engine.hooks.ema import EMA
from textclf.engine.hooks.fgm import FGM
from textclf.engine.hooks.pgd import PGD
from textclf.engine.trainer import FitResult, FitSettings, Scores, Trainer, predict_logits
from textclf.errors import TextclfError

EMB = "backbone.embeddings.word_embeddings.weight"


# ----------------------------------------------------------------------------- helpers
def tiny_model(seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertModel

    from textclf.models.classifier import TextClassifier
    from textclf.models.heads import ClassificationHead
    from textclf.models.pooling import MeanPooling

    torch.manual_seed(seed)
    backbone = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    return TextClassifier(backbone, MeanPooling(32), ClassificationHead(32, 3, dropout=0.0)).train()


def make_trainer(model, hooks=(), *, epochs: int = 1, **settings) -> Trainer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    settings = FitSettings(torch.device("cpu"), epochs, "macro_f1", log_every_steps=10, **settings)
    return Trainer(model, nn.CrossEntropyLoss(), optimizer, scheduler, settings, None, hooks=hooks)


class Scripted:
    """An evaluator whose metrics are score(rows, logits), on the model's real validation predictions."""

    def __init__(self, loader, score, settings: FitSettings):
        self.loader, self.score, self.settings = loader, score, settings

    def evaluate(self, model) -> Scores:
        rows, logits = predict_logits(model, self.loader, self.settings.device, self.settings.precision)
        return Scores(self.score(rows, logits), rows, logits, len(rows))


def fit(trainer: Trainer, train, valid, score, saved: list | None = None) -> FitResult:
    """Run a fit to its end, scoring each evaluation with score(rows, logits); a copy of each new best's weights
    goes to `saved`, taken as train.py takes them."""
    trainer.evaluator = Scripted(valid, score, trainer.settings)
    for evaluation in trainer.fit(train):
        if evaluation.is_best and saved is not None:
            saved.append({k: v.clone() for k, v in evaluation.model.state_dict().items()})
    return trainer.result


def make_batch(seed: int = 0, n: int = 4, width: int = 7) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 100, (n, width), generator=g),
            "attention_mask": torch.ones(n, width, dtype=torch.long),
            "labels": torch.randint(0, 3, (n,), generator=g)}


def grads_of(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def weights_of(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def plain_backward(trainer, batch) -> None:
    trainer.backward(trainer.compute_loss(batch))


def loss_of(model, batch) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])


def grads_by_hand(model, batch, perturb=None) -> dict:
    """Gradients of the loss (from zero) on a copy of model whose weights perturb(named parameters) changed."""
    ref = copy.deepcopy(model)
    ref.zero_grad(set_to_none=True)
    if perturb is not None:
        with torch.no_grad():
            perturb(dict(ref.named_parameters()))
    loss_of(ref, batch).backward()
    return grads_of(ref)


def count_forwards(trainer, monkeypatch) -> list:
    calls = []
    real = trainer.compute_loss
    monkeypatch.setattr(trainer, "compute_loss", lambda batch, **kw: calls.append(1) or real(batch, **kw))
    return calls


def assert_same_weights(model, expected: dict) -> None:
    for n, p in model.named_parameters():
        assert torch.equal(p, expected[n]), f"{n} was not restored bit-exactly"


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * 1e-2)


# ----------------------------------------------------------------------------- FGM and PGD
def test_fgm_adds_the_gradients_at_the_perturbed_embeddings_and_restores_them_exactly():
    model = tiny_model()
    fgm = FGM(epsilon=0.5)
    trainer = make_trainer(model, [fgm])
    fgm.on_fit_start(trainer)
    batch = make_batch()
    plain_backward(trainer, batch)
    plain, before = grads_of(model), weights_of(model)
    g = plain[EMB]
    adversarial = grads_by_hand(model, batch, lambda p: p[EMB].add_(0.5 * g / g.norm()))

    fgm.after_backward(trainer, batch)
    assert_same_weights(model, before)
    after = grads_of(model)
    assert after.keys() == plain.keys()
    for n in plain:
        close(after[n], plain[n] + adversarial[n])
    assert not torch.allclose(after[EMB], plain[EMB])

    # the optimizer then steps on the summed gradients
    trainer.optimizer_step()
    emb = dict(model.named_parameters())[EMB]
    close(emb.detach(), before[EMB] - 0.1 * (plain[EMB] + adversarial[EMB]))


def pgd_by_hand(model, batch, epsilon: float, alpha: float, steps: int) -> dict:
    """The Kaggle loop: back up every gradient, move and project, zero the gradients between steps and put the
    backed-up ones back before the last adversarial backward."""
    ref = copy.deepcopy(model)
    live = dict(model.named_parameters())
    for n, p in ref.named_parameters():  # deepcopy leaves the gradients behind
        p.grad = None if live[n].grad is None else live[n].grad.clone()
    emb = dict(ref.named_parameters())[EMB]
    backup, original, g = grads_of(ref), emb.detach().clone(), emb.grad.clone()
    for k in range(steps):
        with torch.no_grad():
            emb.add_(alpha * g / g.norm())
            r = emb - original
            if r.norm() > epsilon:
                r = epsilon * r / r.norm()
            emb.copy_(original + r)
        if k < steps - 1:
            ref.zero_grad(set_to_none=True)
        else:
            for n, p in ref.named_parameters():
                p.grad = backup[n].clone() if n in backup else None
        loss_of(ref, batch).backward()
        g = emb.grad.clone()
    return grads_of(ref)


def test_pgd_adds_the_last_adversarial_gradients_and_restores_the_embeddings_exactly(monkeypatch):
    model = tiny_model()
    pgd = PGD(epsilon=0.5, alpha=0.3, steps=3)  # 3 x 0.3 > 0.5: the projection takes part
    trainer = make_trainer(model, [pgd])
    pgd.on_fit_start(trainer)
    batch = make_batch()
    plain_backward(trainer, batch)
    plain, before = grads_of(model), weights_of(model)
    expected = pgd_by_hand(model, batch, 0.5, 0.3, 3)

    forwards = count_forwards(trainer, monkeypatch)
    pgd.after_backward(trainer, batch)
    assert len(forwards) == 3
    assert_same_weights(model, before)
    after = grads_of(model)
    for n in plain:
        close(after[n], expected[n])
    assert not torch.allclose(after[EMB], plain[EMB])


def test_fgm_under_accumulation_attacks_along_each_micro_batch_own_gradient():
    model = tiny_model()
    fgm = FGM(epsilon=0.5)
    trainer = make_trainer(model, [fgm], grad_accum_steps=2)
    fgm.on_fit_start(trainer)
    batches = [make_batch(1), make_batch(2)]
    expected = {}
    for batch in batches:  # the weights do not move inside an accumulation group
        g = grads_by_hand(model, batch)
        adv = grads_by_hand(model, batch, lambda p: p[EMB].add_(0.5 * g[EMB] / g[EMB].norm()))
        for n in g:
            expected[n] = expected.get(n, 0) + (g[n] + adv[n]) / 2  # backward divides by the group size
    before = weights_of(model)

    for batch in batches:
        plain_backward(trainer, batch)
        fgm.after_backward(trainer, batch)
    assert_same_weights(model, before)
    after = grads_of(model)
    for n in expected:
        close(after[n], expected[n], tol=1e-4)
    trainer.optimizer_step()
    assert fgm._prev is None  # nothing carried into the next group


def attack_word_embeddings(kind: str):
    return {"fgm": lambda: FGM(epsilon=0.5), "pgd": lambda: PGD(epsilon=0.5, alpha=0.3, steps=2),
            "awp": lambda: AWP(lr=1.0, epsilon=0.01, start_epoch=0, param_name="word_embeddings")}[kind]()


@pytest.mark.parametrize("kind", ["fgm", "pgd", "awp"])
@pytest.mark.parametrize("fill", [0.0, float("nan"), float("inf")])
def test_no_attack_when_the_gradient_is_zero_or_not_finite(kind, fill, monkeypatch):
    model = tiny_model()
    hook = attack_word_embeddings(kind)
    trainer = make_trainer(model, [hook])
    hook.on_fit_start(trainer)
    batch = make_batch()
    plain_backward(trainer, batch)
    dict(model.named_parameters())[EMB].grad.fill_(fill)
    plain, before = grads_of(model), weights_of(model)

    forwards = count_forwards(trainer, monkeypatch)
    hook.after_backward(trainer, batch)
    assert forwards == []
    assert_same_weights(model, before)
    for n, g in grads_of(model).items():
        torch.testing.assert_close(g, plain[n], rtol=0, atol=0, equal_nan=True)


def test_param_name_that_matches_nothing_names_the_embeddings():
    model = tiny_model()
    fgm = FGM(param_name="word_embedding_table")
    with pytest.raises(TextclfError, match=r"word_embedding_table.*backbone\.embeddings\.word_embeddings\.weight"):
        fgm.on_fit_start(make_trainer(model, [fgm]))


def test_frozen_embeddings_are_a_clear_error():
    model = tiny_model()
    model.backbone.embeddings.word_embeddings.weight.requires_grad_(False)
    fgm = FGM()
    with pytest.raises(TextclfError, match="frozen"):
        fgm.on_fit_start(make_trainer(model, [fgm]))


@pytest.mark.parametrize("make", [lambda: FGM(epsilon=0), lambda: PGD(steps=0), lambda: PGD(alpha=-1),
                                  lambda: AWP(start_epoch=-1), lambda: EMA(decay=1.0), lambda: EMA(start_step=-2)])
def test_bad_hook_arguments_are_clear_errors(make):
    with pytest.raises(TextclfError, match=r"(adversarial|ema)\.\w+ must"):
        make()


# ----------------------------------------------------------------------------- AWP
def test_awp_adds_the_gradients_at_the_perturbed_weights_and_restores_them_exactly():
    model = tiny_model()
    awp = AWP(lr=1.0, epsilon=0.01, start_epoch=1)
    trainer = make_trainer(model, [awp])
    trainer.epoch = 1
    awp.on_fit_start(trainer)
    batch = make_batch()
    plain_backward(trainer, batch)
    plain, before = grads_of(model), weights_of(model)
    attacked = [n for n in plain if "weight" in n]
    assert EMB in attacked and "head.out.weight" in attacked

    def perturb(p):
        for n in attacked:
            w, g = before[n], plain[n]
            r = 1.0 * g / (g.norm() + 1e-6) * (w.norm() + 1e-6)
            p[n].copy_(torch.minimum(torch.maximum(w + r, w - 0.01 * w.abs()), w + 0.01 * w.abs()))

    adversarial = grads_by_hand(model, batch, perturb)
    awp.after_backward(trainer, batch)
    assert_same_weights(model, before)
    after = grads_of(model)
    for n in plain:
        close(after[n], plain[n] + adversarial[n], tol=1e-4)
    assert not torch.allclose(after[EMB], plain[EMB])


def test_awp_does_nothing_before_its_start_epoch(monkeypatch):
    model = tiny_model()
    awp = AWP(start_epoch=1)
    trainer = make_trainer(model, [awp])
    trainer.epoch = 0
    awp.on_fit_start(trainer)
    batch = make_batch()
    plain_backward(trainer, batch)
    plain, before = grads_of(model), weights_of(model)
    forwards = count_forwards(trainer, monkeypatch)
    awp.after_backward(trainer, batch)
    assert forwards == []
    assert_same_weights(model, before)
    for n, g in grads_of(model).items():
        assert torch.equal(g, plain[n])


# ----------------------------------------------------------------------------- EMA
@pytest.mark.parametrize("warmup", [False, True])
def test_ema_shadow_follows_the_formula(warmup):
    model = tiny_model()
    ema = EMA(decay=0.9, start_step=2, warmup=warmup)
    trainer = make_trainer(model, [ema])
    ema.on_fit_start(trainer)
    expected = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    updates = 0
    for step in range(1, 7):
        plain_backward(trainer, make_batch(step))
        trainer.optimizer_step()  # calls ema.after_step with global_step == step
        live = {n: p.detach().double() for n, p in model.named_parameters()}
        if step < 2:
            expected = {n: v.clone() for n, v in live.items()}
            continue
        decay = min(0.9, (1 + updates) / (10 + updates)) if warmup else 0.9
        expected = {n: decay * expected[n] + (1 - decay) * live[n] for n in live}
        updates += 1
    shadow = ema.shadow_state()
    assert shadow.keys() == expected.keys()
    for n in shadow:
        torch.testing.assert_close(shadow[n].double(), expected[n], rtol=1e-5, atol=1e-7)
    assert not torch.equal(shadow[EMB], dict(model.named_parameters())[EMB])


def test_ema_evaluation_sees_the_shadow_then_the_live_weights_come_back_exactly():
    model = tiny_model()
    ema = EMA(decay=0.5)
    trainer = make_trainer(model, [ema])
    ema.on_fit_start(trainer)
    for step in range(3):
        plain_backward(trainer, make_batch(step))
        trainer.optimizer_step()
    live = weights_of(model)
    shadow = {n: t.clone() for n, t in ema.shadow_state().items()}
    assert not torch.equal(shadow[EMB], live[EMB])

    ema.before_evaluate(trainer)
    assert_same_weights(model, shadow)
    ema.after_evaluate(trainer)
    assert_same_weights(model, live)
    with ema.swapped(model):
        assert_same_weights(model, shadow)
    assert_same_weights(model, live)


def test_ema_starts_fresh_on_each_fit():
    ema = EMA(decay=0.5)
    first = tiny_model(0)
    trainer = make_trainer(first, [ema])
    ema.on_fit_start(trainer)
    plain_backward(trainer, make_batch())
    trainer.optimizer_step()
    second = tiny_model(1)
    ema.on_fit_start(make_trainer(second, [ema]))
    assert ema.updates == 0
    for n, p in second.named_parameters():
        assert torch.equal(ema.shadow_state()[n], p)


def tiny_loaders(n_train: int = 16, n_valid: int = 8, batch_size: int = 4):
    from textclf.data.tables import Collator, Encoded, EpochBatches, sorted_batches

    rng = np.random.default_rng(0)
    n = n_train + n_valid
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


class WeightsAtEvaluation(Hook):
    def __init__(self):
        self.seen = []

    def before_evaluate(self, trainer):
        self.seen.append(weights_of(trainer.model))


def test_fit_saves_the_shadow_and_trains_on_the_live_weights():
    train, valid = tiny_loaders()
    ema, live_at_eval, held_at_eval = EMA(decay=0.5), WeightsAtEvaluation(), WeightsAtEvaluation()
    model = tiny_model()
    trainer = make_trainer(model, [live_at_eval, ema, held_at_eval], epochs=2)
    scores, saved = iter([0.1, 0.2]), []
    fit(trainer, train, valid, lambda rows, logits: {"macro_f1": next(scores)}, saved)

    assert len(saved) == 2
    shadow = ema.shadow_state()
    for n in shadow:
        assert torch.equal(saved[-1][n], shadow[n])  # the checkpoint holds the shadow
        assert torch.equal(held_at_eval.seen[-1][n], shadow[n])  # so did the evaluation
    assert_same_weights(model, live_at_eval.seen[-1])  # the fit ends on the live weights
    assert not torch.equal(saved[-1][EMB], live_at_eval.seen[-1][EMB])

    # and EMA never changes training: the same fit without it ends on the same live weights, bit for bit
    plain = tiny_model()
    fit(make_trainer(plain, [], epochs=2), train, valid, lambda rows, logits: {"macro_f1": 0.0})
    assert_same_weights(plain, weights_of(model))


@pytest.mark.parametrize("kind", ["fgm", "pgd", "awp"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_attack_trains_with_ema_accumulation_and_precision(kind, precision):
    train, valid = tiny_loaders()
    model = tiny_model()
    attack = {"fgm": FGM(), "pgd": PGD(steps=2), "awp": AWP(start_epoch=0)}[kind]
    trainer = make_trainer(model, [attack, EMA(decay=0.9)], grad_accum_steps=2, precision=precision)
    before = weights_of(model)
    result = fit(trainer, train, valid, lambda rows, logits: {"macro_f1": float(np.isfinite(logits).all())})
    assert result.best_metrics["macro_f1"] == 1.0
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(dict(model.named_parameters())[EMB], before[EMB])


# ----------------------------------------------------------------------------- config options
CONF = resources.files("textclf.conf")


def compose_with(group: str, option: str) -> DictConfig:
    from hydra import compose, initialize_config_module

    defaults = OmegaConf.load(str(CONF.joinpath("train.yaml"))).defaults
    listed = any(isinstance(d, DictConfig) and group in d for d in defaults)
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        return compose(config_name="train", overrides=[f"{'' if listed else '+'}{group}={option}"])


@pytest.mark.parametrize("group", ["adversarial", "ema"])
def test_none_composes_to_an_empty_node_that_builds_nothing(group):
    cfg = compose_with(group, "none")
    assert OmegaConf.to_container(cfg[group]) == {}
    assert build_hooks(cfg[group]) == []


OPTIONS = [("adversarial", "fgm", FGM), ("adversarial", "pgd", PGD), ("adversarial", "awp", AWP),
           ("ema", "default", EMA)]


def test_every_hook_option_is_tested():
    shipped = {(g, f.name[:-5]) for g in ("adversarial", "ema") for f in CONF.joinpath(g).iterdir()
               if f.name.endswith(".yaml")}
    assert shipped == {(g, o) for g, o, _ in OPTIONS} | {("adversarial", "none"), ("ema", "none")}


@pytest.mark.parametrize("group, option, cls", OPTIONS, ids=[f"{g}={o}" for g, o, _ in OPTIONS])
def test_every_hook_option_builds_its_hook(group, option, cls):
    (hook,) = build_hooks(compose_with(group, option)[group])
    assert type(hook) is cls


# ----------------------------------------------------------------------------- fp16 loss scaling
@pytest.mark.parametrize("kind", ["none", "fgm", "pgd", "awp"])
def test_fp16_overflow_step_is_skipped_with_every_attack(kind):
    """The gradient scaler's path (fp16 on CUDA), run on the CPU with a CPU scaler: a loss scale so large that the
    fp16 backward overflows skips the optimizer step (weights and EMA shadow unchanged, scale backed off), the
    attacks do not perturb along non-finite gradients, and the next step at a sane scale trains."""
    model = tiny_model()
    attack = {"none": [], "fgm": [FGM()], "pgd": [PGD(steps=2)], "awp": [AWP(start_epoch=0)]}[kind]
    ema = EMA(decay=0.5)
    trainer = make_trainer(model, attack + [ema], precision="fp16")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)  # what a CUDA fp16 run builds, on the CPU
    for h in trainer.hooks:
        h.on_fit_start(trainer)
    before = weights_of(model)

    batch = make_batch(1)
    trainer.backward(trainer.compute_loss(batch))
    assert not all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for h in trainer.hooks:
        h.after_backward(trainer, batch)
    assert_same_weights(model, before)  # no attack moved along inf/nan and forgot to restore
    trainer.optimizer_step()
    assert_same_weights(model, before)  # the overflow step was skipped
    assert trainer.scaler.get_scale() == 2.0 ** 99 and trainer.skipped_step
    assert trainer.scheduler.last_epoch == 0  # the learning-rate schedule did not advance past a skipped step
    assert all(torch.equal(ema.shadow_state()[n], before[n]) for n in ema.shadow_state())

    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    trainer.backward(trainer.compute_loss(batch))
    for h in trainer.hooks:
        h.after_backward(trainer, batch)
    trainer.optimizer_step()
    assert not trainer.skipped_step and trainer.scheduler.last_epoch == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(dict(model.named_parameters())[EMB], before[EMB])
