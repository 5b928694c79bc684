"""Every pooling option in conf/pooling: padding on either side never matters, widths match output_dim,
gradients flow, low precision stays finite, and each builds into a classifier that trains a step."""
from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext
from importlib import resources

import pytest
import torch
from conftest import model_node
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

from textclf.errors import TextclfError
from textclf.models.classifier import build_classifier
from textclf.models.pooling import AttentionPooling, GeMPooling, MaxPooling, MeanPooling, MinPooling

CONF = resources.files("textclf.conf")
POOLINGS = sorted(f.name[:-5] for f in CONF.joinpath("pooling").iterdir() if f.name.endswith(".yaml"))
HEADS = sorted(f.name[:-5] for f in CONF.joinpath("head").iterdir() if f.name.endswith(".yaml"))
LENGTHS = [5, 2, 7, 1]
WIDTH, HIDDEN, LAYERS = 7, 8, 5  # LAYERS layers -> LAYERS + 1 hidden states (embeddings first)
#: (pad_left, summary_last): BERT pads right, XLNet pads left with its summary token last; both mixes too
SIDES = [(False, False), (True, True), (False, True), (True, False)]


def test_every_spec_pooling_is_shipped():
    assert {"cls", "pooler", "mean", "max", "min", "mean_max", "attention", "weighted_layer",
            "concat_last4"} <= set(POOLINGS)


def pooling_cfg(name: str, **overrides):
    cfg = OmegaConf.load(str(CONF.joinpath("pooling", f"{name}.yaml")))
    return OmegaConf.merge(cfg, overrides)


def make_pooling(name: str, summary_last: bool = False, hidden: int = HIDDEN):
    torch.manual_seed(0)
    pooling = instantiate(pooling_cfg(name), hidden_size=hidden, summary_last=summary_last,
                          num_hidden_layers=LAYERS)
    if name == "weighted_layer":  # start from unequal weights so a wrong layer order would show
        with torch.no_grad():
            pooling.layer_weights.copy_(torch.linspace(-1, 1, len(pooling.layer_weights)))
    return pooling


@contextmanager
def raises_textclf_error(match: str):
    """A TextclfError matching `match`, raised directly or (from a constructor) wrapped by hydra's instantiate."""
    with pytest.raises(Exception) as info:  # noqa: PT011 - narrowed below
        yield
    error = info.value if isinstance(info.value, TextclfError) else info.value.__cause__
    assert isinstance(error, TextclfError), repr(info.value)
    assert re.search(match, str(error)), str(error)


def make_mask(pad_left: bool) -> torch.Tensor:
    mask = torch.zeros(len(LENGTHS), WIDTH, dtype=torch.long)
    for i, n in enumerate(LENGTHS):
        if pad_left:
            mask[i, WIDTH - n:] = 1
        else:
            mask[i, :n] = 1
    return mask


def make_states(seed: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(len(LENGTHS), WIDTH, HIDDEN, generator=g).to(dtype) for _ in range(LAYERS + 1)]


def fake_outputs(states, pooler_output=None):
    if pooler_output is None:
        pooler_output = torch.tanh(states[-1][:, 0])  # a stand-in; a real pooler reads the first position
    return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=states[-1], hidden_states=tuple(states),
                                                        pooler_output=pooler_output)


def run(pooling, states, mask, pooler_output=None):
    return pooling(states[-1], mask, fake_outputs(states, pooler_output))


def scramble_padding(states, mask, seed: int = 1):
    """The same real tokens, wild values (large, both signs) at every padded position of every layer."""
    g = torch.Generator().manual_seed(seed)
    real = mask.bool().unsqueeze(-1)
    return [torch.where(real, h, (torch.randn(h.shape, generator=g) * 1e4).to(h.dtype)) for h in states]


@pytest.mark.parametrize("pad_left, summary_last", SIDES, ids=[f"left={a}-last={b}" for a, b in SIDES])
@pytest.mark.parametrize("name", POOLINGS)
def test_padding_never_changes_the_pooled_vector(name, pad_left, summary_last):
    pooling = make_pooling(name, summary_last)
    mask = make_mask(pad_left)
    states = make_states()
    pooler_output = torch.randn(len(LENGTHS), HIDDEN)
    with torch.no_grad():
        pooled = run(pooling, states, mask, pooler_output)
        again = run(pooling, scramble_padding(states, mask), mask, pooler_output)
    assert pooled.shape == (len(LENGTHS), pooling.output_dim)
    assert torch.isfinite(pooled).all()
    assert torch.equal(again, pooled), (again - pooled).abs().max()


