"""Which option of a config group a component came from (loss=focal, pooling=attention), worked out in one place.

Hydra records the option it composed for each group (hydra.runtime.choices): in the running job, in a config
composed with its hydra node (a sweeper's), and in a finished run folder's .hydra/hydra.yaml. That record is the
answer, as long as the node in the config is what the option builds. It is not when textclf replaced the node
(loss=auto made concrete for the task) or the user set the node's _target_ directly; and a run folder written with
hydra.output_subdir=null has no record. Then the answer is the shipped option whose YAML builds the node's
_target_, else the target's class name.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

#: where Hydra keeps a run's composition record, relative to the run folder (hydra.output_subdir)
HYDRA_RECORD = Path(".hydra") / "hydra.yaml"
RUN_CONFIG = "config.yaml"  # the run's resolved config (textclf.run.folder.CONFIG; the config layer sits below run)


def chosen(group: str, cfg: DictConfig | None = None, *, run_dir: Path | None = None) -> str | None:
    """The option of `group` as the user types it (the `focal` of loss=focal); None when the group has none.

    cfg: the composed config the node comes from (with its hydra node, or the running Hydra job's); run_dir: a
    finished run folder instead, read from its .hydra/hydra.yaml and config.yaml."""
    if run_dir is not None:
        choices = _recorded_choices(Path(run_dir))
        cfg = OmegaConf.load(Path(run_dir) / RUN_CONFIG) if (Path(run_dir) / RUN_CONFIG).is_file() else None
    elif cfg is not None and "hydra" in cfg:
        choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    else:
        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else None
    target = _target(cfg, group)
    option = choices.get(group) if choices is not None else None
    if option is not None and (target is None or _builds(group, str(option), target) is not False):
        return str(option)
    if target is None:
        return None if option is None else str(option)
    return _option_building(group, target)


def _recorded_choices(run_dir: Path) -> DictConfig | None:
    record = run_dir / HYDRA_RECORD
    if not record.is_file():
        return None  # hydra.output_subdir=null: no record
    return OmegaConf.select(OmegaConf.load(record), "hydra.runtime.choices", default=None)


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
