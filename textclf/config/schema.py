"""The config schema, and the checks built on it: every problem reported at once, before anything heavy loads.

The schema is one dataclass per node with fixed keys (the top level, `data`, `model`, `trainer`; the predict
options): each field is a key, its annotation the type, and `key(...)` adds the allowed range or choices. The schema
holds no values: every default lives once, in the YAML under conf/ (tests/config/test_defaults.py keeps the two in
step). The `_target_` groups (loss, optimizer, ...) and each named logger have keys that depend on the
chosen option: those are checked against the signature of what the option builds, its annotations (or defaults)
giving the types.

- validate(cfg), validate_predict(cfg), validate_export(cfg): check a composed config, once per composition
  (textclf.config.check says where each command makes that one call).
- check_command_line(...): compose the config as a command would (through Hydra's compose API), and turn Hydra's
  composition errors (an unknown option, key or group; an override that does not parse) into the same kind of
  message, with the nearest valid name, followed by what validate finds. The CLI calls it only when Hydra has
  refused to compose a command line, and before a sweep starts (textclf.cli).

This module imports nothing heavy at the top (Hydra and OmegaConf only): a config is checked before torch loads. The
named choices come from textclf.config.choices (plain values); the `_target_` classes are imported when a config is
checked, for their signatures.
"""
from __future__ import annotations

import codecs
import dataclasses
import difflib
import importlib
import inspect
import math
import os
import re
import types
import typing
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from textclf.config.choices import AGGREGATES, CALIBRATIONS, METRICS, TRUNCATIONS
from textclf.config.durations import is_duration
from textclf.config.shipped import shipped_config
from textclf.errors import TextclfError

TASKS = ("auto", "binary", "multiclass", "multilabel", "regression")
PRECISIONS = ("fp32", "fp16", "bf16")
#: keys of a `_target_` node that hydra.utils.instantiate reads itself
INSTANTIATE_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
PREDICT_USAGE = "textclf predict run_dir=<run folder> input=<table> output=<csv>"
EXPORT_USAGE = "textclf export run_dir=<run folder> [quantize=int8] [output=<folder>]"

Problem = tuple[str, str]  # (the key at fault, what is wrong with it)


# ----------------------------------------------------------------------------- the words of the schema
@dataclass(frozen=True)
class Range:
    """Numbers from low to high; an open end leaves the bound itself out."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, x) -> bool:
        if math.isnan(x):
            return False
        if self.low is not None and (x < self.low or (self.open_low and x == self.low)):
            return False
        return self.high is None or (x < self.high or (not self.open_high and x == self.high))

    def __str__(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            if self.open_low and self.open_high:
                return f"between {lo} and {hi}"
            if not (self.open_low or self.open_high):
                return f"from {lo} to {hi}"
            return f"in {'(' if self.open_low else '['}{lo}, {hi}{')' if self.open_high else ']'}"
        if lo is not None:
            return f"{'>' if self.open_low else '>='} {lo}"
        return f"{'<' if self.open_high else '<='} {hi}"


@dataclass(frozen=True)
class Choice:
    """One of `values` (the lists that other modules act on are in textclf.config.choices)."""

    values: tuple = ()

    def options(self) -> tuple:
        return self.values


@dataclass(frozen=True)
class Check:
    """A rule that is neither a range nor a choice: `test(value)` says whether the value is good."""

    test: Callable[[Any], bool]
    expect: str  # what a good value looks like, for the message


@dataclass(frozen=True)
class Target:
    """A group whose keys are the parameters of its option's `_target_`."""

    runtime: tuple[str, ...] = ()  # parameters textclf passes when it builds the object: never from the config
    optional: bool = False  # the `none` option is an empty mapping (or nothing) that builds nothing
    named: bool = False  # a mapping of named nodes, each its own _target_ (logger.csv, logger.tensorboard)


def key(*rules: Range | Choice | Check, hint: str = "", nonempty: str = "") -> Any:
    """A schema field: `rules` narrow the annotated type; `hint` is added to its messages; `nonempty` is the
    message for an empty value (None, "" or []). No default: the YAML under conf/ holds every default, once."""
    return field(metadata={"rules": rules, "hint": hint, "nonempty": nonempty})


def group(*runtime: str, optional: bool = False, named: bool = False) -> Any:
    """A schema field for a `_target_` group; its keys come from the chosen option (see Target)."""
    return field(metadata={"target": Target(runtime, optional, named)})


def node(hint: str = "") -> Any:
    """A schema field holding a nested node with fixed keys (the annotation names its schema)."""
    return field(metadata={"hint": hint})


def _is_device(value) -> bool:
    return isinstance(value, str) and (value in ("auto", "cpu", "cuda")
                                       or (value.startswith("cuda:") and value[5:].isdigit()))


