"""The pure parts of learning from a teacher: which pseudo-labels are kept (thresholds per class, the cap in
proportion to the classes), the distillation targets, and the soft-target loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from textclf.data.pseudo import Distill, PseudoLabels
from textclf.data.tasks import LabelSpace
from textclf.errors import TextclfError
from textclf.models.losses import SoftTargetLoss

THREE = LabelSpace("multiclass", ["a", "b", "c"])


def probs(rows):
    return np.array(rows, dtype=np.float64)


def test_a_text_is_kept_when_its_class_probability_reaches_that_class_threshold():
    outputs = probs([[0.95, 0.03, 0.02], [0.1, 0.85, 0.05], [0.05, 0.05, 0.9], [0.4, 0.3, 0.3], [0.1, 0.75, 0.15]])
    chosen = PseudoLabels("t", threshold={"b": 0.8, "default": 0.9}).select(THREE, outputs, n_train=100)
    assert chosen.rows.tolist() == [0, 1, 2] and chosen.y.tolist() == [0, 1, 2]
    assert chosen.confident_by_class == {"a": 1, "b": 1, "c": 1} and not chosen.capped


def test_the_cap_keeps_the_most_confident_of_each_class_in_proportion():
    # 6 confident a's, 3 confident b's; cap 0.3 x 10 = 3 rows: 2 a's and 1 b, each the most confident
    a = [[p, 1 - p, 0] for p in (0.91, 0.99, 0.93, 0.97, 0.92, 0.95)]
    b = [[1 - p, p, 0] for p in (0.92, 0.98, 0.95)]
    chosen = PseudoLabels("t", threshold=0.9, max_share=0.3).select(THREE, probs(a + b), n_train=10)
    assert chosen.capped and chosen.kept_by_class == {"a": 2, "b": 1}
    assert chosen.rows.tolist() == [1, 3, 7]


def test_multilabel_keeps_a_text_only_when_every_label_is_decided_confidently():
    labels = LabelSpace("multilabel", ["x", "y"])
    chosen = PseudoLabels("t", threshold=0.9).select(labels, probs([[0.95, 0.02], [0.95, 0.5], [0.01, 0.05]]), 10)
    assert chosen.rows.tolist() == [0, 2] and chosen.y.tolist() == [[1, 0], [0, 0]]


@pytest.mark.parametrize("kwargs, message", [
    ({"teacher": None}, "pseudo_label.teacher"), ({"teacher": "t", "threshold": 0}, "threshold must be"),
    ({"teacher": "t", "source": "valid"}, "pseudo_label.source"), ({"teacher": "t", "max_share": 0}, "max_share"),
    ({"teacher": "t", "threshold": {"a": 2}}, "pseudo_label.threshold.a")])
def test_bad_pseudo_label_settings_are_refused(kwargs, message):
    with pytest.raises(TextclfError, match=message):
        PseudoLabels(**kwargs)


def test_an_unknown_class_in_the_thresholds_is_refused():
    with pytest.raises(TextclfError, match="not classes of this run"):
        PseudoLabels("t", threshold={"zebra": 0.9}).thresholds(THREE)


def test_distill_targets_mix_the_teacher_and_the_labels():
    teacher = probs([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    soft = Distill("t", alpha=0.25).soft_targets(THREE, np.array([0, 1]), teacher)
    np.testing.assert_allclose(soft, [[0.9, 0.075, 0.025], [0.05, 0.8, 0.15]], rtol=1e-6)
    np.testing.assert_allclose(Distill("t", alpha=0.25).soft_targets(THREE, None, teacher), teacher, rtol=1e-6)
    single = LabelSpace("binary", ["n", "p"], single_logit=True)
    np.testing.assert_allclose(Distill("t", alpha=1).soft_targets(single, np.array([1]), probs([[0.3, 0.7]])),
                               [[0.7]], rtol=1e-6)


def test_the_soft_target_loss_is_the_plain_loss_on_one_hot_targets_and_the_cross_entropy_otherwise():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    hard = torch.tensor([0, 2])
    loss = SoftTargetLoss("multiclass")
    torch.testing.assert_close(loss(logits, torch.nn.functional.one_hot(hard, 3).float()),
                               torch.nn.functional.cross_entropy(logits, hard))
    target = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    expected = -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(loss(logits, target), expected)
    multi = SoftTargetLoss("multilabel")
    torch.testing.assert_close(multi(logits, target),
                               torch.nn.functional.binary_cross_entropy_with_logits(logits, target))


def test_the_teachers_out_of_fold_outputs_are_matched_to_training_rows_only(tmp_path):
    from types import SimpleNamespace

    import pandas as pd

    from textclf.inference.teacher import Teacher

    # a holdout teacher with data.valid_file: its validation rows are numbered 0.. in their own file
    pd.DataFrame({"source": ["train", "valid"], "row": [1, 0], "prob_a": [0.7, 0.1], "prob_b": [0.2, 0.8],
                  "prob_c": [0.1, 0.1]}).to_csv(tmp_path / "oof.csv", index=False)
    teacher = Teacher(tmp_path, SimpleNamespace(labels=THREE), "distill.teacher")
    outputs, covered = teacher.out_of_fold(3, np.array([0, 1, 2]))
    assert covered.tolist() == [False, True, False]
    np.testing.assert_allclose(outputs[1], [0.7, 0.2, 0.1])


@pytest.mark.parametrize("kwargs, message", [
    ({"teacher": None}, "distill.teacher: give the run folder"), ({"teacher": "t", "alpha": 1.5}, "distill.alpha"),
    ({"teacher": "t", "targets": "best"}, "distill.targets must be oof or ensemble")])
def test_bad_distill_settings_are_refused(kwargs, message):
    with pytest.raises(TextclfError, match=message):
        Distill(**kwargs)
