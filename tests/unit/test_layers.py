"""Layer discovery, freezing and re-initialising the top layers of a backbone."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from textclf.errors import TextclfError
from textclf.models.classifier import TextClassifier
from textclf.models.heads import ClassificationHead
from textclf.models.layers import find_layers, freeze, reinit_top_layers
from textclf.models.pooling import MeanPooling
from textclf.engine.optim import adamw

LAYERS = 4


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                                intermediate_size=64))


def tiny_xlnet():
    from transformers import XLNetConfig, XLNetModel

    torch.manual_seed(0)
    return XLNetModel(XLNetConfig(vocab_size=100, d_model=32, n_layer=2, n_head=2, d_inner=64))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# ----------------------------------------------------------------------------- find_layers
def test_find_layers_on_bert():
    bert = tiny_bert()
    embeddings, layers = find_layers(bert)
    assert embeddings is bert.embeddings
    assert len(layers) == LAYERS and all(a is b for a, b in zip(layers, bert.encoder.layer))


def test_find_layers_on_xlnet():
    xlnet = tiny_xlnet()
    embeddings, layers = find_layers(xlnet)
    assert embeddings is xlnet.word_embedding
    assert len(layers) == 2 and all(a is b for a, b in zip(layers, xlnet.layer))


def test_find_layers_on_distilbert_and_electra():
    from transformers import DistilBertConfig, DistilBertModel, ElectraConfig, ElectraModel

    distil = DistilBertModel(DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64))
    embeddings, layers = find_layers(distil)
    assert embeddings is distil.embeddings and [id(m) for m in layers] == [id(m) for m in distil.transformer.layer]

    # ELECTRA projects its smaller embeddings up to the hidden size: the projection belongs to the embeddings
    electra = ElectraModel(ElectraConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, intermediate_size=64))
    embeddings, layers = find_layers(electra)
    in_embeddings = {id(p) for p in embeddings.parameters()}
    assert {id(p) for p in electra.embeddings.parameters()} | {id(p) for p in electra.embeddings_project.parameters()} \
        == in_embeddings
    assert len(layers) == 3


def test_find_layers_falls_back_to_the_largest_list_of_identical_blocks():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ff = nn.Linear(8, 8)

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_embed = nn.Embedding(10, 8)
            self.blocks = nn.ModuleList([Block() for _ in range(3)])
            self.heads = nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)])
            self.mixed = nn.ModuleList([nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.GELU()])

    model = Custom()
    embeddings, layers = find_layers(model)
    assert embeddings is model.tok_embed and [id(b) for b in layers] == [id(b) for b in model.blocks]


def test_find_layers_says_what_it_cannot_find():
    with pytest.raises(TextclfError, match=r"cannot find the layers of model type 'Linear'"):
        find_layers(nn.Linear(4, 4))


def test_albert_shares_its_layers_and_says_so():
    from transformers import AlbertConfig, AlbertModel

    albert = AlbertModel(AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64))
    for call in (lambda: find_layers(albert), lambda: freeze(albert, layers=1),
                 lambda: reinit_top_layers(albert, 1)):
        with pytest.raises(TextclfError, match="'albert' shares one set of layer weights"):
            call()
    freeze(albert)  # nothing asked: nothing to find
    reinit_top_layers(albert, 0)


# ----------------------------------------------------------------------------- freeze
def test_frozen_weights_stay_bit_identical_after_a_real_step():
    torch.manual_seed(0)
    model = TextClassifier(tiny_bert(), MeanPooling(32), ClassificationHead(32, 3, dropout=0.0))
    freeze(model.backbone, embeddings=True, layers=2)
    opt = adamw(model, lr=1e-2, layer_decay=0.9)
    in_optimizer = {id(p) for g in opt.param_groups for p in g["params"]}
    before = snapshot(model)

    x = torch.randint(1, 100, (4, 7))
    loss = nn.functional.cross_entropy(model(x, torch.ones_like(x)), torch.tensor([0, 1, 2, 1]))
    loss.backward()
    opt.step()

    frozen_prefixes = ("backbone.embeddings.", "backbone.encoder.layer.0.", "backbone.encoder.layer.1.")
    trained_prefixes = ("backbone.encoder.layer.2.", "backbone.encoder.layer.3.", "head.")
    params = dict(model.named_parameters())
    checked = {"frozen": 0, "trained": 0}
    for name, p in params.items():
        if name.startswith(frozen_prefixes):
            assert not p.requires_grad and p.grad is None and id(p) not in in_optimizer, name
            assert torch.equal(p, before[name]), f"frozen {name} changed"
            checked["frozen"] += 1
        elif name.startswith(trained_prefixes):
            assert p.requires_grad and id(p) in in_optimizer, name
            assert not torch.equal(p, before[name]), f"trainable {name} did not change"
            checked["trained"] += 1
    assert checked["frozen"] > 10 and checked["trained"] > 10
    assert "embeddings" not in {g["name"] for g in opt.param_groups}


def test_freeze_only_the_embeddings_or_only_layers():
    bert = tiny_bert()
    freeze(bert, embeddings=True)
    assert not any(p.requires_grad for p in bert.embeddings.parameters())
    assert all(p.requires_grad for p in bert.encoder.parameters())

    bert = tiny_bert()
    freeze(bert, layers=3)
    assert all(p.requires_grad for p in bert.embeddings.parameters())
    assert [any(p.requires_grad for p in layer.parameters()) for layer in bert.encoder.layer] == [False] * 3 + [True]


def test_freezing_more_layers_than_exist_is_named():
    with pytest.raises(TextclfError, match=r"model\.freeze_layers=5 but model type 'bert' has only 4 layers"):
        freeze(tiny_bert(), layers=5)
    with pytest.raises(TextclfError, match=r"freeze_layers must be 0 or more"):
        freeze(tiny_bert(), layers=-1)
    freeze(nn.Linear(2, 2))  # nothing asked: no layers needed


# ----------------------------------------------------------------------------- re-initialise
def pretrained_bert(folder):
    """A tiny BERT saved with 'trained' (non-default) weights and loaded back through from_pretrained."""
    from transformers import AutoModel

    bert = tiny_bert()
    with torch.no_grad():
        for p in bert.parameters():
            p.normal_(0.5, 1.0)  # far from any initialisation: LayerNorm weights != 1, biases != 0
    bert.save_pretrained(str(folder))
    return AutoModel.from_pretrained(str(folder))


def test_reinit_changes_the_top_layers_only(tmp_path):
    # loaded weights are marked initialised by transformers 5, whose init functions then skip them:
    # this checks re-initialisation really happens on a model that came from from_pretrained
    bert = pretrained_bert(tmp_path)
    before = snapshot(bert)
    torch.manual_seed(1)
    reinit_top_layers(bert, 2)
    std = bert.config.initializer_range
    for name, p in bert.named_parameters():
        top = name.startswith(("encoder.layer.2.", "encoder.layer.3."))
        if not top:
            assert torch.equal(p, before[name]), f"{name} changed"
            continue
        assert not torch.equal(p, before[name]), f"{name} was not re-initialised"
        if "LayerNorm.weight" in name:
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            assert abs(p.std().item() - std) < std / 2, f"{name} std {p.std().item():.3f}, expected about {std}"


def test_reinit_xlnet_layers_including_their_own_attention_parameters():
    xlnet = tiny_xlnet()
    with torch.no_grad():
        for p in xlnet.parameters():
            p.add_(1.0)
    before = snapshot(xlnet)
    reinit_top_layers(xlnet, 1)
    assert not torch.equal(xlnet.layer[1].rel_attn.q, before["layer.1.rel_attn.q"])  # a bare nn.Parameter
    assert not torch.equal(xlnet.layer[1].ff.layer_1.weight, before["layer.1.ff.layer_1.weight"])
    assert all(torch.equal(p, before[n]) for n, p in xlnet.named_parameters() if not n.startswith("layer.1."))


def test_reinit_more_layers_than_exist_is_named():
    with pytest.raises(TextclfError, match=r"model\.reinit_layers=5 but model type 'bert' has only 4 layers"):
        reinit_top_layers(tiny_bert(), 5)
    reinit_top_layers(nn.Linear(2, 2), 0)  # nothing asked: no layers needed
