"""Compose the shipped config with every option of every group, validate it, and build what it names."""
from __future__ import annotations

from importlib import resources

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from textclf.config.schema import validate
from textclf.errors import TextclfError

CONF = resources.files("textclf.conf")
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("__"))
OPTIONS = [(g, f.name[:-5]) for g in GROUPS for f in sorted(CONF.joinpath(g).iterdir(), key=lambda f: f.name)
           if f.name.endswith(".yaml")]
NEEDS = {("data", "csv"): ["data.train_file=train.csv"], ("augment", "mlm"): ["augment.mlm_model=models/mlm"]}


def compose_train(overrides=()):
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_the_shipped_groups_are_found():
    # guards the enumeration below: if it found nothing, every parametrised test would silently vanish
    assert {"data", "model", "pooling", "head", "loss", "optimizer", "scheduler", "kfold"} <= set(GROUPS)
    assert ("pooling", "mean") in OPTIONS and ("pooling", "cls") in OPTIONS and ("data", "csv") in OPTIONS


def test_default_config_validates():
    cfg = compose_train()
    validate(cfg)
    assert "hydra" not in cfg


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group, option):
    cfg = compose_train([f"{group}={option}", *NEEDS.get((group, option), [])])
    validate(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def build(group, node):
    """Instantiate a group node with the arguments textclf passes at run time."""
    if group == "pooling":
        return instantiate(node, hidden_size=32, summary_last=False, num_hidden_layers=4)
    if group == "head":
        return instantiate(node, in_features=32, num_labels=3)
    if group == "optimizer":
        from transformers import BertConfig, BertModel

        from textclf.models.classifier import TextClassifier
        from textclf.models.heads import ClassificationHead
        from textclf.models.pooling import MeanPooling

        backbone = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64))
        return instantiate(node)(TextClassifier(backbone, MeanPooling(32), ClassificationHead(32, 3)))
    if group == "loss" and node._target_ == "textclf.models.losses.auto":
        from textclf.models.losses import default_loss_for

        return [instantiate(default_loss_for(task)) for task in ("binary", "multiclass", "multilabel", "regression")]
    if group == "scheduler":
        return instantiate(node)(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), total_steps=10)
    return instantiate(node)


BUILT = [(g, o) for g, o in OPTIONS if g in ("pooling", "head", "loss", "optimizer", "scheduler", "kfold")]