def _is_batch_limit(value) -> bool:
    """null (all), a fraction in (0, 1], or a whole number of batches >= 1."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 1
    return isinstance(value, float) and 0 < value <= 1


def _is_codec(value) -> bool:
    try:
        codecs.lookup(value)
        return True
    except (LookupError, TypeError):
        return False


def _is_duration(value) -> bool:
    return value is None or is_duration(value)


DEVICE = Check(_is_device, "auto, cpu, cuda or cuda:N")
DEVICES = Check(lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                "a number of processes >= 1, or auto (one per visible GPU)")
BATCH_LIMIT = Check(_is_batch_limit, "null, a fraction in (0, 1] or a number of batches >= 1")


# ----------------------------------------------------------------------------- the schema
@dataclass
class DataConfig:
    """The keys of every data option (data=demo | csv, conf/data/)."""

    train_file: str = key(hint="e.g. data.train_file=train.csv",
                          nonempty="required (e.g. data.train_file=train.csv)")
    valid_file: Optional[str]
    test_file: Optional[str]
    unlabeled_file: Optional[str]
    text_col: str = key(nonempty="must name a column")
    text_pair_col: Optional[str]
    label_col: Union[str, list[str]] = key(nonempty="must name a column")  # a list: several targets
    label_sep: str = key(nonempty="must be a non-empty separator (multilabel cells are split on it)")
    group_col: Optional[str]
    exclude_rows: Optional[str] = key(hint="a CSV with a `row` column (a run's label issues table) or a text file "
                                      "of one row number per line; null: none")
    encoding: str = key(Check(_is_codec, "a text encoding Python knows (utf-8, latin-1, cp1252...)"))
    encoding_errors: str = key(Choice(("strict", "replace")))


@dataclass
class ModelConfig:
    """The keys of every model option (model=minilm | bert | ..., conf/model/)."""

    name_or_path: str = key(hint="a folder, a hub id, or embedded:minilm",
                            nonempty="required (a folder, a hub id, or embedded:minilm)")
    max_length: int = key(Range(8))
    truncation: str = key(Choice(TRUNCATIONS))
    head_fraction: float = key(Range(0, 1),
                               hint="the share of the tokens kept from the start with truncation=head_tail")
    window_stride: Optional[int] = key(Range(1))
    max_windows: Optional[int] = key(Range(1))
    window_aggregate: str = key(Choice(AGGREGATES))
    trust_remote_code: bool
    gradient_checkpointing: bool
    freeze_embeddings: bool
    freeze_layers: int = key(Range(0))
    reinit_layers: int = key(Range(0))
    hidden_dropout: Optional[float] = key(Range(0, 1, open_high=True))
    attention_dropout: Optional[float] = key(Range(0, 1, open_high=True))
    init_from: Optional[str] = key(hint="a run folder (its fold_0), a fold folder, or a .safetensors/.bin/.pt "
                                   "file; null: the backbone's own weights only")


@dataclass
class TrainerConfig:
    """The `trainer` node of conf/train.yaml."""

    epochs: int = key(Range(1))
    batch_size: Union[int, str] = key(Check(
        lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
        "auto or an integer >= 1"))
    eval_batch_size: int = key(Range(1))
    grad_accum_steps: int = key(Range(1))
    max_grad_norm: Optional[float] = key(Range(0, open_low=True))
    device: str = key(DEVICE)
    precision: str = key(Choice(PRECISIONS))
    seed: int = key(Range(0))
    deterministic: bool
    monitor: str = key(Choice(("auto", *METRICS)))
    early_stopping_patience: Optional[int] = key(Range(1))
    length_window: int = key(Range(1))
    num_workers: int = key(Range(0))
    compile: bool
    log_every_steps: int = key(Range(0))
    eval_every_steps: Optional[int] = key(Range(1))
    evals_per_epoch: Optional[int] = key(Range(1), hint="evaluations per epoch (eval_every_steps wins)")
    sampler: str = key(Choice(("random", "balanced")))
    limit_train_batches: Optional[Union[int, float]] = key(BATCH_LIMIT)
    limit_eval_batches: Optional[Union[int, float]] = key(BATCH_LIMIT)
    checkpoint_every_steps: int = key(Range(0))
    devices: Union[int, str] = key(DEVICES)
    average: str = key(Choice(("none", "last", "top")))
    average_start: float = key(Range(0, 1, open_high=True))
    average_top_k: int = key(Range(1))
    average_soup: str = key(Choice(("greedy", "uniform")))
    time_limit: Optional[Union[str, int, float]] = key(Check(
        lambda v: _is_duration(v), "null, a duration such as 20m, 1h30m or 90s, or a number of seconds > 0"))


@dataclass
class TrainConfig:
    """conf/train.yaml, composed (train, info and validate read it)."""

    data: DataConfig = node("no option selected: data=demo or data=csv")
    model: ModelConfig = node("no option selected: model=minilm, model=bert, ...")
    pooling: Any = group("hidden_size", "summary_last", "num_hidden_layers")
    head: Any = group("in_features", "num_labels")
    loss: Any = group()
    optimizer: Any = group("model")
    scheduler: Any = group("optimizer", "total_steps")
    kfold: Any = group()
    adversarial: Any = group(optional=True)
    ema: Any = group(optional=True)
    rdrop: Any = group("task", "single_logit", optional=True)
    augment: Any = group(optional=True)
    pseudo_label: Any = group(optional=True)
    distill: Any = group(optional=True)
    logger: Any = group(optional=True, named=True)
    task: str = key(Choice(TASKS))
    threshold: float = key(Range(0, 1, open_low=True, open_high=True))
    tune_threshold: Union[bool, str] = key(Check(lambda v: v in (True, False, "auto"),
                                           "true, false or auto (true for multilabel tasks)"))
    calibrate: str = key(Choice(CALIBRATIONS),
                         hint="temperature: logits scaled to calibrated probabilities; not for regression")
    positive_label: Optional[Union[str, int]] = key(hint="binary: the class F1 is about, as it appears in "
                                                    "the data; null: the second class in sorted order")
    resume: bool = key(hint="resume=<run folder> also works on the command line")
    overwrite: bool = key(hint="replace the run a folder holds (only files textclf wrote are removed)")
    plots: bool
    trainer: TrainerConfig = node()


@dataclass
class PredictConfig:
    """conf/predict.yaml."""

    run_dir: str = key(hint=PREDICT_USAGE, nonempty=f"required ({PREDICT_USAGE})")
    input: str = key(hint=PREDICT_USAGE, nonempty=f"required ({PREDICT_USAGE})")
    output: str = key(hint=PREDICT_USAGE, nonempty=f"required ({PREDICT_USAGE})")
    text_col: Optional[str]  # null: the run's own column names
    text_pair_col: Optional[str]
    label_col: Optional[Union[str, list[str]]]
    batch_size: int = key(Range(1))
    device: str = key(DEVICE)
    precision: str = key(Choice(PRECISIONS))
    folds: Optional[list[int]] = key(hint="fold numbers like [0,2]")
    backend: str = key(Choice(("torch", "onnx")))
    export_dir: Optional[str] = key(hint="backend=onnx: the folder `textclf export` wrote (null: "
                                    "<run_dir>/export)")
    chunk_rows: int = key(Range(1), hint="rows read, predicted and written at a time")


@dataclass
class ExportConfig:
    """conf/export.yaml."""

    run_dir: str = key(hint=EXPORT_USAGE, nonempty=f"required ({EXPORT_USAGE})")
    format: str = key(Choice(("onnx",)))
    quantize: Optional[str] = key(Choice(("int8",)),
                                  hint="null: fp32 weights; int8: dynamic int8 quantization (ONNX Runtime)")
    optimize: bool = key(hint="true: fuse the graph with ONNX Runtime's transformer optimizer where it keeps "
                              "PyTorch's logits; false: standard ONNX ops only")
    output: Optional[str] = key(hint="the folder to write (null: <run_dir>/export)")
    folds: Optional[list[int]] = key(hint="fold numbers like [0,2]")
    opset: Optional[int] = key(Range(14), hint="ONNX opset (null: torch.onnx's default)")


SCHEMAS = {"train": (TrainConfig, "invalid configuration"), "predict": (PredictConfig, "invalid options"),
           "export": (ExportConfig, "invalid options")}


# ----------------------------------------------------------------------------- validate a composed config
def validate(cfg: DictConfig, *, lenient: bool = False) -> None:
    """Every problem of a composed train config in one TextclfError, or nothing. lenient: before Hydra's run has
    started (see problems)."""
    _raise("invalid configuration", problems(cfg, TrainConfig, lenient=lenient))


def validate_predict(cfg: DictConfig) -> None:
    """The same all-at-once check for `textclf predict` options."""
    _raise("invalid options", problems(cfg, PredictConfig))


def validate_export(cfg: DictConfig) -> None:
    """The same all-at-once check for `textclf export` options."""
    _raise("invalid options", problems(cfg, ExportConfig))


def problems(cfg: DictConfig, schema: type, *, lenient: bool = False) -> list[Problem]:
    """(key, problem) for everything in `cfg` that `schema` refuses. lenient: skip values that need Hydra's
    run-time state to resolve (${hydra:...}), as when a config is checked before Hydra's run has started."""
    found: list[Problem] = []
    _check_node(cfg, schema, "", found, lenient)
    found += _cross_key_problems(cfg, schema)
    return list(dict.fromkeys(found))


