"""The classification head: multi-sample dropout averages k masks, the optional hidden layer and LayerNorm."""
from __future__ import annotations

from importlib import resources

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from textclf.errors import TextclfError
from textclf.models.heads import ClassificationHead

CONF = resources.files("textclf.conf")
HEADS = sorted(f.name[:-5] for f in CONF.joinpath("head").iterdir() if f.name.endswith(".yaml"))
IN, K = 16, 3


def pooled(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, IN, generator=torch.Generator().manual_seed(seed)) * 3 + 1


def test_the_spec_head_options_are_shipped():
    assert {"default", "multi_sample", "mlp"} <= set(HEADS)


@pytest.mark.parametrize("name", HEADS)
def test_every_head_option_builds_and_maps_to_the_labels(name):
    head = instantiate(OmegaConf.load(str(CONF.joinpath("head", f"{name}.yaml"))), in_features=IN, num_labels=K)
    x = pooled().requires_grad_(True)
    logits = head.train()(x)
    assert logits.shape == (8, K)
    logits.sum().backward()
    assert torch.isfinite(x.grad).all() and all(p.grad is not None for p in head.parameters())
    with torch.no_grad():
        assert torch.equal(head.eval()(x), head(x))  # eval is deterministic


def test_default_head_is_dropout_then_linear():
    head = ClassificationHead(IN, K, dropout=0.3)
    assert [n for n, _ in head.named_parameters()] == ["out.weight", "out.bias"]  # old checkpoints still load
    x = pooled()
    torch.manual_seed(5)
    got = head.train()(x)
    torch.manual_seed(5)
    torch.testing.assert_close(got, head.out(F.dropout(x, 0.3, training=True)))


def test_multi_sample_dropout_averages_k_masks_in_training():
    k, p = 5, 0.3
    head = ClassificationHead(IN, K, dropout=p, multi_sample_dropout=k).train()
    x = pooled()
    torch.manual_seed(1)
    got = head(x)
    torch.manual_seed(1)
    expected = torch.stack([head.out(F.dropout(x, p, training=True)) for _ in range(k)]).mean(0)
    torch.testing.assert_close(got, expected)
    torch.manual_seed(1)
    single = head.out(F.dropout(x, p, training=True))
    assert not torch.allclose(got, single)  # not just the first mask
    # averaging k masks shrinks the noise around the dropout-free logits
    clean = head.out(x)
    multi_err = torch.stack([(head(x) - clean).square().mean() for _ in range(50)]).mean()
    one = ClassificationHead(IN, K, dropout=p).train()
    one.load_state_dict(head.state_dict())
    single_err = torch.stack([(one(x) - clean).square().mean() for _ in range(50)]).mean()
    assert multi_err < single_err / 2


def test_multi_sample_dropout_in_eval_is_the_plain_linear_layer():
    head = ClassificationHead(IN, K, dropout=0.5, multi_sample_dropout=8).eval()
    x = pooled()
    assert torch.equal(head(x), head.out(x))


@pytest.mark.parametrize("activation, fn", [("gelu", F.gelu), ("relu", F.relu), ("tanh", torch.tanh)])
def test_hidden_layer_shapes_and_activation(activation, fn):
    head = ClassificationHead(IN, K, dropout=0.1, hidden_dim=24, activation=activation).eval()
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(IN, 24), (24, K)]
    x = pooled()
    hidden_linear, out = linears
    torch.testing.assert_close(head(x), out(fn(hidden_linear(x))))


def test_layer_norm_is_applied_to_the_pooled_vector_first():
    head = ClassificationHead(IN, K, dropout=0.0, layer_norm=True).eval()
    norms = [m for m in head.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 1 and norms[0].normalized_shape == (IN,)
    x = pooled()
    torch.testing.assert_close(head(x), head.out(F.layer_norm(x, (IN,), norms[0].weight, norms[0].bias)))
    # scale and shift of the pooled vector no longer matter
    torch.testing.assert_close(head(x * 7 + 3), head(x), atol=1e-4, rtol=1e-4)


def test_mlp_option_is_layer_norm_then_hidden_layer():
    head = instantiate(OmegaConf.load(str(CONF.joinpath("head", "mlp.yaml"))), in_features=IN, num_labels=K)
    assert any(isinstance(m, torch.nn.LayerNorm) for m in head.modules())
    assert sum(isinstance(m, torch.nn.Linear) for m in head.modules()) == 2


@pytest.mark.parametrize("kwargs, key", [({"multi_sample_dropout": 0}, "head.multi_sample_dropout"),
                                         ({"dropout": 1.0}, "head.dropout"),
                                         ({"hidden_dim": 0}, "head.hidden_dim"),
                                         ({"activation": "swish"}, "head.activation"),
                                         ({"layer_norm": "yes"}, "head.layer_norm")])
def test_bad_head_values_are_named(kwargs, key):
    with pytest.raises(TextclfError, match=key.replace(".", r"\.")):
        ClassificationHead(IN, K, **kwargs)
