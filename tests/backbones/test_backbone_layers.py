"""Layer discovery on every backbone family, and what rests on it: layer-wise LR decay (optimizer=adamw_llrd),
model.freeze_embeddings / model.freeze_layers and model.reinit_layers. Expectations are written from the
parameter names of each family, independently of how textclf finds the layers."""
from __future__ import annotations

from importlib import resources

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tiny_models import ARCHS, EMBEDDING_PREFIXES, LAYER_PREFIX, LAYERS

from textclf.models.classifier import build_classifier
from textclf.models.layers import find_layers

CONF = resources.files("textclf.conf")


def conf(group: str, name: str, **overrides):
    return OmegaConf.merge(OmegaConf.load(str(CONF.joinpath(group, f"{name}.yaml"))), overrides)


def build(folder, **model_overrides):
    torch.manual_seed(0)
    return build_classifier(conf("model", "minilm", **model_overrides), conf("pooling", "mean"),
                            conf("head", "default"), 3, name_or_path=str(folder))


def section(arch: str, name: str) -> str:
    """'embeddings', 'layer_<i>' or 'other' for a backbone parameter name, from the family's naming."""
    if name.startswith(EMBEDDING_PREFIXES[arch]):
        return "embeddings"
    for i in range(LAYERS):
        if name.startswith(LAYER_PREFIX[arch].format(i)):
            return f"layer_{i}"
    return "other"


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


def test_find_layers_finds_the_embeddings_and_both_layers(arch, tiny_backbones):
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(str(tiny_backbones(arch)))
    embeddings, layers = find_layers(backbone)
    assert len(layers) == LAYERS
    ids = {id(p): n for n, p in backbone.named_parameters()}
    assert {ids[id(p)] for p in embeddings.parameters()} == \
        {n for n in ids.values() if section(arch, n) == "embeddings"}
    for i, layer in enumerate(layers):
        assert {ids[id(p)] for p in layer.parameters()} == {n for n in ids.values() if section(arch, n) == f"layer_{i}"}


def test_layer_wise_lr_decay_puts_every_parameter_in_one_group_at_its_layers_lr(arch, tiny_backbones):
    model = build(tiny_backbones(arch))
    node = conf("optimizer", "adamw_llrd")
    lr, head_lr, decay = float(node.lr), float(node.head_lr), float(node.layer_decay)
    assert decay < 1 and head_lr != lr, "the preset must actually decay, or this test checks nothing"
    optimizer = instantiate(node)(model)

    group_of: dict[int, dict] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in group_of, f"a parameter sits in groups {group_of[id(p)]['name']} and {group['name']}"
            group_of[id(p)] = group
    expected_lr = {"other": lr, "embeddings": lr * decay ** LAYERS}
    expected_lr |= {f"layer_{i}": lr * decay ** (LAYERS - 1 - i) for i in range(LAYERS)}
    seen = set()
    for name, p in model.named_parameters():
        assert id(p) in group_of, f"{arch}: {name} is in no optimizer group"
        if name.startswith("backbone."):
            part = section(arch, name[len("backbone."):])
            want = expected_lr[part]
        else:
            part, want = "head", head_lr
        seen.add(part)
        assert group_of[id(p)]["lr"] == pytest.approx(want), f"{arch}: {name} ({part}) at lr {group_of[id(p)]['lr']}"
    assert {"embeddings", "head", *(f"layer_{i}" for i in range(LAYERS))} <= seen
    assert len(group_of) == sum(1 for p in model.parameters() if p.requires_grad)


def test_freeze_embeddings_and_the_lowest_layer(arch, tiny_backbones):
    model = build(tiny_backbones(arch), freeze_embeddings=True, freeze_layers=1)
    for name, p in model.backbone.named_parameters():
        frozen = section(arch, name) in ("embeddings", "layer_0")
        assert p.requires_grad != frozen, f"{arch}: {name} requires_grad={p.requires_grad}"
    assert all(p.requires_grad for p in model.head.parameters())

    # a real step leaves the frozen weights bit-identical and moves the top layer
    optimizer = instantiate(conf("optimizer", "adamw_llrd"))(model)
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    model.train()
    ids = torch.randint(5, model.backbone.config.vocab_size, (4, 6))
    loss = torch.nn.functional.cross_entropy(model(ids, torch.ones_like(ids)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    for name, p in model.backbone.named_parameters():
        part = section(arch, name)
        if part in ("embeddings", "layer_0"):
            assert torch.equal(p, before[name]), f"{arch}: frozen {name} changed"
    moved = [n for n, p in model.backbone.named_parameters()
             if section(arch, n) == "layer_1" and not torch.equal(p, before[n])]
    assert moved, f"{arch}: nothing in the top layer trained"


def test_reinit_the_top_layer_only(arch, tiny_backbones):
    folder = tiny_backbones(arch)
    loaded = dict(build(folder).backbone.named_parameters())
    model = build(folder, reinit_layers=1)
    changed = 0
    for name, p in model.backbone.named_parameters():
        if section(arch, name) != f"layer_{LAYERS - 1}":
            assert torch.equal(p, loaded[name]), f"{arch}: {name} changed but is not in the top layer"
        elif p.dim() >= 2:  # weight matrices (and XLNet's own attention tensors) are drawn afresh
            assert not torch.equal(p, loaded[name]), f"{arch}: {name} was not re-initialised"
            changed += 1
    assert changed >= 4
