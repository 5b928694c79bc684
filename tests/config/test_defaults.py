"""Every default is written once, in the YAML under conf/: the schema holds types, ranges and choices only, and every
key it declares is in the config textclf composes, so code reads cfg.trainer.epochs and never supplies a default of
its own. These fail when the schema and the YAML drift apart."""
from __future__ import annotations

import dataclasses
import typing
from importlib.resources import files

import pytest
from omegaconf import DictConfig, open_dict

import textclf.cli  # noqa: F401  (registers the textclf_* resolvers the presets use)
from textclf.config.schema import SCHEMAS, ExportConfig, PredictConfig, TrainConfig, problems
from textclf.config.shipped import shipped_config

SCHEMA_CLASSES = sorted({cls for root, _ in SCHEMAS.values() for cls in (root, *(
    tp for tp in typing.get_type_hints(root).values() if dataclasses.is_dataclass(tp)))}, key=lambda c: c.__name__)


def options(group: str) -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in files("textclf.conf").joinpath(group).iterdir()
                  if p.name.endswith(".yaml"))


def declared(schema: type) -> set[str]:
    return {f.name for f in dataclasses.fields(schema)}


@pytest.mark.parametrize("schema", SCHEMA_CLASSES, ids=lambda c: c.__name__)
def test_the_schema_holds_no_default_values(schema):
    with_defaults = [f.name for f in dataclasses.fields(schema)
                     if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert with_defaults == [], f"{schema.__name__}: defaults belong in conf/, not the schema: {with_defaults}"


@pytest.mark.parametrize("name, schema", [("train", TrainConfig), ("predict", PredictConfig),
                                          ("export", ExportConfig)])
def test_every_key_the_schema_declares_is_in_the_shipped_yaml_and_no_other(name, schema):
    cfg = shipped_config(name)
    assert set(cfg.keys()) == declared(schema)
    if schema is TrainConfig:
        hints = typing.get_type_hints(TrainConfig)
        for node in ("data", "model", "trainer"):
            assert set(cfg[node].keys()) == declared(hints[node]), node


@pytest.mark.parametrize("group, option", [("data", o) for o in options("data")] +
                         [("model", o) for o in options("model")])
def test_every_option_of_a_fixed_key_group_has_every_key(group, option):
    cfg = shipped_config("train", [f"{group}={option}"])
    assert set(cfg[group].keys()) == declared(typing.get_type_hints(TrainConfig)[group])


@pytest.mark.parametrize("group, keys", [("head", {"prior_bias"}), ("kfold", {"folds", "seed"}),
                                         ("augment", {"seed"})])
def test_keys_the_run_reads_from_a_target_group_are_in_each_of_its_options(group, keys):
    for option in options(group):
        node = shipped_config("train", [f"{group}={option}"])[group]
        if isinstance(node, DictConfig) and node.get("_target_"):  # `none` builds nothing and is never read
            assert keys <= set(node.keys()), f"{group}={option} lacks {keys - set(node.keys())}"


def test_a_key_a_config_lacks_is_named_with_the_yaml_default():
    cfg = shipped_config("train")
    with open_dict(cfg):
        del cfg.trainer["epochs"]
        del cfg.data["encoding"]
    found = dict(problems(cfg, TrainConfig))
    assert found["trainer.epochs"] == "missing (the default is 2)"
    assert found["data.encoding"] == "missing (the default is 'utf-8')"
