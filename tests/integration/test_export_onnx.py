"""ONNX export round trip, in process: the tiny BERT, XLNet (left padding, summary token last) and RoBERTa with every
pooling give the PyTorch logits back through ONNX Runtime, on batches of 1 to 7 rows and lengths 1 to max_length.

One graph per architecture holds every pooling side by side (their outputs concatenated into one head), so each
pooling's code is exported and checked without an export per pooling (an export takes seconds)."""
from __future__ import annotations

from importlib import resources
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from textclf.errors import TextclfError
from textclf.models.classifier import TextClassifier, summary_token_is_last
from textclf.models.pooling import Pooling

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from textclf.commands import fusion  # noqa: E402
from textclf.commands.export import check_inputs, export_graph, graph_inputs, verify  # noqa: E402
from textclf.inference.onnx_folds import session  # noqa: E402

CONF = resources.files("textclf.conf")
POOLINGS = sorted(f.name[:-5] for f in CONF.joinpath("pooling").iterdir() if f.name.endswith(".yaml"))
LAYERS = 3  # concat_last4 needs four hidden states
MAX_LENGTH = 24
#: the graph inputs each architecture's export takes (XLNet: its tokenizer marks <cls> with segment 2)
INPUTS = {"bert": ["input_ids", "attention_mask", "token_type_ids"],
          "xlnet": ["input_ids", "attention_mask", "token_type_ids"],
          "roberta": ["input_ids", "attention_mask"]}


class EveryPooling(Pooling):
    """All poolings of conf/pooling on the same hidden states, concatenated."""

    needs_all_layers = needs_pooler_output = True

    def __init__(self, names, hidden_size, summary_last, num_hidden_layers):
        super().__init__(hidden_size, summary_last, num_hidden_layers)
        self.poolings = torch.nn.ModuleList()
        for name in names:
            cfg = OmegaConf.load(str(CONF.joinpath("pooling", f"{name}.yaml")))
            if "layer_start" in cfg:
                cfg.layer_start = 1
            self.poolings.append(instantiate(cfg, hidden_size=hidden_size, summary_last=summary_last,
                                             num_hidden_layers=num_hidden_layers))
        self.output_dim = sum(p.output_dim for p in self.poolings)

    def forward(self, last_hidden, mask, outputs=None):
        return torch.cat([p(last_hidden, mask, outputs) for p in self.poolings], dim=-1)


def every_pooling_model(folder, arch):
    from transformers import AutoConfig, AutoModel

    from textclf.models.backbone import load_tokenizer

    config = AutoConfig.from_pretrained(str(folder))
    config.num_hidden_layers = LAYERS  # XLNet's n_layer answers to this name too
    torch.manual_seed(0)
    backbone = AutoModel.from_config(config)
    names = [p for p in POOLINGS if p != "pooler" or getattr(backbone, "pooler", None) is not None]
    pooling = EveryPooling(names, config.hidden_size, summary_token_is_last(config), LAYERS)
    for p in pooling.poolings:  # unequal layer weights, so a wrong layer order would show
        if hasattr(p, "layer_weights"):
            p.layer_weights.data = torch.linspace(-1, 1, len(p.layer_weights))
    head = instantiate(OmegaConf.load(str(CONF.joinpath("head", "default.yaml"))), in_features=pooling.output_dim,
                       num_labels=3)
    run = SimpleNamespace(backbone_config=config, tokenizer=load_tokenizer(str(folder)),
                          cfg=OmegaConf.create({"model": {"max_length": MAX_LENGTH}}))
    return TextClassifier(backbone, pooling, head).eval(), run, names


@pytest.mark.parametrize("arch", ["bert", "xlnet", "roberta"])
def test_export_reproduces_every_pooling(tiny_backbones, tmp_path, arch):
    model, run, names = every_pooling_model(tiny_backbones(arch), arch)
    assert len(names) == len(POOLINGS) - (arch == "xlnet")  # XLNet has no pooler output
    inputs = graph_inputs(run)
    assert inputs == INPUTS[arch]
    path = tmp_path / f"{arch}.onnx"
    export_graph(model, inputs, path, opset=None, what=arch)
    feeds = check_inputs(run, inputs)
    shapes = {f["input_ids"].shape for f in feeds}
    assert {(1, 1), (7, 1), (1, MAX_LENGTH), (7, MAX_LENGTH)} <= shapes
    left = run.tokenizer.padding_side == "left"
    assert left == (arch == "xlnet")
    padded = feeds[-1]["attention_mask"]
    assert (padded[:, 0 if left else -1] == 0).any(), "the check batches must hold padding on the tokenizer's side"
    assert verify(model, session(path), feeds, arch) <= 1e-4


