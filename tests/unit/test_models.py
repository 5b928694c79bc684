"""Poolings ignore padding on either side; parameter groups; the LR schedule; the loss on raw logits."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from textclf.models.losses import CrossEntropyLoss
from textclf.models.pooling import ClsPooling, MeanPooling
from textclf.engine.optim import linear_schedule, param_groups

LENGTHS = [5, 2, 7, 1]
WIDTH = 7
HIDDEN = 6


def batch(pad_left: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(len(LENGTHS), WIDTH, HIDDEN, generator=g)
    mask = torch.zeros(len(LENGTHS), WIDTH, dtype=torch.long)
    for i, n in enumerate(LENGTHS):
        if pad_left:
            mask[i, WIDTH - n:] = 1
        else:
            mask[i, :n] = 1
    return hidden, mask


def real_tokens(hidden, mask, i):
    return hidden[i][mask[i].bool()]


def scramble_padding(hidden, mask):
    noise = torch.randn_like(hidden) * 1e3
    return torch.where(mask.unsqueeze(-1).bool(), hidden, noise)


@pytest.mark.parametrize("pad_left", [False, True])
@pytest.mark.parametrize("pooling", [MeanPooling(HIDDEN), ClsPooling(HIDDEN), ClsPooling(HIDDEN, summary_last=True)],
                         ids=["mean", "cls_first", "cls_last"])
def test_pooling_ignores_padding(pooling, pad_left):
    hidden, mask = batch(pad_left)
    pooled = pooling(hidden, mask)
    assert pooled.shape == (len(LENGTHS), pooling.output_dim)
    torch.testing.assert_close(pooling(scramble_padding(hidden, mask), mask), pooled)


@pytest.mark.parametrize("pad_left", [False, True])
def test_mean_pooling_is_the_mean_of_real_tokens(pad_left):
    hidden, mask = batch(pad_left)
    pooled = MeanPooling(HIDDEN)(hidden, mask)
    for i in range(len(LENGTHS)):
        torch.testing.assert_close(pooled[i], real_tokens(hidden, mask, i).mean(dim=0))


@pytest.mark.parametrize("pad_left", [False, True])
@pytest.mark.parametrize("summary_last", [False, True])
def test_cls_pooling_picks_the_first_or_last_real_token(pad_left, summary_last):
    hidden, mask = batch(pad_left)
    pooled = ClsPooling(HIDDEN, summary_last=summary_last)(hidden, mask)
    for i in range(len(LENGTHS)):
        real = real_tokens(hidden, mask, i)
        torch.testing.assert_close(pooled[i], real[-1] if summary_last else real[0])


def test_mean_pooling_keeps_its_dtype_under_bf16():
    hidden, mask = batch(False)
    pooled = MeanPooling(HIDDEN)(hidden.bfloat16(), mask)
    assert pooled.dtype == torch.bfloat16
    torch.testing.assert_close(pooled.float(), MeanPooling(HIDDEN)(hidden, mask), atol=0.05, rtol=0.05)


# ----------------------------------------------------------------------------- parameter groups
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.linear = nn.Linear(4, 4)
        self.LayerNorm = nn.LayerNorm(4)
        self.rms = nn.RMSNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2, bias=False)
        for p in self.frozen.parameters():
            p.requires_grad_(False)


def test_param_groups_no_decay_on_bias_and_norms_and_no_frozen_params():
    model = Block()
    groups = param_groups(model, 0.01)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    decay = next(g for g in groups if g["weight_decay"] == 0.01)
    no_decay = next(g for g in groups if g["weight_decay"] == 0.0)
    assert ids(decay["params"]) == ids([model.embed.weight, model.linear.weight, model.out.weight])
    assert ids(no_decay["params"]) == ids([model.linear.bias, model.LayerNorm.weight, model.LayerNorm.bias,
                                           model.rms.weight])
    every = [p for g in groups for p in g["params"]]
    assert len(every) == len(ids(every)), "a parameter is in two groups"
    assert not ids(every) & ids(model.frozen.parameters())
    torch.optim.AdamW(groups, lr=1e-3)  # the groups are valid optimizer input


def test_param_groups_on_a_bert_backbone(tiny_bert):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_bert))
    model.embeddings.word_embeddings.weight.requires_grad_(False)
    groups = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert "embeddings.LayerNorm.weight" in no_decay and "encoder.layer.0.output.LayerNorm.weight" in no_decay
    assert all(n.endswith("bias") or "LayerNorm" in n for n in no_decay)
    assert not any(n.endswith("bias") or "LayerNorm" in n for n in decay)
    assert "encoder.layer.1.attention.self.query.weight" in decay
    assert "embeddings.word_embeddings.weight" not in decay | no_decay
    assert len(decay | no_decay) == sum(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------- schedule
def expected_factor(step: int, total: int, warm: int) -> float:
    """The formula of textclf.engine.optim.linear_schedule."""
    if step < warm:
        return (step + 1) / (warm + 1)
    return max(0.0, (total - step) / max(1, total - warm))


@pytest.mark.parametrize("total, ratio, steps, warm", [(20, 0.1, None, 2), (20, 0.0, None, 0), (10, 0.25, None, 3),
                                                       (30, 0.5, 4, 4)])
def test_linear_schedule_lr_per_step(total, ratio, steps, warm):
    base = 2e-3
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = linear_schedule(opt, total_steps=total, warmup_ratio=ratio, warmup_steps=steps)
    lrs = []
    for _ in range(total + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for step, lr in enumerate(lrs):
        assert lr == pytest.approx(base * expected_factor(step, total, warm)), step
    assert max(lrs) == pytest.approx(base) and lrs.index(max(lrs)) == warm  # peak right after the warmup
    assert lrs[total] == 0.0 and min(lrs) >= 0.0
    assert all(a <= b for a, b in zip(lrs[:warm], lrs[1:warm + 1]))  # rises during the warmup
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:]))  # then only falls
    assert lrs[total - 1] > 0.0, "the last optimizer step must not be wasted at lr 0"


# ----------------------------------------------------------------------------- loss
def test_cross_entropy_on_raw_logits_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=g) * 4
    target = torch.randint(0, 5, (16,), generator=g)
    torch.testing.assert_close(CrossEntropyLoss()(logits, target), F.cross_entropy(logits, target))
    weight = [1.0, 2.0, 0.5, 1.0, 3.0]
    torch.testing.assert_close(CrossEntropyLoss(weight)(logits, target),
                               F.cross_entropy(logits, target, weight=torch.tensor(weight)))


def test_cross_entropy_is_stable_for_large_logits_and_low_precision():
    logits = torch.tensor([[1000.0, -1000.0, 0.0], [-500.0, 500.0, 499.0]])
    target = torch.tensor([1, 2])
    loss = CrossEntropyLoss()(logits, target)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx((2000.0 + 1.0 + math.log1p(math.exp(-1.0))) / 2, rel=1e-5)
    half = CrossEntropyLoss()(logits.bfloat16(), target)
    assert half.dtype == torch.float32 and math.isfinite(half.item())
    logits.requires_grad_(True)
    CrossEntropyLoss()(logits, target).backward()
    assert torch.isfinite(logits.grad).all()
