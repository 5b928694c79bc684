"""Objectives: the standard loss and R-Drop (one doubled forward, the task loss, the divergence per task)."""
from __future__ import annotations

from importlib import resources

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from transformers import BertConfig, BertModel

from textclf.engine.objective import StandardObjective
from textclf.engine.rdrop import RDrop, mse_between, symmetric_bernoulli_kl, symmetric_softmax_kl
from textclf.errors import TextclfError
from textclf.models.losses import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from textclf.models.classifier import TextClassifier
from textclf.models.heads import ClassificationHead
from textclf.models.pooling import MeanPooling

N, L, HIDDEN = 6, 7, 32
# case -> (task, single_logit, number of outputs, loss)
CASES = {
    "binary": ("binary", False, 2, CrossEntropyLoss),
    "binary_single_logit": ("binary", True, 1, BCEWithLogitsLoss),
    "multiclass": ("multiclass", False, 4, CrossEntropyLoss),
    "multilabel": ("multilabel", False, 3, BCEWithLogitsLoss),
    "regression": ("regression", False, 2, MSELoss),
}
RDROP_DIR = resources.files("textclf.conf").joinpath("rdrop")


def labels_for(case: str, n: int = N, seed: int = 0) -> torch.Tensor:
    task, _, k, _ = CASES[case]
    g = torch.Generator().manual_seed(seed)
    if task in ("binary", "multiclass"):
        return torch.arange(n) % (2 if task == "binary" else k)
    if task == "multilabel":
        return (torch.rand(n, k, generator=g) > 0.5).float()
    return torch.randn(n, k, generator=g)