@pytest.mark.parametrize("name", POOLINGS)
def test_gradients_flow(name):
    pooling = make_pooling(name)
    states = [h.requires_grad_(True) for h in make_states()]
    pooler_output = torch.randn(len(LENGTHS), HIDDEN, requires_grad=True)
    run(pooling, states, make_mask(False), pooler_output).square().sum().backward()
    inputs = [*states, pooler_output]
    assert any(x.grad is not None and x.grad.abs().sum() > 0 for x in inputs)
    assert all(x.grad is None or torch.isfinite(x.grad).all() for x in inputs)
    for pname, p in pooling.named_parameters():  # (a shift of every score, like the last bias, has no gradient)
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert all(p.grad.abs().sum() > 0 for p in pooling.parameters() if p.ndim > 1 or name == "weighted_layer")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", POOLINGS)
def test_low_precision_stays_finite_and_keeps_padding_out(name, dtype):
    pooling = make_pooling(name, summary_last=True).to(dtype)
    mask = make_mask(True)
    states = [h * 100 for h in make_states(dtype=dtype)]  # large activations, as in a real backbone
    with torch.no_grad():
        pooled = run(pooling, states, mask, torch.randn(len(LENGTHS), HIDDEN).to(dtype))
        again = run(pooling, scramble_padding(states, mask), mask, torch.randn(len(LENGTHS), HIDDEN).to(dtype))
    assert pooled.dtype == dtype and torch.isfinite(pooled).all()
    if name != "pooler":  # its stand-in output is random on each call
        assert torch.equal(again, pooled)


# ----------------------------------------------------------------------------- what each pooling computes
def real_rows(h, mask, i):
    return h[i][mask[i].bool()]


@pytest.mark.parametrize("pad_left", [False, True])
def test_min_and_max_ignore_padding_whatever_its_value(pad_left):
    mask = make_mask(pad_left)
    real = mask.bool().unsqueeze(-1)
    for fill in (0.0, -1e4, 1e4):
        positive = torch.where(real, torch.full((len(LENGTHS), WIDTH, HIDDEN), 5.0), fill)
        negative = torch.where(real, torch.full((len(LENGTHS), WIDTH, HIDDEN), -5.0), fill)
        assert torch.equal(MinPooling(HIDDEN)(positive, mask), torch.full((len(LENGTHS), HIDDEN), 5.0))
        assert torch.equal(MaxPooling(HIDDEN)(negative, mask), torch.full((len(LENGTHS), HIDDEN), -5.0))


@pytest.mark.parametrize("pad_left", [False, True])
def test_min_max_mean_max_match_the_real_tokens(pad_left):
    mask, states = make_mask(pad_left), make_states()
    h = states[-1]
    mean_max = make_pooling("mean_max")
    assert mean_max.output_dim == 2 * HIDDEN
    pooled = run(mean_max, states, mask)
    torch.testing.assert_close(pooled, torch.cat([MeanPooling(HIDDEN)(h, mask), MaxPooling(HIDDEN)(h, mask)], -1))
    for i in range(len(LENGTHS)):
        rows = real_rows(h, mask, i)
        assert torch.equal(MaxPooling(HIDDEN)(h, mask)[i], rows.max(dim=0).values)
        assert torch.equal(MinPooling(HIDDEN)(h, mask)[i], rows.min(dim=0).values)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_min_max_in_low_precision_with_extreme_padding(dtype):
    mask = make_mask(False)
    info = torch.finfo(dtype)
    real = mask.bool().unsqueeze(-1)
    h = torch.where(real, torch.full((len(LENGTHS), WIDTH, HIDDEN), 3.0), info.max).to(dtype)
    assert torch.equal(MinPooling(HIDDEN)(h.neg(), mask), torch.full((len(LENGTHS), HIDDEN), -3.0, dtype=dtype))
    assert torch.equal(MinPooling(HIDDEN)(h, mask), torch.full((len(LENGTHS), HIDDEN), 3.0, dtype=dtype))
    assert torch.equal(MaxPooling(HIDDEN)(h.neg(), mask), torch.full((len(LENGTHS), HIDDEN), -3.0, dtype=dtype))


