"""Every loss: SPEC §3 reference values, raw logits in, finite values and gradients, class weights."""
from __future__ import annotations

import inspect
from importlib import resources

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from textclf.models import losses
from textclf.errors import TextclfError

LOSS_DIR = resources.files("textclf.conf").joinpath("loss")
OPTIONS = sorted(f.name[:-5] for f in LOSS_DIR.iterdir() if f.name.endswith(".yaml") and f.name != "auto.yaml")
TASKS = ("binary", "multiclass", "multilabel", "regression")


def node(option: str):
    return OmegaConf.create(LOSS_DIR.joinpath(f"{option}.yaml").read_text())


def build(option: str, **kwargs):
    return instantiate(node(option), **kwargs)


def batch(loss_cls, task: str, n: int = 8, k: int = 4, scale: float = 3.0, seed: int = 0):
    """Raw logits and targets in the shapes the trainer hands a loss (see the module docstring of losses)."""
    g = torch.Generator().manual_seed(seed)
    if task in ("binary", "multiclass"):
        k = 2 if task == "binary" else k
        target = torch.arange(n) % k  # every class present
        width = 1 if task == "binary" and getattr(loss_cls, "single_logit_binary", False) else k
    elif task == "multilabel":
        target = (torch.rand(n, k, generator=g) > 0.5).float()
        width = k
    else:
        target = torch.randn(n, 2, generator=g)
        width = 2
    logits = (scale * torch.randn(n, width, generator=g)).requires_grad_()
    return logits, target


CASES = [(o, t) for o in OPTIONS for t in get_class(node(o)._target_).tasks]


def test_every_loss_option_is_found():
    assert {"ce", "label_smoothing", "focal", "bce", "bce_focal", "dice", "mse", "mse_corr"} <= set(OPTIONS)


@pytest.mark.parametrize("option", OPTIONS)
def test_yaml_keys_are_constructor_parameters_and_tasks_are_known(option):
    cfg = node(option)
    cls = get_class(cfg._target_)
    params = inspect.signature(cls).parameters
    assert {k for k in cfg if k != "_target_"} <= set(params)
    assert cls.tasks and set(cls.tasks) <= set(TASKS)
    if getattr(cls, "single_logit_binary", False):
        assert "binary" in cls.tasks


@pytest.mark.parametrize("option, task", CASES, ids=[f"{o}-{t}" for o, t in CASES])
def test_every_loss_takes_raw_logits_and_backpropagates(option, task):
    loss_fn = build(option)
    logits, target = batch(type(loss_fn), task)
    loss = loss_fn(logits, target)
    assert loss.dim() == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("option, task", CASES, ids=[f"{o}-{t}" for o, t in CASES])
