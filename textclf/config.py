"""validate(cfg): every problem in the composed config, reported at once, before anything heavy loads.

Hydra already rejects an unknown option (`loss=nope`) or an unknown key on the command line
(`trainer.epochz=1`). This catches the rest: keys added with `+`, typos inside YAML files, keys that the
`_target_` of a group does not accept, and values out of range.
"""
from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .data import AGGREGATES, TRUNCATIONS
from .errors import TextclfError

TOP_KEYS = {"data", "model", "pooling", "head", "loss", "optimizer", "scheduler", "kfold", "task", "trainer",
            "threshold", "tune_threshold", "adversarial", "ema", "rdrop", "resume", "logger", "plots"}
DATA_KEYS = {"train_file", "valid_file", "test_file", "text_col", "text_pair_col", "label_col", "label_sep",
             "encoding", "encoding_errors", "group_col"}
MODEL_KEYS = {"name_or_path", "max_length", "truncation", "trust_remote_code", "gradient_checkpointing",
              "hidden_dropout", "attention_dropout", "freeze_embeddings", "freeze_layers", "reinit_layers",
              "head_fraction", "window_stride", "max_windows", "window_aggregate"}
TRAINER_KEYS = {"epochs", "batch_size", "eval_batch_size", "grad_accum_steps", "max_grad_norm", "device",
                "precision", "seed", "deterministic", "monitor", "early_stopping_patience", "length_window",
                "num_workers", "log_every_steps", "compile", "checkpoint_every_steps", "eval_every_steps",
                "limit_train_batches", "limit_eval_batches"}
#: arguments of each group's _target_ that textclf passes at build time, not from YAML
RUNTIME_ARGS = {
    "pooling": {"hidden_size", "summary_last", "num_hidden_layers"},
    "head": {"in_features", "num_labels"},
    "loss": set(),
    "optimizer": {"model"},
    "scheduler": {"optimizer", "total_steps"},
    "kfold": set(),
    "adversarial": set(),
    "ema": set(),
    "rdrop": {"task", "single_logit"},
}
#: groups whose `none` option is an empty mapping that builds nothing
OPTIONAL_GROUPS = {"adversarial", "ema", "rdrop"}
TASKS = ("auto", "binary", "multiclass", "multilabel", "regression")
PRECISIONS = ("fp32", "fp16", "bf16")


def validate(cfg: DictConfig) -> None:
    problems: list[str] = []
    if OmegaConf.is_missing(cfg, "data") or "data" not in cfg:
        raise TextclfError("invalid configuration:\n  - data: no data group selected")
    for key in cfg.keys():
        if key not in TOP_KEYS:
            problems.append(f"{key}: unknown top-level key (known: {', '.join(sorted(TOP_KEYS))})")
    _check_keys(cfg, "data", DATA_KEYS, problems)
    _check_keys(cfg, "model", MODEL_KEYS, problems)
    _check_keys(cfg, "trainer", TRAINER_KEYS, problems)
    for group, runtime in RUNTIME_ARGS.items():
        if group in OPTIONAL_GROUPS and (cfg.get(group) is None or len(cfg[group]) == 0):
            continue
        _check_target(cfg, group, runtime, problems)

    data = cfg.get("data") or {}
    if OmegaConf.is_missing(data, "train_file"):
        problems.append("data.train_file: required (e.g. data.train_file=train.csv)")
    for key in ("text_col", "label_col"):  # label_col may also be a list (several regression targets)
        if not OmegaConf.is_missing(data, key) and not data.get(key):
            problems.append(f"data.{key}: must name a column")
    if data.get("encoding_errors", "replace") not in ("strict", "replace"):
        problems.append(f"data.encoding_errors: must be strict or replace, got {data.get('encoding_errors')!r}")

    model = cfg.get("model") or {}
    if OmegaConf.is_missing(model, "name_or_path") or not model.get("name_or_path"):
        problems.append("model.name_or_path: required (a folder, a hub id, or embedded:minilm)")
    _int_at_least(model, "model.max_length", "max_length", 8, problems)
    for key in ("freeze_layers", "reinit_layers"):
        if key in model:
            _int_at_least(model, f"model.{key}", key, 0, problems)
    if not isinstance(model.get("freeze_embeddings", False), bool):
        problems.append(f"model.freeze_embeddings: must be true or false, got {model.get('freeze_embeddings')!r}")
    if model.get("truncation") not in TRUNCATIONS:
        problems.append(f"model.truncation: must be one of {', '.join(TRUNCATIONS)}, got {model.get('truncation')!r}")
    hf = model.get("head_fraction", 0.25)
    if isinstance(hf, bool) or not isinstance(hf, (int, float)) or not 0 <= hf <= 1:
        problems.append(f"model.head_fraction: must be a number from 0 to 1 (the share of the tokens kept from "
                        f"the start with truncation=head_tail), got {hf!r}")
    for key in ("window_stride", "max_windows"):
        value = model.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            problems.append(f"model.{key}: must be null or an integer >= 1, got {value!r}")
    if model.get("window_aggregate", "mean") not in AGGREGATES:
        problems.append(f"model.window_aggregate: must be one of {', '.join(AGGREGATES)}, "
                        f"got {model.get('window_aggregate')!r}")

    if cfg.get("task") not in TASKS:
        problems.append(f"task: must be one of {', '.join(TASKS)}, got {cfg.get('task')!r}")

    t = cfg.get("trainer") or {}
    for key, low in (("epochs", 1), ("batch_size", 1), ("eval_batch_size", 1), ("grad_accum_steps", 1),
                     ("seed", 0), ("length_window", 1), ("num_workers", 0), ("log_every_steps", 0)):
        _int_at_least(t, f"trainer.{key}", key, low, problems)
    if "checkpoint_every_steps" in t:
        _int_at_least(t, "trainer.checkpoint_every_steps", "checkpoint_every_steps", 0, problems)
    if not isinstance(cfg.get("resume", False), bool):
        problems.append(f"resume: must be true or false (resume=<run folder> also works on the command line), "
                        f"got {cfg.get('resume')!r}")
    for key in ("deterministic", "compile"):
        if not isinstance(t.get(key, False), bool):
            problems.append(f"trainer.{key}: must be true or false, got {t.get(key)!r}")
    if t.get("precision") not in PRECISIONS:
        problems.append(f"trainer.precision: must be one of {', '.join(PRECISIONS)}, got {t.get('precision')!r}")
    device = str(t.get("device"))
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        problems.append(f"trainer.device: must be auto, cpu, cuda or cuda:N, got {device!r}")
    from .metrics import METRICS

    if t.get("monitor") != "auto" and t.get("monitor") not in METRICS:
        problems.append(f"trainer.monitor: must be auto or one of {', '.join(METRICS)}, got {t.get('monitor')!r}")
    threshold = cfg.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        problems.append(f"threshold: must be a number between 0 and 1, got {threshold!r}")
    if not isinstance(cfg.get("tune_threshold"), bool):
        problems.append(f"tune_threshold: must be true or false, got {cfg.get('tune_threshold')!r}")
    if not data.get("label_sep"):
        problems.append("data.label_sep: must be a non-empty separator (multilabel cells are split on it)")
    esp = t.get("early_stopping_patience")
    if esp is not None and (not isinstance(esp, int) or esp < 1):
        problems.append(f"trainer.early_stopping_patience: must be null or an integer >= 1, got {esp!r}")
    mgn = t.get("max_grad_norm")
    if mgn is not None and (not isinstance(mgn, (int, float)) or mgn <= 0):
        problems.append(f"trainer.max_grad_norm: must be null or a positive number, got {mgn!r}")
    if problems:
        raise TextclfError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def _check_keys(cfg: DictConfig, group: str, known: set[str], problems: list[str]) -> None:
    node = cfg.get(group)
    if node is None:
        problems.append(f"{group}: no option selected")
        return
    for key in node.keys():
        if key not in known:
            problems.append(f"{group}.{key}: unknown key (known: {', '.join(sorted(known))})")