#: the column options of each schema, in order, and what the column holds (for the message)
COLUMN_ROLES = {"text_col": "texts", "text_pair_col": "second texts", "label_col": "labels", "group_col": "groups"}


def _cross_key_problems(cfg: DictConfig, schema: type) -> list[Problem]:
    """Problems of keys taken together: a column named by two roles."""
    node, prefix = (cfg.get("data"), "data.") if schema is TrainConfig else (cfg, "")
    if not isinstance(node, DictConfig):
        return []
    roles = []
    for name in COLUMN_ROLES:
        try:
            value = node.get(name)
        except OmegaConfBaseException:  # an interpolation only Hydra resolves: judged when it runs
            continue
        roles.append((f"{prefix}{name}", value))
    return column_clashes(roles)


def column_clashes(roles: Sequence[tuple[str, Any]]) -> list[Problem]:
    """(keys, problem) for each column that two column options name ('data.text_col=label' would train on the labels
    as text). roles: (key, column or list of columns or None); a key ending in a COLUMN_ROLES name says the role."""
    def role(key: str) -> str:
        return next((what for name, what in COLUMN_ROLES.items() if key.split(" ")[0].endswith(name)), "values")

    seen: dict[str, str] = {}
    found: list[Problem] = []
    for key, value in roles:
        columns = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
        for col in columns:
            if not isinstance(col, (str, int)) or isinstance(col, bool) or col == "":
                continue
            col = str(col)
            if col not in seen:
                seen[col] = key
            elif seen[col] == key:
                found.append((key, f"lists column {col!r} twice; name each column once"))
            else:
                other = seen[col]
                found.append((f"{other} and {key}", f"both name column {col!r}, but a column can have only one role: "
                                                    f"point {other} at the column that holds the {role(other)}, or "
                                                    f"{key} at the one that holds the {role(key)}"))
    return found