@pytest.mark.parametrize("arch", ["bert", "roberta", "electra"])
def test_the_fused_graph_reproduces_every_pooling(tiny_backbones, tmp_path, arch):
    model, run, _ = every_pooling_model(tiny_backbones(arch), arch)
    assert fusion.unsupported(run.backbone_config) is None
    inputs, raw, fused = graph_inputs(run), tmp_path / "raw.onnx", tmp_path / "fused.onnx"
    attention = model.backbone.config._attn_implementation
    with fusion.fusable(model):
        export_graph(model, inputs, raw, opset=None, what=arch)
    assert model.backbone.config._attn_implementation == attention and "forward" not in vars(model.backbone)
    counts = fusion.optimize(raw, fused, run.backbone_config, large=False)
    # every layer's attention fuses (LayerNorm + residual fuses too with one pooling: the CLI test checks it; here
    # the optimizer's symbolic shape inference gives up on the graph of every pooling side by side)
    assert counts["Attention"] == LAYERS
    assert verify(model, session(fused), check_inputs(run, inputs), arch) <= 1e-4


def test_a_family_without_fusion_patterns_is_named(tiny_backbones):
    _, run, _ = every_pooling_model(tiny_backbones("xlnet"), "xlnet")
    assert "no fusion patterns for xlnet backbones" in fusion.unsupported(run.backbone_config)


def test_a_graph_that_differs_from_pytorch_is_refused(tiny_backbones, tmp_path):
    model, run, _ = every_pooling_model(tiny_backbones("bert"), "bert")

    class Off:
        def run(self, outputs, feed):
            from textclf.commands.export import torch_logits

            return [torch_logits(model, feed) + 0.1]

    with pytest.raises(TextclfError, match="does not reproduce the PyTorch model.*backend=torch"):
        verify(model, Off(), check_inputs(run, graph_inputs(run)), "fold_0")


def test_an_architecture_that_cannot_be_exported_gets_a_clear_message(tmp_path):
    class DataDependent(torch.nn.Module):
        def forward(self, input_ids, attention_mask, token_type_ids=None):
            if attention_mask.sum().item() > 3:  # python control flow on a tensor's value: torch.export cannot trace
                return input_ids.float()[:, :2]
            return input_ids.float()[:, :3]

    with pytest.raises(TextclfError, match="fold_0: odd cannot be exported to ONNX by torch.onnx .*backend=torch"):
        export_graph(DataDependent(), ["input_ids", "attention_mask"], tmp_path / "m.onnx", opset=None,
                     what="fold_0: odd")
    assert not list(tmp_path.iterdir()), "a failed export leaves no file"


def test_missing_extra_names_it(monkeypatch):
    import sys

    from textclf.inference.onnx_folds import require

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(TextclfError, match=r"predict backend=onnx needs onnxruntime .*pip install 'textclf\[onnx\]'"):
        require("onnxruntime", what="predict backend=onnx")


def test_check_inputs_pad_with_the_tokenizers_ids(tiny_backbones):
    _, run, _ = every_pooling_model(tiny_backbones("xlnet"), "xlnet")
    feeds = check_inputs(run, INPUTS["xlnet"])
    for feed in feeds:
        pad = feed["attention_mask"] == 0
        assert (feed["input_ids"][pad] == run.tokenizer.pad_token_id).all()
        assert (feed["token_type_ids"][pad] == run.tokenizer.pad_token_type_id).all()
        assert np.all(feed["attention_mask"].sum(1) >= 1)


def test_an_optimizer_failure_falls_back_to_the_plain_graph(tiny_backbones, tmp_path, monkeypatch, caplog):
    from textclf.commands import export

    model, run, _ = every_pooling_model(tiny_backbones("bert"), "bert")
    inputs = graph_inputs(run)

    def broken(*args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(fusion, "optimize", broken)
    cfg = OmegaConf.create({"opset": None})
    with caplog.at_level("WARNING"):
        fused = export.fuse_fold(run, model, inputs, tmp_path / "f.onnx", check_inputs(run, inputs), "fold_0", cfg)
    assert fused is None and not (tmp_path / "f.onnx").exists()
    assert "could not be fused (IndexError: list index out of range); exporting the plain graph" in caplog.text