def make_batch(case: str, seed: int = 0) -> dict:
    """A collated batch as the trainer sees it: padded inputs, labels and row ids."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 3, 5, 7, 2, 4])
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    return {"input_ids": torch.randint(5, 100, (N, L), generator=g) * mask, "attention_mask": mask,
            "token_type_ids": torch.zeros(N, L, dtype=torch.long), "labels": labels_for(case, seed=seed),
            "rows": torch.arange(N)}


def tiny_bert(dropout: float = 0.0) -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, hidden_dropout_prob=dropout,
                                attention_probs_dropout_prob=dropout), add_pooling_layer=False)


def tiny_classifier(k: int, dropout: float = 0.0) -> TextClassifier:
    model = TextClassifier(tiny_bert(dropout), MeanPooling(HIDDEN), ClassificationHead(HIDDEN, k, dropout=dropout))
    return model.train()


def rdrop(case: str, alpha: float = 1.0) -> RDrop:
    task, single_logit, _, _ = CASES[case]
    return RDrop(alpha=alpha, task=task, single_logit=single_logit)


class ScriptedDropout(nn.Module):
    """Dropout whose masks are given in advance, one per row, consumed in row order across calls.

    The doubled R-Drop pass over 2N rows and two separate passes over N rows each then see the same masks,
    which random dropout cannot promise.
    """

    def __init__(self, masks: torch.Tensor, p: float):
        super().__init__()
        self.masks, self.p, self.used = masks, p, 0

    def forward(self, x):
        mask = self.masks[self.used:self.used + x.size(0)]
        self.used += x.size(0)
        return x * mask / (1 - self.p)


def scripted_classifier(k: int, p: float = 0.5) -> TextClassifier:
    """The tiny BERT (no random dropout) with scripted dropout on the pooled vector."""
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(2 * N, HIDDEN, generator=g) >= p).float()
    torch.manual_seed(2)
    head = nn.Sequential(ScriptedDropout(masks, p), nn.Linear(HIDDEN, k))
    return TextClassifier(tiny_bert(0.0), MeanPooling(HIDDEN), head).train()


# ----------------------------------------------------------------------------- direct formulas (float64)
def softmax_kl_ref(l1, l2):
    p1, p2 = l1.double().softmax(-1), l2.double().softmax(-1)
    kl12 = (p1 * (p1.log() - p2.log())).sum(-1)
    kl21 = (p2 * (p2.log() - p1.log())).sum(-1)
    return (0.5 * (kl12 + kl21)).mean()


def bernoulli_kl_ref(l1, l2):
    p, q = torch.sigmoid(l1.double()), torch.sigmoid(l2.double())
    not_p, not_q = torch.sigmoid(-l1.double()), torch.sigmoid(-l2.double())  # 1 - p without rounding to 0
    kl_pq = p * torch.log(p / q) + not_p * torch.log(not_p / not_q)
    kl_qp = q * torch.log(q / p) + not_q * torch.log(not_q / not_p)
    return (0.5 * (kl_pq + kl_qp)).mean()


def mse_ref(l1, l2):
    return ((l1.double() - l2.double()) ** 2).mean()


REFERENCE = {"binary": softmax_kl_ref, "binary_single_logit": bernoulli_kl_ref, "multiclass": softmax_kl_ref,
             "multilabel": bernoulli_kl_ref, "regression": mse_ref}


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", CASES)
def test_standard_objective_is_the_loss_of_one_forward(case):
    _, _, k, loss_cls = CASES[case]
    model, batch, loss_fn = tiny_classifier(k), make_batch(case), loss_cls()
    expected = loss_fn(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), batch["labels"])
    torch.testing.assert_close(StandardObjective()(model, batch, loss_fn), expected)


@pytest.mark.parametrize("case", CASES)
def test_rdrop_without_dropout_equals_the_plain_loss(case):
    _, _, k, loss_cls = CASES[case]
    model, batch, loss_fn = tiny_classifier(k, dropout=0.0), make_batch(case), loss_cls()
    plain = StandardObjective()(model, batch, loss_fn)
    torch.testing.assert_close(rdrop(case, alpha=1.0)(model, batch, loss_fn), plain, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_rdrop_gradient_matches_two_separate_passes_with_the_same_masks(case):
    task, _, k, loss_cls = CASES[case]
    batch, loss_fn, alpha = make_batch(case), loss_cls(), 2.0
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids")}

    model = scripted_classifier(k)
    loss = rdrop(case, alpha)(model, batch, loss_fn)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    # by hand: the same model and masks, two forward passes over N rows each
    ref_model = scripted_classifier(k)
    l1, l2 = ref_model(**inputs), ref_model(**inputs)
    assert not torch.allclose(l1, l2)  # the masks differ between the passes, so the divergence matters
    y = batch["labels"]
    divergence = REFERENCE[case](l1, l2).float()
    expected = 0.5 * (loss_fn(l1, y) + loss_fn(l2, y)) + alpha * divergence
    expected.backward()

    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)
    assert divergence > 1e-4
    for name, p in ref_model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)

    # and the divergence really changes the gradient: alpha=0 gives a different one
    plain_model = scripted_classifier(k)
    rdrop(case, 0.0)(plain_model, batch, loss_fn).backward()
    assert not torch.allclose(plain_model.head[1].weight.grad, grads["head.1.weight"])


@pytest.mark.parametrize("case", CASES)
def test_divergence_matches_the_direct_formula(case):
    _, _, k, _ = CASES[case]
    g = torch.Generator().manual_seed(3)
    l1, l2 = 3 * torch.randn(16, k, generator=g), 3 * torch.randn(16, k, generator=g)
    got = rdrop(case).divergence(l1, l2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), REFERENCE[case](l1, l2), atol=1e-6, rtol=1e-5)
    assert rdrop(case).divergence(l1, l1).abs() < 1e-6
    torch.testing.assert_close(rdrop(case).divergence(l2, l1), got)  # symmetric


def test_each_task_gets_its_divergence():
    assert RDrop(task="binary").divergence is symmetric_softmax_kl
    assert RDrop(task="multiclass").divergence is symmetric_softmax_kl
    assert RDrop(task="binary", single_logit=True).divergence is symmetric_bernoulli_kl
    assert RDrop(task="multilabel").divergence is symmetric_bernoulli_kl
    assert RDrop(task="regression").divergence is mse_between


def test_one_sigmoid_logit_and_two_softmax_logits_give_the_same_divergence():
    x1, x2 = torch.tensor([[2.0], [-1.0], [0.3]]), torch.tensor([[-0.5], [4.0], [0.3]])
    two_logits = lambda x: torch.cat([torch.zeros_like(x), x], 1)  # noqa: E731 - softmax([0, x]) = [1 - σ(x), σ(x)]
    as_softmax = symmetric_softmax_kl(two_logits(x1), two_logits(x2))
    torch.testing.assert_close(symmetric_bernoulli_kl(x1, x2), as_softmax)


@pytest.mark.parametrize("case", CASES)
def test_rdrop_runs_one_forward_over_the_doubled_batch(case):
    _, _, k, loss_cls = CASES[case]
    model, batch = tiny_classifier(k, dropout=0.1), make_batch(case)
    calls = []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs), with_kwargs=True)
    backbone_calls = []
    model.backbone.register_forward_pre_hook(lambda m, args: backbone_calls.append(1))
    rdrop(case)(model, batch, loss_cls())
    assert len(calls) == 1 and len(backbone_calls) == 1
    assert set(calls[0]) == {"input_ids", "attention_mask", "token_type_ids"}  # labels and rows stay out
    for key, value in calls[0].items():
        torch.testing.assert_close(value, torch.cat([batch[key], batch[key]]))


@pytest.mark.parametrize("case", CASES)
def test_rdrop_differs_from_the_plain_loss_with_dropout(case):
    _, _, k, loss_cls = CASES[case]
    model, batch, loss_fn = tiny_classifier(k, dropout=0.3), make_batch(case), loss_cls()
    with torch.no_grad():
        torch.manual_seed(0)
        no_divergence = rdrop(case, alpha=0.0)(model, batch, loss_fn)
        torch.manual_seed(0)
        with_divergence = rdrop(case, alpha=1.0)(model, batch, loss_fn)
    assert with_divergence > no_divergence  # same masks, the divergence term is positive


class FixedLogits(nn.Module):
    """A stand-in model whose logits are a parameter: the first N rows, then the next N."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.logits[: input_ids.size(0)]