def _raise(heading: str, found: list[Problem]) -> None:
    if found:
        raise TextclfError(f"{heading}:\n" + "\n".join(f"  - {where}: {what}" for where, what in found))


def _check_node(cfg: DictConfig, schema: type, path: str, found: list[Problem], lenient: bool) -> None:
    fields = _fields(schema)
    for name in cfg.keys():
        if name not in fields:
            found.append(_unknown(path, name, fields))
    for name, (f, tp) in fields.items():
        label = _join(path, name)
        target = f.metadata.get("target")
        hint = f.metadata.get("hint", "")
        if OmegaConf.is_missing(cfg, name):
            found.append((label, f"required ({hint})" if hint else "required"))
            continue
        if name not in cfg:
            if not (target and target.optional):
                found.append((label, f"missing ({hint})" if hint else
                              f"missing (the default is {_shipped(label, schema)})"))
            continue
        ok, value = _get(cfg, name, label, found, lenient)
        if not ok:
            continue
        if target is not None:
            _check_group(label, value, target, found, lenient)
        elif dataclasses.is_dataclass(tp):
            if isinstance(value, DictConfig):
                _check_node(value, tp, label, found, lenient)
            else:
                found.append((label, f"must be a mapping of {', '.join(_fields(tp))}, got {_show(value)}"))
        else:
            try:
                problem = _value_problem(value, tp, f.metadata)
            except OmegaConfBaseException as e:  # an interpolation inside a list
                problem = f"cannot resolve its value ({_first_line(e)})"
            if problem:
                found.append((label, problem))


def _check_group(label: str, value: Any, target: Target, found: list[Problem], lenient: bool) -> None:
    if target.named:  # logger: {csv: {_target_: ...}, tensorboard: {...}}
        if value is None:
            return
        if not isinstance(value, DictConfig):
            found.append((label, f"must be a mapping of named {label} nodes (e.g. {label}=[csv]), got {_show(value)}"))
            return
        for name in value.keys():
            ok, item = _get(value, name, f"{label}.{name}", found, lenient)
            if ok and item is not None and not (isinstance(item, DictConfig) and len(item) == 0):
                if isinstance(item, DictConfig):
                    _check_target(f"{label}.{name}", item, target.runtime, found, lenient)
                else:
                    found.append((f"{label}.{name}", f"must be a mapping with a _target_, got {_show(item)}"))
        return
    if value is None or (isinstance(value, DictConfig) and len(value) == 0):
        if not target.optional:
            found.append((label, f"no option selected (e.g. {label}=<option>; textclf train --help lists them)"))
        return
    if not isinstance(value, DictConfig):
        found.append((label, f"must be an option of the {label} group (a mapping with a _target_), got {_show(value)}"))
        return
    _check_target(label, value, target.runtime, found, lenient)


