"""Every pooling in conf/pooling on every backbone family, through build_classifier and each tokenizer's own
padding: padding never changes a row's pooled vector (XLNet pads on the left), `cls` is the summary token
(XLNet's last, everyone else's first), and `pooler` is a clear error where the backbone has none."""
from __future__ import annotations

from importlib import resources

import pytest
import torch
from omegaconf import OmegaConf
from tiny_models import ARCHS, HAS_POOLER

from textclf.errors import TextclfError
from textclf.models.classifier import build_classifier
from textclf.models.backbone import load_tokenizer
from textclf.models.pooling import summary_positions

CONF = resources.files("textclf.conf")
POOLINGS = sorted(f.name[:-5] for f in CONF.joinpath("pooling").iterdir() if f.name.endswith(".yaml"))
#: one short text among longer ones, so the batch pads it
TEXTS = ["goal", "the market price of stock is big today", "vote for the new party after the election", "team"]


def conf(group: str, name: str, **overrides):
    return OmegaConf.merge(OmegaConf.load(str(CONF.joinpath(group, f"{name}.yaml"))), overrides)


def model_cfg(**overrides):
    return conf("model", "minilm", **overrides)


def build(folder, pooling: str, *, layers: int | None = None, **model_overrides):
    """A classifier on the tiny backbone in `folder`, in eval mode. weighted_layer starts at layer 1 (the tiny
    models have 2 layers); `layers` builds a fresh backbone of that depth from the folder's config instead."""
    from transformers import AutoConfig

    pooling_cfg = conf("pooling", pooling, **({"layer_start": 1} if pooling == "weighted_layer" else {}))
    kwargs = {}
    if layers is not None:
        config = AutoConfig.from_pretrained(str(folder))
        config.num_hidden_layers = layers
        kwargs = {"backbone_config": config, "pretrained": False}
    torch.manual_seed(0)
    model = build_classifier(model_cfg(**model_overrides), pooling_cfg, conf("head", "default"), 3,
                             name_or_path=str(folder), **kwargs)
    return model.eval()


def encode(tokenizer, texts):
    """The tokenizer's own padded encoding, segment ids included (XLNet gives its <cls> segment 2)."""
    return dict(tokenizer(texts, padding=True, return_token_type_ids=True, return_tensors="pt"))


@torch.no_grad()
def pooled(model, batch):
    out = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch.get("token_type_ids"),
                         output_hidden_states=model.pooling.needs_all_layers)
    return model.pooling(out.last_hidden_state, batch["attention_mask"], out), out


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture
def backbone(arch, tiny_backbones):
    folder = tiny_backbones(arch)
    return arch, folder, load_tokenizer(str(folder))


def test_every_pooling_is_covered():
    assert {"cls", "pooler", "mean", "max", "min", "mean_max", "attention", "weighted_layer",
            "concat_last4"} <= set(POOLINGS)


@pytest.mark.parametrize("pooling", [p for p in POOLINGS if p != "pooler"])
def test_padding_never_changes_a_rows_pooled_vector(backbone, pooling):
    arch, folder, tokenizer = backbone
    # concat_last4 needs 4 hidden states: a 3-layer backbone of the same family, from the folder's config
    model = build(folder, pooling, layers=3 if pooling == "concat_last4" else None)
    batch = encode(tokenizer, TEXTS)
    mask = batch["attention_mask"]
    assert (mask == 0).any(), "the batch must hold padding for this test to mean anything"
    real_first = mask[:, 0] == 1
    if arch == "xlnet":  # padding on the left: every row ends with a real token, short rows start with padding
        assert bool(mask[:, -1].all()) and not bool(real_first.all())
    else:
        assert bool(real_first.all()) and not bool(mask[:, -1].all())

    together, _ = pooled(model, batch)
    assert together.shape == (len(TEXTS), model.pooling.output_dim)
    for i, text in enumerate(TEXTS):
        alone, _ = pooled(model, encode(tokenizer, [text]))
        torch.testing.assert_close(together[i], alone[0], atol=2e-5, rtol=1e-4,
                                   msg=lambda m: f"{arch}/{pooling}, row {i} ({text!r}): {m}")


def test_cls_pools_the_summary_token(backbone):
    arch, folder, tokenizer = backbone
    model = build(folder, "cls")
    batch = encode(tokenizer, TEXTS)
    vectors, out = pooled(model, batch)
    positions = summary_positions(batch["attention_mask"], last=arch == "xlnet")
    rows = torch.arange(len(TEXTS))
    assert (batch["input_ids"][rows, positions] == tokenizer.cls_token_id).all(), \
        f"{arch}: the pooled position does not hold {tokenizer.cls_token!r}"
    if arch == "xlnet":
        assert (positions == batch["input_ids"].shape[1] - 1).all(), "XLNet's <cls> is the last token"
    else:
        assert (positions == 0).all(), f"{arch}: the summary token comes first"
    torch.testing.assert_close(vectors, out.last_hidden_state[rows, positions])


def test_pooler_works_or_says_the_backbone_has_none(backbone):
    arch, folder, tokenizer = backbone
    if arch not in HAS_POOLER:
        with pytest.raises(TextclfError, match=r"pooling=pooler: this backbone \(.+\) has no pooler output; "
                                               r"use pooling=cls"):
            build(folder, "pooler")
        return
    model = build(folder, "pooler")
    batch = encode(tokenizer, TEXTS)
    vectors, out = pooled(model, batch)
    torch.testing.assert_close(vectors, out.pooler_output)
    logits = model(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (len(TEXTS), 3) and torch.isfinite(logits).all()