@pytest.mark.parametrize("group, option", BUILT, ids=[f"{g}={o}" for g, o in BUILT])
def test_every_option_builds(group, option):
    cfg = compose_train([f"{group}={option}"])
    obj = build(group, cfg[group])
    assert obj is not None
    if group == "pooling":
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        states = tuple(torch.randn(2, 4, 32) for _ in range(5))  # embeddings + 4 layers
        outputs = BaseModelOutputWithPooling(last_hidden_state=states[-1], pooler_output=torch.randn(2, 32),
                                             hidden_states=states)
        out = obj(states[-1], torch.ones(2, 4, dtype=torch.long), outputs)
        assert out.shape == (2, obj.output_dim)
    if group == "kfold":
        import numpy as np

        y = np.repeat([0, 1, 2], 10)
        folds = obj.split(y, len(y), groups=np.arange(len(y)) // 3)  # the others ignore groups
        valid = np.concatenate([f.valid_rows for f in folds])
        assert len(np.unique(valid)) == len(valid)  # no row validated twice


def test_validate_reports_every_problem_at_once():
    cfg = compose_train(["+trainer.foo=1", "+trainer.bar=2", "trainer.precision=fp64", "model.max_length=2",
                         "task=regresion"])
    with pytest.raises(TextclfError) as info:
        validate(cfg)
    message = str(info.value)
    for name in ("trainer.foo", "trainer.bar", "trainer.precision", "model.max_length", "task"):
        assert name in message, message


def test_unknown_key_inside_a_group_node_is_named():
    cfg = compose_train(["loss=ce", "+loss.gamma=2"])
    with pytest.raises(TextclfError, match=r"loss\.gamma"):
        validate(cfg)


@pytest.mark.parametrize("override, key", [
    ("+pooling.dim=3", "pooling.dim"),
    ("+head.hidden=64", "head.hidden"),
    ("+optimizer.momentumm=0.9", "optimizer.momentumm"),
    ("+scheduler.warmup=3", "scheduler.warmup"),
    ("+kfold.n_split=3", "kfold.n_split"),
    ("+data.text_column=review", "data.text_column"),
    ("+model.max_len=64", "model.max_len"),
    ("+trainer.epoch=3", "trainer.epoch"),
    ("+trainr.epochs=3", "trainr"),
])
def test_typo_keys_are_named(override, key):
    cfg = compose_train([override])
    with pytest.raises(TextclfError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_runtime_arguments_cannot_be_set_from_the_config():
    # hidden_size is passed by textclf at build time; a YAML value would be silently overridden
    cfg = compose_train(["+pooling.hidden_size=3"])
    with pytest.raises(TextclfError, match=r"pooling\.hidden_size"):
        validate(cfg)


@pytest.mark.parametrize("override, key", [
    ("trainer.device=gpu", "trainer.device"),
    ("trainer.monitor=acc", "trainer.monitor"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.early_stopping_patience=0", "trainer.early_stopping_patience"),
    ("trainer.max_grad_norm=-1", "trainer.max_grad_norm"),
    ("model.truncation=middle", "model.truncation"),
    ("data.encoding_errors=ignore", "data.encoding_errors"),
    ("data.text_col=''", "data.text_col"),
])
def test_bad_values_are_named(override, key):
    cfg = compose_train([override])
    with pytest.raises(TextclfError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_csv_data_needs_a_train_file():
    cfg = compose_train(["data=csv"])
    with pytest.raises(TextclfError, match=r"data\.train_file"):
        validate(cfg)


def test_hydra_rejects_unknown_options_and_keys_at_compose_time():
    with pytest.raises(ConfigCompositionException):
        compose_train(["pooling=nope"])
    with pytest.raises(ConfigCompositionException):
        compose_train(["trainer.epochz=1"])


@pytest.mark.parametrize("value", ["cuda", "cuda:1", "cpu", "auto"])
def test_valid_devices_pass(value):
    validate(compose_train([f"trainer.device={value}"]))


def test_task_and_training_switches_are_checked_before_anything_loads():
    cfg = compose_train(["threshold=1.5", "data.label_sep=''", "trainer.compile=maybe", "tune_threshold=3",
                         "model.freeze_embeddings=2", "trainer.monitor=bleu"])
    with pytest.raises(TextclfError) as info:
        validate(cfg)
    message = str(info.value)
    for name in ("threshold: must be a number between 0 and 1", "data.label_sep", "trainer.compile",
                 "tune_threshold", "model.freeze_embeddings", "trainer.monitor"):
        assert name in message, message


def test_preset_competition_sets_its_combination_and_every_part_can_be_overridden():
    cfg = compose_train(["preset=competition"])
    validate(cfg)
    assert cfg.optimizer.layer_decay == 0.9 and cfg.optimizer.head_lr == 1e-3
    assert cfg.augment._target_.endswith("EDA") and cfg.adversarial._target_.endswith("FGM")
    assert cfg.rdrop._target_.endswith("RDrop") and not cfg.get("ema")  # EMA left out after the ablation
    assert (cfg.trainer.epochs, cfg.trainer.evals_per_epoch) == (3, 3)
    mine = compose_train(["preset=competition", "adversarial=none", "trainer.epochs=2", "optimizer.layer_decay=0.8",
                          "ema=default", "rdrop=none"])
    assert not mine.get("adversarial") and mine.trainer.epochs == 2 and mine.optimizer.layer_decay == 0.8
    assert not mine.get("rdrop")
    assert mine.ema._target_.endswith("EMA")
    assert mine.augment._target_.endswith("EDA")  # the rest of the preset stays


def test_preset_fast_is_one_short_epoch_without_tricks():
    cfg = compose_train(["preset=fast", "ema=default"])
    validate(cfg)
    assert (cfg.trainer.epochs, cfg.model.max_length, cfg.plots) == (1, 64, False)
    assert not cfg.get("adversarial") and not cfg.get("rdrop")
    assert cfg.ema._target_.endswith("EMA")  # an explicit choice wins over the preset's