def _check_target(label: str, cfg: DictConfig, runtime: tuple[str, ...], found: list[Problem], lenient: bool) -> None:
    """The keys of a `_target_` node against its target's signature: known, of the annotated type, complete."""
    target = cfg.get("_target_")
    if not target:
        found.append((label, "the option has no _target_"))
        return
    try:
        obj = _locate(str(target))
    except _MissingPackage:  # an optional package (tensorboard, mlflow) is not installed: the class says so
        return
    except LookupError as e:
        found.append((f"{label}._target_", f"cannot import {target!r} ({e})"))
        return
    params = _parameters(obj)
    if params is None:
        return
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = {n: p for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in runtime}
    for name in cfg.keys():
        where = f"{label}.{name}"
        if name in INSTANTIATE_KEYS:
            continue
        if name in runtime:
            found.append((where, f"set by textclf when it builds {target}; remove it"))
            continue
        if name not in accepted:
            if not takes_any:
                found.append(_unknown(label, name, accepted, target))
            continue
        if OmegaConf.is_missing(cfg, name):
            hint = getattr(obj, "required_hints", {}).get(name)  # what to give, where the target says
            found.append((where, f"required ({hint})" if hint else "required"))
            continue
        ok, value = _get(cfg, name, where, found, lenient)
        tp = _param_type(obj, accepted[name])
        if ok and tp is not None:
            problem = _value_problem(value, tp, {})
            if problem:
                found.append((where, problem))
    if "_args_" not in cfg:
        for name, p in accepted.items():
            # cfg.keys(): a key set to ??? is not `in` cfg, and was reported as required above
            if p.default is p.empty and p.kind is not p.POSITIONAL_ONLY and name not in cfg.keys():
                found.append((f"{label}.{name}", f"required by {target}"))


def _value_problem(value: Any, tp: Any, meta: dict) -> str | None:
    """What is wrong with `value` as a `tp` under the field's rules ("must be ..., got ..."), or None."""
    rules = meta.get("rules", ())
    hint = f" ({meta['hint']})" if meta.get("hint") else ""
    if meta.get("nonempty") and _empty(value):
        return meta["nonempty"]
    check = next((r for r in rules if isinstance(r, Check)), None)
    if check is not None:
        return None if check.test(value) else f"must be {check.expect}{hint}, got {_show(value)}"
    span = next((r for r in rules if isinstance(r, Range)), None)
    choice = next((r for r in rules if isinstance(r, Choice)), None)
    good = _matches(value, tp)
    if good and value is not None and span is not None and _is_number(value):
        good = value in span
    if good and value is not None and choice is not None:
        good = value in choice.options()
    if good:
        return None
    close = difflib.get_close_matches(value, [str(c) for c in choice.options()], n=1) if (
        choice and isinstance(value, str)) else []
    return f"must be {_expect(tp, span, choice)}{hint}, got {_show(value)}" + (
        f"; did you mean {close[0]}?" if close else "")


# ----------------------------------------------------------------------------- types
_NONE = type(None)
_SIMPLE = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
           str: ("a string", "strings")}


def _union_args(tp: Any) -> tuple | None:
    return typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _matches(value: Any, tp: Any) -> bool:
    args = _union_args(tp)
    if args is not None:
        return any(_matches(value, a) for a in args)
    if tp is Any:
        return True
    if tp is _NONE:
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return _is_number(value)
    if tp is str:
        return isinstance(value, str)
    if typing.get_origin(tp) in (list, tuple, Sequence) or tp in (list, tuple):
        item = (typing.get_args(tp) or (Any,))[0]
        return isinstance(value, (list, tuple, ListConfig)) and all(_matches(v, item) for v in value)
    if tp is dict or typing.get_origin(tp) is dict:
        return isinstance(value, (dict, DictConfig))
    return True  # a type this check does not know: the object's constructor judges it


def _expect(tp: Any, span: Range | None = None, choice: Choice | None = None) -> str:
    """'an integer >= 1', 'null or a number between 0 and 1', 'one of fp32, fp16, bf16'."""
    args = _union_args(tp)
    if args is not None:
        rest = [a for a in args if a is not _NONE]
        text = _expect(rest[0], span, choice) if len(rest) == 1 else " or ".join(_expect(a, span) for a in rest)
        return f"null or {text}" if _NONE in args else text
    if choice is not None:
        return f"one of {', '.join(map(str, choice.options()))}"
    if tp in _SIMPLE:
        return _SIMPLE[tp][0] + (f" {span}" if span is not None and tp in (int, float) else "")
    if typing.get_origin(tp) in (list, tuple, Sequence):
        item = (typing.get_args(tp) or (Any,))[0]
        return f"a list of {_SIMPLE[item][1]}" if item in _SIMPLE else "a list"
    return getattr(tp, "__name__", str(tp))


