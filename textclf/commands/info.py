"""`textclf info`: the composed model's size and cost, without training.

Prints total and trainable parameters and the FLOPs of one forward pass (batch 1, `model.max_length`
tokens), counted by PyTorch's own FlopCounterMode. Takes the same overrides as `textclf train`.
"""
from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from textclf.models.classifier import build_classifier
from textclf.models.backbone import load_backbone_config, resolve_name_or_path

log = logging.getLogger(__name__)


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def forward_flops(model, length: int, vocab_size: int, batch: int = 1) -> int:
    ids = torch.randint(low=min(5, vocab_size - 1), high=vocab_size, size=(batch, length))
    mask = torch.ones_like(ids)
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    return int(counter.get_total_flops())


def info(cfg: DictConfig) -> dict:
    """The model's size and cost; its config was checked once, when Hydra composed it (textclf.config.check)."""
    name_or_path = resolve_name_or_path(cfg.model.name_or_path)
    mcfg = cfg.model
    backbone_config = load_backbone_config(name_or_path, hidden_dropout=mcfg.hidden_dropout,
                                           attention_dropout=mcfg.attention_dropout,
                                           trust_remote_code=mcfg.trust_remote_code)
    model = build_classifier(mcfg, cfg.pooling, cfg.head, 2, name_or_path=name_or_path,
                             backbone_config=backbone_config)
    total, trainable = count_parameters(model)
    length = int(mcfg.max_length)
    flops = forward_flops(model, length, int(backbone_config.vocab_size))
    result = {"model": str(cfg.model.name_or_path), "model_type": backbone_config.model_type,
              "parameters": total, "trainable_parameters": trainable, "sequence_length": length,
              "forward_flops": flops}
    print(f"model           {result['model']} ({result['model_type']})\n"
          f"parameters      {total:,} total, {trainable:,} trainable\n"
          f"forward FLOPs   {flops / 1e9:.3f} GFLOPs for 1 sequence of {length} tokens "
          f"(torch.utils.flop_counter; training costs about 3x)")
    return result
