"""Which option of a config group a component came from (loss=focal, pooling=attention), worked out in one place.

Hydra records the option it composed for each group (hydra.runtime.choices): in the running job, in a config
composed with its hydra node (a sweeper's), and in a finished run folder (textclf.run.folder.read_choices reads
it there). That record is the
answer, as long as the node in the config is what the option builds. It is not when textclf replaced the node
(loss=auto made concrete for the task) or the user set the node's _target_ directly; and a run folder written with
hydra.output_subdir=null has no record. Then the answer is the shipped option whose YAML builds the node's
_target_, else the target's class name.
"""
from __future__ import annotations

from importlib.resources import files

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf


_OF_CFG = object()  # chosen's default: the record that comes with cfg (its hydra node, or the running job's)


def chosen(group: str, cfg: DictConfig | None = None, *, choices=_OF_CFG) -> str | None:
    """The option of `group` as the user types it (the `focal` of loss=focal); None when the group has none.

    cfg: the composed config the node comes from (with its hydra node, or the running Hydra job's); choices: a
    finished run's record instead (textclf.run.folder.read_choices; None where the run kept none)."""
    if choices is _OF_CFG:
        choices = _record_of(cfg)
    target = _target(cfg, group)
    option = choices.get(group) if choices is not None else None
    if option is not None and (target is None or _builds(group, str(option), target) is not False):
        return str(option)
    if target is None:
        return None if option is None else str(option)
    return _option_building(group, target)


def _record_of(cfg: DictConfig | None):
    if cfg is not None and "hydra" in cfg:
        return OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    return HydraConfig.get().runtime.choices if HydraConfig.initialized() else None


def _target(cfg: DictConfig | None, group: str) -> str | None:
    node = OmegaConf.select(cfg, group, default=None) if cfg is not None else None
    return str(node["_target_"]) if isinstance(node, DictConfig) and node.get("_target_") else None


def _shipped_options(group: str) -> list:
    folder = files("textclf.conf").joinpath(group)
    return sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name) \
        if folder.is_dir() else []


def _builds(group: str, option: str, target: str) -> bool | None:
    """Whether the shipped option's YAML builds `target` (`none` builds nothing); None: it cannot say (not a shipped
    option, as a --config-dir one is, or one whose _target_ comes from its defaults list)."""
    for path in _shipped_options(group):
        if path.name == f"{option}.yaml":
            node = _load(path)
            return None if "defaults" in node else node.get("_target_") == target
    return None


def _option_building(group: str, target: str) -> str:
    """The shipped option whose YAML builds `target`, else the class name."""
    for path in _shipped_options(group):
        if _load(path).get("_target_") == target:
            return path.name[: -len(".yaml")]
    return target.rsplit(".", 1)[-1]


def _load(path) -> DictConfig:
    node = OmegaConf.create(path.read_text(encoding="utf-8"))  # an empty file (`none`) is an empty node
    return node if isinstance(node, DictConfig) else OmegaConf.create({})
