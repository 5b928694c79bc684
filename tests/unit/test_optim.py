"""Optimizers built from the model: parameter groups, layer-wise LR decay, and the learning-rate schedules."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from textclf.errors import TextclfError
from textclf.models.classifier import TextClassifier
from textclf.models.heads import ClassificationHead
from textclf.models.pooling import MeanPooling
from textclf.engine.optim import (adam, adamw, constant, constant_warmup, cosine, describe_learning_rates, linear_schedule,
                           param_groups, sgd, warmup_steps_for)

LAYERS = 4


def tiny_classifier() -> TextClassifier:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    backbone = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                                    intermediate_size=64))
    return TextClassifier(backbone, MeanPooling(32), ClassificationHead(32, 3))


def expected_group(name: str) -> str:
    """Which group a parameter of the tiny classifier belongs to, from its name alone."""
    if name.startswith("backbone.encoder.layer."):
        return f"layer_{name.split('.')[3]}"
    if name.startswith("backbone.embeddings."):
        return "embeddings"
    if name.startswith("backbone."):
        return "backbone_other"  # BERT's pooler
    return "head"


def placed(groups) -> dict[int, dict]:
    """id(param) -> its group; fails if a parameter is in two groups."""
    out = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in out, f"a parameter is in groups {out[id(p)]['name']} and {g['name']}"
            out[id(p)] = g
    return out


# ----------------------------------------------------------------------------- parameter groups
@pytest.mark.parametrize("freeze_embeddings", [False, True])
def test_layer_wise_lr_decay_follows_the_multiplier_layer_by_layer(freeze_embeddings):
    model = tiny_classifier()
    if freeze_embeddings:
        model.backbone.embeddings.requires_grad_(False)
    lr, decay, head_lr, wd = 1e-3, 0.8, 5e-3, 0.01
    groups = param_groups(model, wd, lr, head_lr=head_lr, layer_decay=decay)
    where = placed(groups)

    expected_lr = {f"layer_{i}": lr * decay ** (LAYERS - 1 - i) for i in range(LAYERS)}
    expected_lr |= {"embeddings": lr * decay ** LAYERS, "head": head_lr, "backbone_other": lr}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in where, f"frozen {name} handed to the optimizer"
            continue
        g = where[id(p)]  # every trainable parameter is in a group
        assert g["name"] == expected_group(name), name
        assert g["lr"] == pytest.approx(expected_lr[g["name"]]), name
        no_decay = name.endswith("bias") or "LayerNorm" in name
        assert g["weight_decay"] == (0.0 if no_decay else wd), name
    assert len(where) == sum(p.requires_grad for p in model.parameters())
    assert groups[0]["name"] == f"layer_{LAYERS - 1}" and groups[0]["lr"] == lr  # group 0 holds the base lr
    assert ("embeddings" in {g["name"] for g in groups}) is not freeze_embeddings
    # strictly smaller going down, and the multiplier between neighbours is exactly the decay
    actual = {g["name"]: g["lr"] for g in groups}
    top_down = [actual[f"layer_{i}"] for i in reversed(range(LAYERS))] + [actual.get("embeddings")]
    top_down = [x for x in top_down if x is not None]
    for upper, lower in zip(top_down[:-1], top_down[1:]):
        assert lower / upper == pytest.approx(decay)


def test_without_layer_decay_there_are_two_groups_at_one_lr():
    model = tiny_classifier()
    groups = param_groups(model, 0.01, 2e-4)
    assert [(g["name"], g["weight_decay"], g["lr"]) for g in groups] == [("model", 0.01, 2e-4), ("model", 0.0, 2e-4)]
    assert len(placed(groups)) == sum(p.requires_grad for p in model.parameters())


def test_head_lr_alone_splits_backbone_and_head():
    model = tiny_classifier()
    groups = param_groups(model, 0.01, 1e-4, head_lr=1e-3)
    where = placed(groups)
    for name, p in model.named_parameters():
        g = where[id(p)]
        assert (g["name"], g["lr"]) == (("backbone", 1e-4) if name.startswith("backbone.") else ("head", 1e-3)), name


def test_param_groups_without_lr_leave_the_lr_to_the_optimizer():
    groups = param_groups(tiny_classifier(), 0.01)
    assert all("lr" not in g for g in groups)
    opt = torch.optim.AdamW(groups, lr=3e-4)
    assert {g["lr"] for g in opt.param_groups} == {3e-4}


def test_tied_parameters_are_placed_once():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    model[1].weight = model[0].weight
    groups = param_groups(model, 0.1, 1e-3)
    assert len(placed(groups)) == 2  # the shared weight and the bias
    torch.optim.AdamW(groups)


# ----------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("build, cls", [(adamw, torch.optim.AdamW), (adam, torch.optim.Adam)])
def test_adam_family_builds_from_the_model(build, cls):
    model = tiny_classifier()
    opt = build(model, lr=2e-4, weight_decay=0.05, eps=1e-7, betas=[0.8, 0.99], head_lr=1e-3, layer_decay=0.5)
    assert type(opt) is cls
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["head"] == 1e-3 and lrs[f"layer_{LAYERS - 1}"] == 2e-4
    assert lrs["layer_0"] == pytest.approx(2e-4 * 0.5 ** (LAYERS - 1))
    assert lrs["embeddings"] == pytest.approx(2e-4 * 0.5 ** LAYERS)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.05, 0.0}
    assert all(g["eps"] == 1e-7 and g["betas"] == (0.8, 0.99) for g in opt.param_groups)


def test_adam_defaults_to_no_l2_penalty():
    opt = adam(tiny_classifier())
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0}
    assert {g["weight_decay"] for g in adamw(tiny_classifier()).param_groups} == {0.01, 0.0}


def test_sgd_builds_from_the_model():
    opt = sgd(tiny_classifier(), lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-4)
    assert type(opt) is torch.optim.SGD
    assert all(g["momentum"] == 0.8 and g["nesterov"] and g["lr"] == 0.05 for g in opt.param_groups)
    assert {g["weight_decay"] for g in opt.param_groups} == {1e-4, 0.0}


@pytest.mark.parametrize("option", ["adamw", "adam", "sgd", "adamw_llrd"])
def test_every_optimizer_option_builds_from_its_yaml(option):
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"optimizer={option}"])
    model = tiny_classifier()
    opt = instantiate(cfg.optimizer)(model)
    assert len(placed(opt.param_groups)) == sum(p.requires_grad for p in model.parameters())
    names = {g["name"] for g in opt.param_groups}
    if option == "adamw_llrd":
        assert {"head", "embeddings", *(f"layer_{i}" for i in range(LAYERS))} <= names
    else:
        assert names == {"model"}
    # one real step
    x = torch.randint(0, 100, (2, 6))
    model(x, torch.ones_like(x)).sum().backward()
    opt.step()


@pytest.mark.parametrize("kwargs, key", [
    ({"layer_decay": 0.0}, "layer_decay"), ({"layer_decay": 1.5}, "layer_decay"), ({"lr": 0.0}, "optimizer.lr"),
    ({"head_lr": -1.0}, "head_lr"), ({"weight_decay": -0.1}, "weight_decay"), ({"betas": [0.9]}, "betas"),
])
def test_bad_optimizer_values_are_named(kwargs, key):
    with pytest.raises(TextclfError, match=key):
        adamw(tiny_classifier(), **kwargs)


def test_nesterov_without_momentum_is_named():
    with pytest.raises(TextclfError, match="nesterov"):
        sgd(tiny_classifier(), lr=0.1, momentum=0.0, nesterov=True)


def test_layer_decay_on_a_backbone_without_layers_says_so():
    model = TextClassifier(nn.Linear(4, 4), MeanPooling(4), ClassificationHead(4, 2))
    with pytest.raises(TextclfError, match="cannot find the layers of model type 'Linear'"):
        adamw(model, layer_decay=0.9)
    adamw(model, head_lr=1e-3)  # a head lr needs no layers


# ----------------------------------------------------------------------------- schedules
def lrs_per_step(make, total: int, **kwargs) -> list[tuple[float, float]]:
    """(lr of group 0, lr of group 1) before each of total+1 optimizer steps; group 1 starts at a tenth."""
    opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 1.0},
                           {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1}], lr=1.0)
    sched = make(opt, total_steps=total, **kwargs)
    out = []
    for _ in range(total + 1):
        out.append(tuple(g["lr"] for g in opt.param_groups))
        opt.step()
        sched.step()
    return out


TOTAL = 20
# warmup_ratio=0.2 of 20 steps -> 4 warmup steps; warmup_steps=5 wins over the ratio
WARMUPS = [({"warmup_ratio": 0.2}, 4), ({"warmup_ratio": 0.2, "warmup_steps": 5}, 5), ({"warmup_ratio": 0.0}, 0)]


def warm_factor(step, warm):
    return (step + 1) / (warm + 1)


@pytest.mark.parametrize("warmup, warm", WARMUPS, ids=["ratio", "steps", "none"])
@pytest.mark.parametrize("name", ["constant_warmup", "linear", "cosine"])
def test_schedule_lr_at_chosen_steps(name, warmup, warm):
    make = {"constant_warmup": constant_warmup, "linear": linear_schedule, "cosine": cosine}[name]

    def after_warmup(step):
        progress = (step - warm) / (TOTAL - warm)
        return {"constant_warmup": 1.0, "linear": 1.0 - progress,
                "cosine": 0.5 * (1 + math.cos(math.pi * progress))}[name]

    lrs = lrs_per_step(make, TOTAL, **warmup)
    steps = {0, warm // 2, max(warm - 1, 0), warm, (warm + TOTAL) // 2, TOTAL - 1, TOTAL}
    for step in sorted(steps):
        factor = warm_factor(step, warm) if step < warm else after_warmup(step)
        assert lrs[step][0] == pytest.approx(factor), step
        assert lrs[step][1] == pytest.approx(0.1 * factor), f"group 1 keeps its ratio at step {step}"
    assert max(lr for lr, _ in lrs) == pytest.approx(1.0) and lrs[warm][0] == pytest.approx(1.0)
    if name != "constant_warmup":
        assert lrs[TOTAL][0] == pytest.approx(0.0, abs=1e-12) and lrs[TOTAL - 1][0] > 0.0
        assert all(a >= b for (a, _), (b, _) in zip(lrs[warm:], lrs[warm + 1:]))  # only falls after the warmup


def test_schedule_values_by_hand():
    # 20 steps, 4 of warmup: step 12 is halfway through the decay
    lin = lrs_per_step(linear_schedule, 20, warmup_ratio=0.2)
    cos = lrs_per_step(cosine, 20, warmup_ratio=0.2)
    assert lin[0][0] == pytest.approx(0.2) and cos[0][0] == pytest.approx(0.2)
    assert lin[12][0] == pytest.approx(0.5) and cos[12][0] == pytest.approx(0.5)
    assert lin[8][0] == pytest.approx(0.75) and cos[8][0] == pytest.approx(0.5 * (1 + math.sqrt(0.5)))


def test_constant_keeps_every_group_lr():
    assert set(lrs_per_step(constant, 10)) == {(1.0, 0.1)}


def test_cosine_floor_and_cycles():
    lrs = lrs_per_step(cosine, 20, warmup_steps=0, min_lr_ratio=0.1)
    assert lrs[0][0] == pytest.approx(1.0) and lrs[20][0] == pytest.approx(0.1) and min(lrs)[0] >= 0.1 - 1e-12
    assert lrs[10][0] == pytest.approx(0.1 + 0.9 * 0.5)
    full = lrs_per_step(cosine, 20, warmup_steps=0, num_cycles=1.0)  # down and back up
    assert full[10][0] == pytest.approx(0.0, abs=1e-12) and full[20][0] == pytest.approx(1.0)


def test_warmup_steps_from_ratio():
    assert warmup_steps_for(100, 0.07) == 7  # 100 * 0.07 is 7.000000000000001 in floating point
    assert warmup_steps_for(10, 0.25) == 3
    assert warmup_steps_for(10, 0.25, warmup_steps=0) == 0
    with pytest.raises(TextclfError, match="warmup_ratio"):
        warmup_steps_for(10, 1.5)
    with pytest.raises(TextclfError, match="warmup_steps"):
        warmup_steps_for(10, 0.1, warmup_steps=-1)


def test_describe_learning_rates_names_each_group_once_at_its_base_rate_before_warmup_scales_them():
    optimizer = adamw(tiny_classifier(), lr=1e-4, head_lr=1e-3, layer_decay=0.5)
    linear_schedule(optimizer, total_steps=10, warmup_steps=5)  # scales every group's lr down for the first step
    assert all(g["lr"] < g["initial_lr"] for g in optimizer.param_groups)
    assert describe_learning_rates(optimizer) == ("layer_3 0.0001, layer_2 5e-05, layer_1 2.5e-05, layer_0 1.25e-05, "
                                                  "embeddings 6.25e-06, backbone_other 0.0001, head 0.001")


def test_describe_learning_rates_is_none_when_every_group_shares_the_rate():
    assert describe_learning_rates(adamw(tiny_classifier(), lr=1e-4)) is None
    assert describe_learning_rates(adamw(tiny_classifier(), lr=1e-4, head_lr=1e-4)) is None
    assert describe_learning_rates(adamw(tiny_classifier(), lr=1e-4, head_lr=2e-4)) == "backbone 0.0001, head 0.0002"