@pytest.mark.parametrize("scale", [50.0, 1e4])
def test_no_loss_overflows_on_huge_logits(option, task, scale):
    # a softmax before the log (or BCELoss on sigmoid outputs) would give inf / nan here
    loss_fn = build(option)
    logits, target = batch(type(loss_fn), task, scale=scale)
    loss = loss_fn(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("option, task", CASES, ids=[f"{o}-{t}" for o, t in CASES])
def test_half_precision_logits_are_computed_in_float32(option, task):
    loss_fn = build(option)
    logits, target = batch(type(loss_fn), task)
    loss = loss_fn(logits.detach().bfloat16(), target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# ----------------------------------------------------------------------------- SPEC §3 reference values
PROBS = [[0.3992, 0.2232, 0.6435], [0.3800, 0.3044, 0.3241]]


def test_bce_reference():
    p = torch.tensor(PROBS)
    y = torch.tensor([[0.0, 1, 1], [0, 0, 1]])
    assert torch.nn.BCELoss()(p, y).item() == pytest.approx(0.7363, abs=5e-5)
    logits = torch.log(p / (1 - p))
    assert build("bce")(logits, y).item() == pytest.approx(0.7363, abs=5e-5)


def test_bce_focal_reference():
    logits = torch.tensor(PROBS)
    y = torch.tensor([[0.0, 1, 1], [1, 0, 1]])
    loss_fn = build("bce_focal")
    assert (loss_fn.gamma, loss_fn.alpha) == (2.0, 0.25)
    assert loss_fn(logits, y).item() == pytest.approx(0.0908, abs=5e-5)


def test_bce_focal_with_gamma_0_and_alpha_half_is_half_bce():
    logits, y = torch.randn(6, 3), (torch.rand(6, 3) > 0.5).float()
    got = losses.BCEFocalLoss(gamma=0.0, alpha=0.5)(logits, y)
    torch.testing.assert_close(got, 0.5 * F.binary_cross_entropy_with_logits(logits, y))


def test_mse_corr_reference():
    pred = torch.tensor([0.1, 0.2, 0.2, 0.8, 0.4]).view(5, 1)
    target = torch.tensor([0.0, 1, 0, 0, 1]).view(5, 1)
    loss_fn = build("mse_corr")
    assert loss_fn.p == 1.5
    assert loss_fn(pred, target).item() == pytest.approx(1.9949, abs=5e-5)


def test_mse_corr_averages_the_correlation_over_target_columns():
    x, y = torch.randn(16, 3), torch.randn(16, 3)
    loss_fn = losses.MSECorrLoss(p=1.5)
    per_column = [loss_fn(x[:, [j]], y[:, [j]]) - F.mse_loss(x[:, j], y[:, j]) for j in range(3)]
    torch.testing.assert_close(loss_fn(x, y), F.mse_loss(x, y) + torch.stack(per_column).mean())


def test_mse_corr_is_finite_on_constant_columns():
    x = torch.zeros(4, 2, requires_grad=True)
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    loss = losses.MSECorrLoss()(x, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    one = torch.zeros(1, 1, requires_grad=True)  # a last batch of one row
    assert torch.isfinite(losses.MSECorrLoss()(one, torch.ones(1, 1)))


def test_smoothed_targets_reference():
    got = losses.smooth_targets(torch.tensor([0]), 3, 0.1, "uniform")
    torch.testing.assert_close(got, torch.tensor([[0.9333, 0.0333, 0.0333]]), atol=5e-5, rtol=0)
    others = losses.smooth_targets(torch.tensor([0]), 3, 0.1, "others")
    torch.testing.assert_close(others, torch.tensor([[0.9, 0.05, 0.05]]))


LS_LOGITS = torch.tensor([[6.0, 2, 1], [9, 8, 7], [2, 6, 1]])
LS_TARGET = torch.tensor([0, 2, 1])


@pytest.mark.parametrize("convention, expected", [("uniform", 0.9857), ("others", 1.0690)])
def test_label_smoothing_reference(convention, expected):
    loss_fn = build("label_smoothing", convention=convention)
    assert loss_fn.epsilon == 0.1
    got = loss_fn(LS_LOGITS, LS_TARGET)
    assert got.item() == pytest.approx(expected, abs=5e-5)
    # the same as cross-entropy against the smoothed distribution
    q = losses.smooth_targets(LS_TARGET, 3, 0.1, convention)
    torch.testing.assert_close(got, -(q * F.log_softmax(LS_LOGITS, -1)).sum(-1).mean())


def test_label_smoothing_uniform_is_pytorchs():
    logits, y = torch.randn(10, 5), torch.randint(0, 5, (10,))
    got = losses.LabelSmoothingLoss(epsilon=0.2)(logits, y)
    torch.testing.assert_close(got, F.cross_entropy(logits, y, label_smoothing=0.2))


def test_label_smoothing_rejects_bad_options():
    with pytest.raises(TextclfError, match="convention"):
        losses.LabelSmoothingLoss(convention="ε/K")
    with pytest.raises(TextclfError, match="epsilon"):
        losses.LabelSmoothingLoss(epsilon=1.5)
    with pytest.raises(TextclfError, match="epsilon"):  # ε/(K−1) > 1 − ε: the true class would lose
        losses.LabelSmoothingLoss(epsilon=0.7, convention="others")(torch.randn(2, 2), torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- focal and dice
@pytest.mark.parametrize("alpha", [None, [1.0, 1.0, 1.0, 1.0]])
def test_focal_with_gamma_0_and_alpha_1_is_cross_entropy(alpha):
    logits, y = 4 * torch.randn(12, 4), torch.randint(0, 4, (12,))
    got = losses.FocalLoss(gamma=0.0, alpha=alpha)(logits, y)
    # float32: the two sum the same terms in another order, so they agree to a few ulps of the loss (up to ~10 here)
    torch.testing.assert_close(got, F.cross_entropy(logits, y), rtol=1e-6, atol=1e-6)


def test_focal_matches_its_formula():
    logits, y = 3 * torch.randn(12, 3), torch.randint(0, 3, (12,))
    alpha = [0.25, 0.5, 0.75]
    logp_y = F.log_softmax(logits, -1).gather(1, y[:, None]).squeeze(1)
    expected = (-torch.tensor(alpha)[y] * (1 - logp_y.exp()) ** 2 * logp_y).mean()
    torch.testing.assert_close(losses.FocalLoss(gamma=2.0, alpha=alpha)(logits, y), expected)


def test_focal_down_weights_easy_examples():
    easy, y = torch.tensor([[4.0, 0.0]]), torch.tensor([0])
    assert losses.FocalLoss(gamma=2.0)(easy, y) < 0.01 * F.cross_entropy(easy, y)


def test_focal_alpha_of_the_wrong_length_is_a_clear_error():
    with pytest.raises(TextclfError, match="alpha"):
        losses.FocalLoss(alpha=[0.5, 0.5])(torch.randn(2, 3), torch.tensor([0, 1]))


@pytest.mark.parametrize("scale", [50.0, 1e4])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradients_are_finite_at_p_0_and_1(scale, gamma):
    # row 0: p_y -> 1, row 1: p_y -> 0, in float32
    logits = torch.tensor([[scale, -scale, 0.0], [scale, -scale, 0.0]], requires_grad=True)
    loss = losses.FocalLoss(gamma=gamma)(logits, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad[1].abs().sum() > 0  # the wrong row still learns


@pytest.mark.parametrize("scale", [50.0, 1e4])
def test_bce_focal_gradients_are_finite_at_p_0_and_1(scale):
    logits = torch.tensor([[scale, -scale], [scale, -scale]], requires_grad=True)
    loss = losses.BCEFocalLoss(gamma=0.5)(logits, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("scale", [50.0, 1e4])
@pytest.mark.parametrize("multilabel", [False, True])
def test_dice_gradients_are_finite_at_p_0_and_1(scale, multilabel):
    logits = torch.tensor([[scale, -scale], [-scale, scale], [scale, -scale]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]) if multilabel else torch.tensor([0, 0, 1])
    loss = losses.DiceLoss()(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_dice_matches_its_formula_and_rewards_a_perfect_model():
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    p, onehot = logits.softmax(-1), F.one_hot(y, 3).float()
    per_class = (2 * (p * onehot).sum(0) + 1) / (p.sum(0) + onehot.sum(0) + 1)
    torch.testing.assert_close(losses.DiceLoss(smooth=1.0)(logits, y), 1 - per_class.mean())
    perfect = 100 * onehot
    assert losses.DiceLoss(smooth=1.0)(perfect, y).item() == pytest.approx(0.0, abs=1e-6)
    ml = 100 * onehot - 50  # multilabel: the same labels as multi-hot rows
    assert losses.DiceLoss(smooth=1.0)(ml, onehot).item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- class weights
W = [1.0, 3.0, 0.5]


@pytest.mark.parametrize("option, extra", [("ce", {}), ("focal", {"gamma": 0.0})])
def test_class_weights_match_pytorch_weighted_cross_entropy(option, extra):
    logits, y = 2 * torch.randn(20, 3), torch.randint(0, 3, (20,))
    got = build(option, class_weights=W, **extra)(logits, y)
    torch.testing.assert_close(got, F.cross_entropy(logits, y, weight=torch.tensor(W)))
    assert not torch.allclose(got, build(option, **extra)(logits, y))


def test_label_smoothing_class_weights_match_pytorch():
    logits, y = 2 * torch.randn(20, 3), torch.randint(0, 3, (20,))
    got = build("label_smoothing", class_weights=W)(logits, y)
    torch.testing.assert_close(got, F.cross_entropy(logits, y, weight=torch.tensor(W), label_smoothing=0.1))


@pytest.mark.parametrize("option", ["ce", "focal"])
def test_a_class_weight_scales_its_rows_contribution(option):
    logits, y = 2 * torch.randn(9, 3), torch.tensor([0, 1, 2] * 3)
    plain = build(option)
    rows = torch.stack([plain(logits[[i]], y[[i]]) for i in range(9)])
    weighted = build(option, class_weights=W)(logits, y)
    w = torch.tensor(W)[y]
    torch.testing.assert_close(weighted, (w * rows).sum() / w.sum())
    only_class_1 = build(option, class_weights=[0.0, 1.0, 0.0])(logits, y)
    torch.testing.assert_close(only_class_1, rows[y == 1].mean())


def test_bce_class_weights_scale_rows_of_each_class():
    logits, y = torch.randn(10, 1), torch.tensor([0, 1] * 5)
    got = build("bce", class_weights=[1.0, 3.0])(logits, y)
    expected = F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), weight=torch.tensor([1.0, 3.0])[y])
    torch.testing.assert_close(got, expected)


def test_class_weights_from_a_config_list_and_follow_the_module_device():
    loss_fn = build("focal", class_weights=OmegaConf.create([1.0, 2.0]), alpha=OmegaConf.create([0.5, 0.5]))
    assert loss_fn.weight.tolist() == [1.0, 2.0] and loss_fn.alpha.tolist() == [0.5, 0.5]
    assert {name for name, _ in loss_fn.named_buffers()} == {"weight", "alpha"}  # moved by .to(device)
