"""Backbone + pooling + head: the classifier every run trains and `predict` rebuilds."""
from __future__ import annotations

import torch
from hydra.utils import instantiate
from torch import nn

from .backbone import load_backbone, load_backbone_config


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
                     pretrained: bool = True, backbone_config=None) -> TextClassifier:
    """Build from the composed config; runtime values (hidden size, labels) are passed here."""
    trust = bool(model_cfg.get("trust_remote_code", False))
    if backbone_config is None:
        backbone_config = load_backbone_config(
            name_or_path, hidden_dropout=model_cfg.get("hidden_dropout"),
            attention_dropout=model_cfg.get("attention_dropout"), trust_remote_code=trust)
    backbone = load_backbone(name_or_path, backbone_config, pretrained=pretrained, trust_remote_code=trust,
                             gradient_checkpointing=bool(model_cfg.get("gradient_checkpointing", False)))
    hidden = backbone.config.hidden_size
    pooling = instantiate(pooling_cfg, hidden_size=hidden, summary_last=summary_token_is_last(backbone.config))
    head = instantiate(head_cfg, in_features=pooling.output_dim, num_labels=num_labels)
    return TextClassifier(backbone, pooling, head)
