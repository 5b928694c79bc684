"""The config textclf ships: conf/ composed with no overrides.

The YAML under conf/ is the one place a default is written; the schema (textclf.config.schema) holds types, ranges
and choices only. This reads the YAML's values where no composed config is at hand: the message for a key that a
config lacks ("missing (the default is 2)"), and the test that keeps the schema and the YAML in step.
"""
from __future__ import annotations

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

CONFIG_MODULE = "textclf.conf"


def shipped_config(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """conf/<config_name>.yaml composed as textclf ships it (the hydra node left out). It may run inside a Hydra
    app (validate does): the running app's Hydra instance is put back afterwards."""
    instance = GlobalHydra.instance()
    before = instance.hydra if instance.is_initialized() else None
    instance.clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides or ()))
    finally:
        instance.clear()
        if before is not None:
            instance.initialize(before)