def _check_target(cfg: DictConfig, group: str, runtime: set[str], problems: list[str]) -> None:
    node = cfg.get(group)
    if node is None:
        problems.append(f"{group}: no option selected")
        return
    target = node.get("_target_")
    if not target:
        problems.append(f"{group}: the option has no _target_")
        return
    try:
        from hydra.utils import get_object

        obj = get_object(target)
    except Exception as e:  # noqa: BLE001 - report any import failure as a config problem
        problems.append(f"{group}._target_: cannot import {target!r} ({type(e).__name__})")
        return
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = set(params) - {"self"}
    for key in node.keys():
        if key in ("_target_", "_partial_", "_recursive_", "_convert_", "_args_"):
            continue
        if key not in accepted or key in runtime:
            names = sorted(accepted - runtime)
            problems.append(f"{group}.{key}: unknown key for {target} (accepts: {', '.join(names) or 'nothing'})")


def _int_at_least(node: Any, label: str, key: str, low: int, problems: list[str]) -> None:
    value = node.get(key) if node is not None else None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        problems.append(f"{label}: must be an integer >= {low}, got {value!r}")


PREDICT_KEYS = {"run_dir", "input", "output", "text_col", "text_pair_col", "label_col", "batch_size", "device",
                "precision", "folds"}


def validate_predict(cfg: DictConfig) -> None:
    """The same all-at-once check for `textclf predict` options."""
    problems: list[str] = []
    for key in cfg.keys():
        if key not in PREDICT_KEYS:
            problems.append(f"{key}: unknown key (known: {', '.join(sorted(PREDICT_KEYS))})")
    for key in ("run_dir", "input", "output"):
        if OmegaConf.is_missing(cfg, key) or not cfg.get(key):
            problems.append(f"{key}: required (textclf predict run_dir=<run folder> input=<table> output=<csv>)")
    _int_at_least(cfg, "batch_size", "batch_size", 1, problems)
    if cfg.get("precision") not in PRECISIONS:
        problems.append(f"precision: must be one of {', '.join(PRECISIONS)}, got {cfg.get('precision')!r}")
    device = str(cfg.get("device"))
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        problems.append(f"device: must be auto, cpu, cuda or cuda:N, got {device!r}")
    folds = cfg.get("folds")
    if folds is not None and (not OmegaConf.is_list(folds) or not all(isinstance(f, int) for f in folds)):
        problems.append(f"folds: must be null or a list of fold numbers like [0,2], got {folds!r}")
    if problems:
        raise TextclfError("invalid options:\n" + "\n".join(f"  - {p}" for p in problems))