def _checkable(tp: Any) -> bool:
    """Only plain scalar types (and unions of them with None) are checked against a target's signature: a
    container annotation often undersells what the object accepts (class_weights: balanced or a list)."""
    args = _union_args(tp)
    return all(a in _SIMPLE or a is _NONE for a in args) if args is not None else tp in _SIMPLE


def _param_type(obj: Any, p: inspect.Parameter) -> Any:
    """The type a parameter takes: its annotation, else the type of its default; None: not checked."""
    tp = p.annotation
    if isinstance(tp, str):  # `from __future__ import annotations`: evaluate in the defining module
        func = obj.__init__ if inspect.isclass(obj) else obj
        try:
            tp = eval(tp, getattr(func, "__globals__", {}), {})  # noqa: S307 - the target's own annotation
        except Exception:  # noqa: BLE001 - a name only known to type checkers
            return None
    if tp is p.empty:
        default = p.default
        tp = bool if isinstance(default, bool) else float if _is_number(default) else str if isinstance(
            default, str) else None
    return tp if tp is not None and _checkable(tp) else None


def _parameters(obj: Any) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return None


def _shipped(label: str, schema: type) -> str:
    """What conf/ sets `label` to, for the message about a key a config lacks (the schema holds no defaults)."""
    name = next(n for n, (root, _) in SCHEMAS.items()
                if root is schema or any(tp is schema for _, tp in _fields(root).values()))
    try:
        return _show(OmegaConf.select(shipped_config(name), label))
    except Exception:  # noqa: BLE001 - only for the message: conf/ itself does not compose
        return "in conf/"


_FIELDS: dict[type, dict] = {}


