"""Backbone + pooling + head: the classifier every run trains and `predict` rebuilds."""
from __future__ import annotations

import torch
from hydra.utils import instantiate
from torch import nn

from textclf.errors import TextclfError, own_errors
from textclf.models.backbone import load_backbone, load_backbone_config
from textclf.models.layers import freeze, reinit_top_layers


class TextClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, pooling: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.pooling, self.head = backbone, pooling, head

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.pooling.needs_all_layers:
            kwargs["output_hidden_states"] = True
        out = self.backbone(**kwargs)
        pooled = self.pooling(out.last_hidden_state, attention_mask, out)
        return self.head(pooled)


def summary_token_is_last(config) -> bool:
    return getattr(config, "model_type", "") == "xlnet"


def build_classifier(model_cfg, pooling_cfg, head_cfg, num_labels: int, *, name_or_path: str,
                     pretrained: bool = True, backbone_config=None, init_from=None) -> TextClassifier:
    """Build from the composed config; runtime values (hidden size, labels) are passed here.

    init_from: a models.init_from.InitFrom (model.init_from): its matching weights are loaded into the composed
    model, before the layer options (freeze, re-initialise the top layers) apply to the result."""
    trust = bool(model_cfg.trust_remote_code)
    if backbone_config is None:
        backbone_config = load_backbone_config(
            name_or_path, hidden_dropout=model_cfg.hidden_dropout,
            attention_dropout=model_cfg.attention_dropout, trust_remote_code=trust)
    # pooling and head first: an option that does not fit this backbone fails before any weights load
    pooling = _build(pooling_cfg, hidden_size=backbone_config.hidden_size,
                     summary_last=summary_token_is_last(backbone_config),
                     num_hidden_layers=getattr(backbone_config, "num_hidden_layers", None))
    head = _build(head_cfg, in_features=pooling.output_dim, num_labels=num_labels)
    uses_pooler = bool(getattr(pooling, "needs_pooler_output", False))
    backbone = load_backbone(name_or_path, backbone_config, pretrained=pretrained, trust_remote_code=trust,
                             gradient_checkpointing=bool(model_cfg.gradient_checkpointing),
                             uses_pooler=uses_pooler, weights_follow=init_from is not None)
    if uses_pooler and getattr(backbone, "pooler", None) is None:
        raise TextclfError(f"pooling=pooler: this backbone ({backbone_config.model_type}) has no pooler output; "
                           f"use pooling=cls")
    model = TextClassifier(backbone, pooling, head)
    if init_from is not None:
        init_from.apply(model)
    if pretrained:  # a run being reloaded already holds the trained weights
        apply_layer_options(backbone, model_cfg)
    return model


def _build(node, **runtime):
    with own_errors():
        return instantiate(node, **runtime)


def apply_layer_options(backbone, model_cfg) -> None:
    """Freeze the embeddings / lowest layers and re-initialise the top layers, as the model config asks."""
    freeze_embeddings, freeze_layers = bool(model_cfg.freeze_embeddings), int(model_cfg.freeze_layers)
    reinit_layers = int(model_cfg.reinit_layers)
    if not (freeze_embeddings or freeze_layers or reinit_layers):
        return
    if reinit_layers:
        reinit_top_layers(backbone, reinit_layers)
    if freeze_embeddings or freeze_layers:
        freeze(backbone, embeddings=freeze_embeddings, layers=freeze_layers)
