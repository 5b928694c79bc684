"""Building a run's pieces from config: balanced class weights, gradient checkpointing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import model_node
from omegaconf import OmegaConf

from textclf.errors import TextclfError
from textclf.data.tasks import LabelSpace
from textclf.models.losses import build_loss


def test_balanced_class_weights_come_from_the_training_fold_counts():
    labels = LabelSpace("multiclass", ["a", "b", "c"])
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    loss = build_loss(OmegaConf.create({"_target_": "textclf.models.losses.CrossEntropyLoss", "class_weights": "balanced"}),
                      labels, y)
    expected = [10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)]
    assert loss.weight.tolist() == pytest.approx(expected)


def test_class_weights_of_the_wrong_length_are_a_clear_error():
    labels = LabelSpace("multiclass", ["a", "b", "c"])
    with pytest.raises(TextclfError, match="class_weights has 2 values but there are 3 classes"):
        build_loss(OmegaConf.create({"_target_": "textclf.models.losses.CrossEntropyLoss", "class_weights": [1.0, 2.0]}),
                   labels, np.array([0, 1, 2]))


def test_gradient_checkpointing_trains_like_the_plain_model(tiny_bert):
    from textclf.models.classifier import build_classifier

    def grads(checkpointing: bool):
        torch.manual_seed(0)
        mcfg = model_node({"name_or_path": str(tiny_bert), "max_length": 16, "truncation": "head",
                                 "trust_remote_code": False, "gradient_checkpointing": checkpointing,
                                 "hidden_dropout": 0.0, "attention_dropout": 0.0})
        model = build_classifier(mcfg, OmegaConf.create({"_target_": "textclf.models.pooling.MeanPooling"}),
                                 OmegaConf.create({"_target_": "textclf.models.heads.ClassificationHead",
                                                   "dropout": 0.0}), 3, name_or_path=str(tiny_bert))
        model.train()
        ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 9, 3, 0]])
        logits = model(ids, (ids != 0).long())
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
        return model.backbone.embeddings.word_embeddings.weight.grad.clone(), _checkpointing(model.backbone)

    plain, off = grads(False)
    ckpt, on = grads(True)
    assert on and not off
    torch.testing.assert_close(plain, ckpt)


def _checkpointing(backbone) -> bool:
    if hasattr(backbone, "is_activation_checkpointing"):  # transformers 5
        return backbone.is_activation_checkpointing
    return backbone.is_gradient_checkpointing