def _fields(schema: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    if schema not in _FIELDS:
        hints = typing.get_type_hints(schema)
        _FIELDS[schema] = {f.name: (f, hints[f.name]) for f in dataclasses.fields(schema)}
    return _FIELDS[schema]


class _MissingPackage(Exception):
    """A target's module imports a package that is not installed."""


def _locate(path: str) -> Any:
    """The object at a dotted path, importing the longest module prefix; LookupError names what is not there."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (e.name == name or name.startswith(e.name + ".")):
                continue  # not a module: the rest of the path may be attributes of a shorter one
            raise _MissingPackage(e.name) from e
        except Exception as e:  # noqa: BLE001 - a module that fails to import names it
            raise LookupError(f"importing {name} failed: {type(e).__name__}: {_first_line(e)}") from e
        for j, attr in enumerate(parts[i:], start=i):
            if not hasattr(obj, attr):
                owner = ".".join(parts[:j])
                close = difflib.get_close_matches(attr, [n for n in dir(obj) if not n.startswith("_")], n=1)
                return_hint = f"; did you mean {owner}.{close[0]}?" if close else ""
                raise LookupError(f"{owner} has no {attr!r}{return_hint}")
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"no module named {parts[0]!r}")


# ----------------------------------------------------------------------------- small helpers
def _join(path: str, name: Any) -> str:
    return f"{path}.{name}" if path else str(name)


def _unknown(path: str, name: Any, known, target: Any = None) -> Problem:
    """'trainer.epochz: unknown key; did you mean trainer.epochs?', or the known keys when none is close."""
    names = sorted(str(k) for k in known)
    close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
    what = f"unknown key for {target}" if target else "unknown key"
    if close:
        return _join(path, name), f"{what}; did you mean {_join(path, close[0])}?"
    return _join(path, name), f"{what} ({'accepts' if target else 'known'}: {', '.join(names) or 'nothing'})"


def _get(cfg: DictConfig, name: Any, label: str, found: list[Problem], lenient: bool) -> tuple[bool, Any]:
    """(True, the value with interpolations resolved), or (False, None) with the problem recorded."""
    try:
        return True, cfg[name]
    except OmegaConfBaseException as e:
        try:
            raw = cfg._get_node(name)._value()
        except Exception:  # noqa: BLE001 - only for the message
            raw = "its value"
        if not (lenient and "hydra:" in str(raw)):
            found.append((label, f"cannot resolve {raw} ({_first_line(e)})"))
        return False, None


def _empty(value: Any) -> bool:
    if isinstance(value, (list, tuple, ListConfig)):
        return len(value) == 0 or any(_empty(v) for v in value)
    return value is None or value == ""


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        try:
            value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException:
            value = OmegaConf.to_container(value)
    return repr(value)


def _first_line(e: BaseException | str) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ----------------------------------------------------------------------------- the command line
def check_command_line(config_name: str, overrides: Sequence[str], *, multirun: bool = False,
                       config_dir: str | None = None, values: bool = True) -> DictConfig | None:
    """Compose `config_name` with `overrides` as a command would and raise one TextclfError listing every
    problem: overrides that do not parse, unknown options, groups and keys (each with the nearest valid name),
    then, with values=True, what validate finds in the composed config. Otherwise return the composed config
    (without its hydra node when values=True), or None when nothing composed.

    It never refuses what it cannot evaluate: without multirun a sweep is left to Hydra (which says to add -m);
    in a multirun each swept key is composed with its first value, its other options are checked by name, and
    the values of swept keys are not judged (interval(...) and glob(...) only by their key). A composition
    error it does not recognise is left to Hydra too.
    """
    schema, heading = SCHEMAS[config_name]
    parser = OverridesParser.create()
    found: list[Problem] = []
    compose, swept, sweeps, by_key_only = [], set(), [], []
    unparsed = set()  # keys of overrides that do not parse: their defaults are not the user's choice
    for text in overrides:
        try:
            (o,) = parser.parse_overrides([text])
        except OverrideParseException as e:
            unparsed.add(text.partition("=")[0].lstrip("+~"))
            found.append((text, f"cannot parse this override ({_first_line(e.message)}); {_quote_hint(text)}see "
                                "https://hydra.cc/docs/advanced/override_grammar/basic/"))
            continue
        if not o.is_sweep_override():
            compose.append(text)
            continue
        if not multirun:
            return None  # Hydra explains: add -m to sweep, or quote the value
        swept.add(o.key_or_group)
        if _is_hydra_key(o.key_or_group):
            continue
        try:
            options = list(o.sweep_string_iterator())
        except Exception:  # noqa: BLE001 - interval(...), glob(...): the sweeper picks the values
            options = []
        if options:
            compose.append(f"{o.get_key_element()}={options[0]}")
            sweeps.append((o.key_or_group, options[1:]))
        elif not o.is_add():
            by_key_only.append(o.key_or_group)

    with _hydra(config_dir) as hydra, warnings.catch_warnings():  # Hydra warns once more when it composes
        if hydra is None:
            return None
        loader, searchpath = hydra
        warnings.simplefilter("ignore")
        cfg, faults, dropped, gave_up = _compose(config_name, compose, parser, searchpath)
        if gave_up and not faults and not found:
            return None
        found += [_describe_fault(fault, cfg, loader) for fault in faults]
        if cfg is not None:
            groups = set(loader.list_groups(""))
            for name, options in sweeps:
                known = loader.get_group_options(name) if name in groups or "/" in name else []
                found += [_no_such_option(name, option, known) for option in options if known and option not in known]
            for name in by_key_only:
                if name not in groups and OmegaConf.select(cfg, name, default=_ABSENT) is _ABSENT:
                    found.append(_unknown_key(name, cfg, groups))
    if values and cfg is not None:
        with open_dict(cfg):
            cfg.pop("hydra", None)
        skip = swept | dropped | unparsed
        found += [(where, what) for where, what in problems(cfg, schema, lenient=True)
                  if not any(where == s or where.startswith(s + ".") for s in skip)]
    _raise(heading, list(dict.fromkeys(found)))
    return cfg


_ABSENT = object()


def _quote_hint(text: str) -> str:
    """key=~/data.csv and other values with characters the override grammar reserves: how to quote them."""
    key, sep, value = text.partition("=")
    if not sep or not value or value[0] in "'\"":
        return ""
    why = "a value starting with ~ (your home folder) must be quoted" if value.startswith("~") else \
        "a value with special characters must be quoted"
    return f"{why}: \"{key}='{value}'\" (or write the full path); "


def _is_hydra_key(name: str) -> bool:
    return name == "hydra" or name.startswith(("hydra.", "hydra/"))


@contextmanager
def _hydra(config_dir: str | None):
    """Hydra on textclf.conf through its compose API, as @hydra.main starts it: (its config loader, the
    hydra.searchpath override that adds --config-dir), or None if the folder is missing (Hydra says so when it
    starts for real). --config-dir's folder comes after textclf.conf's in the search path, where Hydra's own flag
    puts it. A Hydra that was running already is put back after."""
    searchpath = []
    if config_dir is not None:
        if not os.path.isdir(config_dir):
            yield None
            return
        folder = "file://" + os.path.abspath(config_dir).replace("\\", "\\\\").replace("'", "\\'")
        searchpath = [f"hydra.searchpath=['{folder}']"]
    with initialize_config_module(config_module="textclf.conf", job_name="textclf", version_base="1.3"):
        yield GlobalHydra.instance().config_loader(), searchpath


@dataclass
class _Fault:
    kind: str  # option | key | added | chosen
    name: str  # the group or key
    option: str = ""
    where: str = ""  # the config whose defaults list names a missing option (not an override)


def _compose(config_name: str, overrides: list[str], parser, searchpath: list[str]):
    """Compose (with the hydra node), dropping each override Hydra refuses (and those under a refused option) and
    trying again. Returns (the config or None, the faults, the keys of dropped overrides, whether an error was not
    ours)."""
    remaining = list(zip(overrides, parser.parse_overrides(overrides)))
    faults: list[_Fault] = []
    dropped: set[str] = set()
    for _ in range(len(overrides) + 1):
        try:
            cfg = compose(config_name, [*searchpath, *(t for t, _ in remaining)], return_hydra_config=True)
            return cfg, faults, dropped, False
        except MissingConfigException as e:
            missing = e.missing_cfg_file or ""
            if "/" not in missing:
                return None, faults, dropped, True
            name, option = missing.rsplit("/", 1)
            culprit = next(((t, o) for t, o in remaining if o.key_or_group == name and option in _chosen(o)), None)
            where = re.match(r"In '([^']+)'", str(e))
            faults.append(_Fault("option", name, option, "" if culprit else (where.group(1) if where else "?")))
            if culprit is None:
                return None, faults, dropped, False
        except Exception as e:  # noqa: BLE001 - recognised by its wording, else left to Hydra
            fault = _fault(str(e))
            culprit = fault and next(((t, o) for t, o in remaining if _override_key(o) == fault.name), None)
            if culprit is None or culprit[1].package:  # model@pkg=...: Hydra's own advice is the better one
                return None, faults, dropped, True
            faults.append(fault)
        name = culprit[1].key_or_group
        dropped.add(name)
        remaining = [(t, o) for t, o in remaining if o is not culprit[1] and not o.key_or_group.startswith(name + ".")]
    return None, faults, dropped, True


_FAULTS = ((r"Could not override '([^']+)'", "key"),
           (r"Could not delete from config\. '([^']+)' does not exist", "key"),
           (r"Could not append to config\. An item is already at '([^']+)'", "added"),
           (r"Multiple values for ([^\s.]+)\. To override a value use", "chosen"))


def _fault(message: str) -> _Fault | None:
    for pattern, kind in _FAULTS:
        m = re.match(pattern, message)
        if m:
            return _Fault(kind, m.group(1))
    return None


def _override_key(o) -> str:
    return o.key_or_group + (f"@{o.package}" if o.package else "")


def _chosen(o) -> list[str]:
    """The option names an override selects (logger=[csv,tensorboard] selects two)."""
    try:
        value = o.value()
    except Exception:  # noqa: BLE001
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _describe_fault(fault: _Fault, cfg: DictConfig | None, loader) -> Problem:
    if fault.kind == "option":
        return _no_such_option(fault.name, fault.option, loader.get_group_options(fault.name), fault.where)
    if fault.kind == "added":
        return fault.name, f"already set; drop the + to change it ({fault.name}=...)"
    if fault.kind == "chosen":
        return f"+{fault.name}", f"{fault.name} already has an option; drop the + to change it ({fault.name}=...)"
    groups = set(loader.list_groups("")) if cfg is not None else set()
    return _unknown_key(fault.name, cfg, groups)


def _no_such_option(name: str, option: str, options: list[str], where: str = "") -> Problem:
    """'loss=focall: no such option; did you mean loss=focal? (options: auto, bce, ...)'; `where`: the config whose
    defaults list names it, when no override does."""
    close = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
    hint = f"; did you mean {name}={close[0]}?" if close else ""
    listed = f" (options: {', '.join(options)})" if options else f" (there is no group {name!r})"
    return f"{name}={option}", f"no such option{f' (in the defaults of {where})' if where else ''}{hint}{listed}"


def _unknown_key(name: str, cfg: DictConfig | None, groups: set[str]) -> Problem:
    """An override's key that the composed config lacks, with the nearest key at the level where it went wrong."""
    if cfg is None:
        return name, "unknown key"
    parts = name.split(".")
    parent: Any = cfg
    for i, part in enumerate(parts):
        path = ".".join(parts[:i])
        if not isinstance(parent, DictConfig):
            return name, f"{path} is {_show(parent)}, not a mapping of keys"
        if part not in parent.keys():
            known = {str(k) for k in parent.keys()} | (groups if i == 0 else set())
            return _unknown(path, part, known - {"hydra"} if i == 0 else known)
        try:
            parent = parent[part]
        except OmegaConfBaseException:
            return name, "unknown key"
    return name, "unknown key"