@pytest.mark.parametrize("case", CASES)
def test_finite_loss_and_gradients_for_extreme_logits(case):
    _, _, k, loss_cls = CASES[case]
    signs = torch.where(torch.arange(N * k).view(N, k) % 2 == 0, 1.0, -1.0)
    model = FixedLogits(torch.cat([50 * signs, -50 * signs]))
    loss = rdrop(case)(model, make_batch(case), loss_cls())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(model.logits.grad).all()
    l1 = (50 * signs).requires_grad_()
    div = rdrop(case).divergence(l1, -50 * signs)
    div.backward()
    assert torch.isfinite(div) and div > 0 and torch.isfinite(l1.grad).all()
    if case != "regression":  # both passes equally confident and far apart: the float64 formula agrees
        torch.testing.assert_close(div.double(), REFERENCE[case](50 * signs, -50 * signs), rtol=1e-5, atol=1e-6)


def test_bernoulli_divergence_stays_accurate_where_sigmoid_saturates():
    # σ(20) and σ(21) are both 1.0 in float32; the divergence must still see their difference
    l1, l2 = torch.tensor([[20.0]]), torch.tensor([[21.0]])
    torch.testing.assert_close(symmetric_bernoulli_kl(l1, l2).double(), bernoulli_kl_ref(l1, l2), rtol=1e-4, atol=0)


def test_rdrop_under_bf16_autocast_returns_a_finite_float32_loss():
    model, batch = tiny_classifier(4, dropout=0.1), make_batch("multiclass")
    loss = rdrop("multiclass")(model, batch, CrossEntropyLoss(),
                               lambda: torch.autocast(device_type="cpu", dtype=torch.bfloat16))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_the_default_option_builds_rdrop_with_the_runtime_task():
    node = OmegaConf.create(RDROP_DIR.joinpath("default.yaml").read_text())
    objective = instantiate(node, task="binary", single_logit=True)
    assert isinstance(objective, RDrop) and objective.alpha == 1.0
    assert objective.divergence is symmetric_bernoulli_kl
    assert set(node) == {"_target_", "alpha"}  # task and single_logit come from the data, never from YAML


def test_the_none_option_is_an_empty_mapping():
    node = OmegaConf.create(RDROP_DIR.joinpath("none.yaml").read_text())
    assert OmegaConf.is_dict(node) and len(node) == 0 and not node


@pytest.mark.parametrize("kwargs", [{"alpha": -1.0}, {"alpha": float("nan")}, {"alpha": True},
                                    {"task": "ranking"}])
def test_bad_arguments_are_reported(kwargs):
    with pytest.raises(TextclfError):
        RDrop(**kwargs)


@pytest.mark.parametrize("task, single_logit, divergence", [
    ("multiclass", False, "their symmetric KL"), ("binary", True, "their per-label symmetric KL"),
    ("multilabel", False, "their per-label symmetric KL"), ("regression", False, "their mean squared difference")])
def test_rdrop_describes_the_divergence_its_task_uses(task, single_logit, divergence):
    text = RDrop(alpha=0.5, task=task, single_logit=single_logit).describe()
    assert text.startswith("alpha=0.5: each batch runs twice") and text.endswith(f"+ 0.5 x {divergence}")