@pytest.mark.parametrize("pad_left", [False, True])
def test_attention_weights_are_zero_on_padding_and_sum_to_one(pad_left):
    pooling = make_pooling("attention")
    assert isinstance(pooling, AttentionPooling)
    mask, states = make_mask(pad_left), make_states()
    h = states[-1]
    weights = pooling.attention_weights(scramble_padding(states, mask)[-1], mask)
    assert torch.equal(weights[~mask.bool()], torch.zeros(int((mask == 0).sum())))
    assert (weights[mask.bool()] > 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(LENGTHS)))
    pooled = pooling(h, mask)
    for i in range(len(LENGTHS)):
        w = weights[i][mask[i].bool()]
        torch.testing.assert_close(pooled[i], (w.unsqueeze(-1) * real_rows(h, mask, i)).sum(dim=0))


def test_attention_pooling_in_bf16_with_huge_scores():
    pooling = make_pooling("attention").bfloat16()
    with torch.no_grad():
        pooling.score[-1].weight.mul_(1e4)  # scores far beyond what a naive -1e4 mask would hide
    mask = make_mask(True)
    states = make_states(dtype=torch.bfloat16)
    weights = pooling.attention_weights(states[-1], mask)
    assert torch.isfinite(weights).all() and (weights[~mask.bool()] == 0).all()
    assert torch.isfinite(pooling(states[-1], mask)).all()


@pytest.mark.parametrize("pad_left, summary_last", SIDES, ids=[f"left={a}-last={b}" for a, b in SIDES])
def test_concat_last4_is_the_summary_tokens_of_the_last_four_layers(pad_left, summary_last):
    pooling = make_pooling("concat_last4", summary_last)
    mask, states = make_mask(pad_left), make_states()
    pooled = run(pooling, states, mask)
    assert pooled.shape == (len(LENGTHS), 4 * HIDDEN)
    for i in range(len(LENGTHS)):
        pick = -1 if summary_last else 0
        expected = torch.cat([real_rows(states[k], mask, i)[pick] for k in (-1, -2, -3, -4)])
        assert torch.equal(pooled[i], expected)


@pytest.mark.parametrize("reduce", ["cls", "mean"])
def test_weighted_layer_is_a_softmax_weighted_average_from_layer_start(reduce):
    pooling = instantiate(pooling_cfg("weighted_layer", layer_start=2, reduce=reduce), hidden_size=HIDDEN,
                          summary_last=False, num_hidden_layers=LAYERS)
    assert pooling.layer_weights.shape == (LAYERS + 1 - 2,)
    with torch.no_grad():
        pooling.layer_weights.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0]))
    mask, states = make_mask(False), make_states()
    w = torch.softmax(torch.tensor([0.0, 1.0, -1.0, 2.0]), 0)
    reducer = (lambda h: h[:, 0]) if reduce == "cls" else (lambda h: MeanPooling(HIDDEN)(h, mask))
    expected = sum(w[k] * reducer(states[2 + k]) for k in range(4))
    torch.testing.assert_close(run(pooling, states, mask), expected)


def test_weighted_layer_starts_as_the_plain_average():
    pooling = instantiate(pooling_cfg("weighted_layer", layer_start=3), hidden_size=HIDDEN, num_hidden_layers=LAYERS)
    mask, states = make_mask(False), make_states()
    torch.testing.assert_close(run(pooling, states, mask), torch.stack([h[:, 0] for h in states[3:]]).mean(0))


@pytest.mark.parametrize("overrides, key", [({"layer_start": LAYERS + 1}, "pooling.layer_start"),
                                            ({"layer_start": -1}, "pooling.layer_start"),
                                            ({"reduce": "max"}, "pooling.reduce")])
def test_weighted_layer_bad_keys_are_named(overrides, key):
    with raises_textclf_error(key.replace(".", r"\.")):
        instantiate(pooling_cfg("weighted_layer", **overrides), hidden_size=HIDDEN, num_hidden_layers=LAYERS)


def test_poolings_that_need_every_layer_say_so():
    for name in POOLINGS:
        pooling = make_pooling(name)
        with pytest.raises(TextclfError) if pooling.needs_all_layers else nullcontext():
            pooling(make_states()[-1], make_mask(False), BaseModelOutputWithPoolingAndCrossAttentions(
                last_hidden_state=make_states()[-1], pooler_output=torch.zeros(len(LENGTHS), HIDDEN)))


def test_pooler_without_a_pooler_output_is_a_clear_error():
    pooling = make_pooling("pooler")
    assert pooling.needs_pooler_output
    states = make_states()
    outputs = BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=states[-1])  # pooler_output None
    with pytest.raises(TextclfError, match="pooling=pooler: this backbone has no pooler output; use pooling=cls"):
        pooling(states[-1], make_mask(False), outputs)


# ----------------------------------------------------------------------------- inside a real classifier
MODEL_CFG = {"max_length": 32, "truncation": "head", "trust_remote_code": False, "gradient_checkpointing": False,
             "hidden_dropout": None, "attention_dropout": None}
#: the tiny BERT has 2 layers (3 hidden states): options that reach further down are pointed at layer 1
TINY_OVERRIDES = {"weighted_layer": {"layer_start": 1}}


def build(tiny_bert, pooling_cfg_node, head: str, *, layers: int | None = None):
    from transformers import AutoConfig

    model_cfg = model_node({"name_or_path": str(tiny_bert), **MODEL_CFG})
    head_cfg = OmegaConf.load(str(CONF.joinpath("head", f"{head}.yaml")))
    kwargs = {}
    if layers is not None:  # a deeper tiny BERT with fresh weights, from the same config
        kwargs = {"pretrained": False, "backbone_config": AutoConfig.from_pretrained(str(tiny_bert),
                                                                                       num_hidden_layers=layers)}
    torch.manual_seed(0)
    return build_classifier(model_cfg, pooling_cfg_node, head_cfg, 3, name_or_path=str(tiny_bert), **kwargs)


def tiny_batch(tiny_tokenizer):
    enc = tiny_tokenizer(["goal match team score today", "market"], padding=True, return_tensors="pt")
    assert enc["attention_mask"][1].sum() < enc["attention_mask"].size(1)  # the second row is padded
    return enc


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", POOLINGS)
def test_every_pooling_with_every_head_trains_a_step(tiny_bert, tiny_tokenizer, name, head):
    layers = 4 if name == "concat_last4" else None
    model = build(tiny_bert, pooling_cfg(name, **TINY_OVERRIDES.get(name, {})), head, layers=layers)
    model.train()
    enc = tiny_batch(tiny_tokenizer)
    logits = model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for part in (model.pooling, model.head):
        for pname, p in part.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert model.backbone.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():  # eval is deterministic: dropout (and multi-sample dropout) off
        a = model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
        b = model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name, overrides, message", [
    ("weighted_layer", {}, r"pooling\.layer_start=4 .*2 layers"),
    ("concat_last4", {}, r"pooling=concat_last4 needs at least 4 hidden states"),
])
def test_options_deeper_than_the_backbone_fail_clearly(tiny_bert, tiny_tokenizer, name, overrides, message):
    enc = tiny_batch(tiny_tokenizer)
    with raises_textclf_error(message):
        model = build(tiny_bert, pooling_cfg(name, **overrides), "default")
        model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))


def test_pooler_uses_the_backbones_pooler(tiny_bert, tiny_tokenizer):
    model = build(tiny_bert, pooling_cfg("pooler"), "default").eval()
    enc = tiny_batch(tiny_tokenizer)
    with torch.no_grad():
        out = model.backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        pooled = model.pooling(out.last_hidden_state, enc["attention_mask"], out)
    assert torch.equal(pooled, out.pooler_output)


def test_gem_pooling_matches_hand_computed_generalised_means():
    """GeM over the real tokens only: (mean of clamp(x, eps)^p)^(1/p) per dimension; the padded token (100)
    never enters, a negative value is clamped to eps, and p is a parameter that training moves."""
    hidden = torch.tensor([[[1.0, 4.0], [2.0, -1.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    expected = {1.0: [1.5, 2.0000005], 2.0: [1.5811388, 2.8284271], 3.0: [1.6509636, 3.1748021]}
    for p, want in expected.items():
        pooling = GeMPooling(hidden_size=2, p=p)
        assert torch.allclose(pooling(hidden, mask), torch.tensor([want]), atol=1e-5), p
    pooling = GeMPooling(hidden_size=2, p=3.0)
    pooling(hidden, mask).sum().backward()
    assert pooling.p.grad is not None and torch.isfinite(pooling.p.grad) and pooling.p.grad != 0
    assert not GeMPooling(hidden_size=2, learn_p=False).p.requires_grad


@pytest.mark.parametrize("bad", [{"p": 0.5}, {"p": True}, {"eps": 0}, {"eps": 2.0}])
def test_gem_pooling_refuses_a_bad_exponent_or_eps(bad):
    with raises_textclf_error(r"pooling\.(p|eps)"):
        instantiate(pooling_cfg("gem", **bad), hidden_size=HIDDEN)
