"""The checks a run makes before any weights load, in one place: `textclf train` runs them first, and
`textclf validate` runs exactly them and prints what they found. Both commands' config was checked before, by the
same single call (textclf.config.check.ConfigCheck); what is here needs the data or the backbone.

Exits 2 with one message naming the key, file, column or rows at fault; otherwise validate prints rows per
file, the task, the classes and their counts, text lengths, and warnings (texts repeated with conflicting
labels).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, OmegaConf

from textclf.commands.teach import check_teacher
from textclf.config.options import chosen
from textclf.data.augment import build_augmenter
from textclf.data.exclude import exclude_path, exclude_rows, excluded_note
from textclf.data.tables import LabelSpace, Split, balanced_weights, check_leakage, conflicting_duplicates, load_splits
from textclf.errors import TextclfError

log = logging.getLogger(__name__)


@dataclass
class Checked:
    """What the checks established, for the run to build on."""

    cfg: DictConfig  # loss=auto made concrete for the task
    splits: dict[str, Split]
    labels: LabelSpace
    y: np.ndarray  # encoded labels of the training file
    y_valid: np.ndarray | None
    y_test: np.ndarray | None  # a labelled test file's labels (scored at the end), else None
    monitor: str
    device: object  # torch.device
    name_or_path: str
    tokenizer: object
    backbone_config: object
    folds: list  # the folds of a fresh split (a run folder with folds.csv reuses that instead)
    folds_frame: object


def preflight(cfg: DictConfig) -> Checked:
    """Every check before weights load that needs more than the config: the data files and labels, the loss and
    monitor against the task, precision against the device, the folds against the classes, the backbone's files and
    limits. The config itself was checked once, when Hydra composed it (textclf.config.check)."""
    from hydra.utils import instantiate

    from textclf.engine.kfold import make_folds

    build_augmenter(cfg.get("augment"))  # its options' ranges and augment.mlm_model's folder; nothing loads yet
    check_tricks(cfg)
    splits = load_splits(cfg.data)
    labels, y, y_valid, y_test = encode_labels(cfg, splits)  # on every row: messages give the file's row numbers
    excluded = exclude_path(cfg.data)
    if excluded is not None:  # the training file only, before the folds are made
        splits["train"], y = exclude_rows(splits["train"], y, excluded, labels)
    check_leakage(cfg.data, splits)
    cfg, monitor, labels = check_objective(cfg, labels)
    check_teacher(cfg, splits, labels)
    check_calibration(cfg, labels)
    if str(cfg.trainer.sampler) == "balanced":
        balanced_weights(np.asarray(y), labels.task)  # regression has no classes to balance: refused here
    device = check_device(cfg.trainer)
    valid = splits.get("valid")
    with excluded_note(splits["train"], excluded):
        folds, folds_frame = make_folds(instantiate(cfg.kfold), labels, y, len(valid) if valid else 0,
                                        data_cfg=cfg.data, rows=splits["train"].rows)
    check_init_from(cfg.model)
    name_or_path, tokenizer, backbone_config = check_backbone(cfg.model)
    return Checked(cfg, splits, labels, y, y_valid, y_test, monitor, device, name_or_path, tokenizer,
                   backbone_config, folds, folds_frame)


def check_tricks(cfg: DictConfig) -> None:
    """The hooks' values (adversarial.start=1.5, ema.decay=fast) are refused here, before data or weights load:
    building them checks their options and nothing else (the folds build their own)."""
    from textclf.engine.hooks import build_hooks

    build_hooks(cfg.get("adversarial"), cfg.get("ema"))


def encode_labels(cfg: DictConfig, splits: dict[str, Split]):
    """The label space of the training file; every labelled file's labels encoded in it."""
    data = cfg.data
    names = [data.label_col] if isinstance(data.label_col, str) else [str(c) for c in data.label_col]
    where = f"data.train_file {data.train_file!r}"
    labels = LabelSpace.fit(splits["train"].labels, cfg.task, where=where, sep=str(data.label_sep),
                            target_names=names)
    # an unknown positive_label is refused here, before any model loads
    labels = dataclasses.replace(labels, threshold=float(cfg.threshold)).with_positive(cfg.positive_label)
    y = labels.encode(splits["train"].labels, where)
    valid, test = splits.get("valid"), splits.get("test")
    y_valid = labels.encode(valid.labels, f"data.valid_file {data.valid_file!r}") if valid else None
    y_test = (labels.encode(test.labels, f"data.test_file {data.test_file!r}")
              if test is not None and test.labels is not None else None)
    return labels, y, y_valid, y_test


def check_objective(cfg: DictConfig, labels: LabelSpace) -> tuple[DictConfig, str, LabelSpace]:
    """loss=auto made concrete; the loss and trainer.monitor must fit the task. Returns (cfg, monitor, labels with
    single_logit set: a binary task under a single-logit loss has one output)."""
    from hydra.utils import get_class

    from textclf.models.losses import default_loss_for
    from textclf.data.metrics import default_monitor, metrics_for_task

    if cfg.loss._target_ == "textclf.models.losses.auto":
        cfg = resolved_copy(cfg, loss=default_loss_for(labels.task))
    monitor = default_monitor(labels.task) if cfg.trainer.monitor == "auto" else str(cfg.trainer.monitor)
    if monitor not in metrics_for_task(labels.task):
        raise TextclfError(f"trainer.monitor={monitor} is not computed for task {labels.task!r}; "
                           f"choose one of {', '.join(metrics_for_task(labels.task))}")
    loss_cls = get_class(cfg.loss._target_)
    if labels.task not in getattr(loss_cls, "tasks", (labels.task,)):
        raise TextclfError(f"loss={chosen('loss', cfg)} does not fit task {labels.task!r} "
                           f"(it fits: {', '.join(loss_cls.tasks)})")
    single_logit = labels.task == "binary" and getattr(loss_cls, "single_logit_binary", False)
    return cfg, monitor, dataclasses.replace(labels, single_logit=single_logit)


def check_calibration(cfg: DictConfig, labels: LabelSpace) -> None:
    """calibrate=temperature fits a temperature to probabilities: a regression task has none."""
    if cfg.calibrate != "none" and labels.task == "regression":
        raise TextclfError(f"calibrate={cfg.calibrate} applies to binary, multiclass and multilabel tasks; this task "
                           f"is regression (its outputs are values, not probabilities): set calibrate=none")


def check_device(tcfg):
    from textclf.engine.trainer import resolve_device

    device = resolve_device(str(tcfg.device))
    check_cuda_index(device, "trainer.device")
    if tcfg.precision == "fp16" and device.type != "cuda":
        raise TextclfError("trainer.precision=fp16 needs a CUDA device; on CPU use bf16 or fp32")
    if tcfg.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        log.warning("trainer.precision=bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX): torch emulates "
                    "them, and a step runs many times slower than in fp32 (25x for MiniLM on a 2-core AMD EPYC); "
                    "trainer.precision=fp32 is the fast choice on this machine")
    return device


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (oneDNN's own check)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # unknown: no warning


def check_backbone(mcfg):
    """The backbone's tokenizer and config (no weights), and max_length against its positions."""
    from textclf.models.backbone import check_vocabulary, load_backbone_config, load_tokenizer, resolve_name_or_path

    check_model_path(str(mcfg.name_or_path))
    name_or_path = resolve_name_or_path(mcfg.name_or_path)
    tokenizer = load_tokenizer(name_or_path, truncation=mcfg.truncation, trust_remote_code=mcfg.trust_remote_code)
    backbone_config = load_backbone_config(name_or_path, hidden_dropout=mcfg.hidden_dropout,
                                           attention_dropout=mcfg.attention_dropout,
                                           trust_remote_code=mcfg.trust_remote_code)
    check_max_length(int(mcfg.max_length), backbone_config, name_or_path)
    check_vocabulary(tokenizer, backbone_config, f"model.name_or_path={mcfg.name_or_path}")
    return name_or_path, tokenizer, backbone_config


def check_cuda_index(device, key: str) -> None:
    """cuda:N on a machine with fewer GPUs fails deep inside torch ('invalid device ordinal'): say so first."""
    import torch

    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            have = ", ".join(f"cuda:{i}" for i in range(count)) or "none"
            raise TextclfError(f"{key}={device} but this machine has {count} CUDA device(s) ({have}); use "
                               f"{key}=cuda:0, cuda or auto")


def check_model_path(name_or_path: str) -> None:
    """A local model.name_or_path that is a file (the weights, config.json) or an empty folder: say which folder
    to give (the hub id and embedded cases are left to resolve_name_or_path)."""
    from textclf.data.tables import EMBEDDED_PREFIX, resolve_path

    if name_or_path.startswith(EMBEDDED_PREFIX):
        return
    local = resolve_path(name_or_path)
    if local.is_file():
        parent = f" (its folder {str(local.parent)!r} has config.json: model.name_or_path={local.parent})" if (
            local.parent / "config.json").exists() else ""
        raise TextclfError(f"model.name_or_path {name_or_path!r} is a file, not a model folder: give the folder that "
                           f"holds config.json, the weights and the tokenizer files (as save_pretrained writes "
                           f"them){parent}")
    if local.is_dir() and not any(local.iterdir()):
        raise TextclfError(f"model.name_or_path {name_or_path!r} is an empty folder: give the folder that holds "
                           f"config.json, the weights and the tokenizer files (as save_pretrained writes them), or "
                           f"a hub id")


def check_init_from(mcfg) -> None:
    """model.init_from names weights that exist and are of a kind textclf reads (no tensors read yet)."""
    if mcfg.init_from:
        from textclf.models.init_from import check_source

        check_source(str(mcfg.init_from))


def check_max_length(max_length: int, backbone_config, name_or_path: str) -> None:
    """A longer max_length than the backbone has positions would fail deep inside the embeddings."""
    positions = getattr(backbone_config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return  # relative-position models (XLNet, ...) have no fixed limit
    # RoBERTa-style models offset positions by padding_idx + 1
    limit = positions - (backbone_config.pad_token_id + 1
                         if getattr(backbone_config, "model_type", "") in ("roberta", "xlm-roberta", "camembert")
                         and backbone_config.pad_token_id is not None else 0)
    if max_length > limit:
        raise TextclfError(f"model.max_length={max_length} is longer than {name_or_path!r} supports "
                           f"({limit} positions); use model.max_length={limit} or less")


def resolved_copy(cfg: DictConfig, **groups) -> DictConfig:
    """A copy of cfg with whole groups replaced (e.g. loss=auto made concrete for the task)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.update({k: OmegaConf.to_container(v) if isinstance(v, DictConfig) else v for k, v in groups.items()})
    return OmegaConf.create(data)


# ----------------------------------------------------------------------------- textclf validate
def validate_run_inputs(cfg: DictConfig) -> dict:
    checked = preflight(cfg)
    labels = checked.labels
    report = {"task": labels.task, "classes": labels.names, "files": {}, "monitor": checked.monitor,
              "loss": chosen("loss", checked.cfg), "folds": len(checked.folds)}  # loss=auto: the loss it chose
    for name, split in checked.splits.items():
        lengths = np.array([len(t) for t in split.texts])
        report["files"][name] = {"path": split.source, "rows": len(split),
                                 "chars_median": float(np.median(lengths)), "chars_max": int(lengths.max())}
        if split.labels is not None:
            report["files"][name]["conflicting_duplicates"] = len(
                conflicting_duplicates(split.texts, split.pairs, split.labels))
        if split.excluded is not None:
            report["files"][name]["excluded_rows"] = len(split.excluded)
            report["files"][name]["excluded_first"] = split.excluded[:10].tolist()
    if labels.task in ("binary", "multiclass"):
        counts = np.bincount(checked.y, minlength=len(labels.classes))
        report["class_counts"] = {n: int(c) for n, c in zip(labels.names, counts)}
    elif labels.task == "multilabel":
        report["class_counts"] = {n: int(c) for n, c in zip(labels.names, np.asarray(checked.y).sum(axis=0))}
    _print(report)
    return report


def _print(report: dict) -> None:
    lines = [f"task            {report['task']} (loss {report['loss']}, monitor {report['monitor']}, "
             f"{report['folds']} fold(s) to train)"]
    for name, f in report["files"].items():
        extra = (f", {f['conflicting_duplicates']} text(s) repeated with different labels"
                 if f.get("conflicting_duplicates") else "")
        if "excluded_rows" in f:
            first = ", ".join(map(str, f["excluded_first"])) + (" …" if f["excluded_rows"] > 10 else "")
            extra += (f", {f['excluded_rows']:,} more left out by data.exclude_rows (row(s) {first})"
                      if f["excluded_rows"] else ", none left out by data.exclude_rows (it lists no rows)")
        lines.append(f"{name:<15} {f['rows']:,} rows from {f['path']} (text: median {f['chars_median']:.0f} "
                     f"characters, longest {f['chars_max']:,}){extra}")
    if "class_counts" in report:
        counts = ", ".join(f"{k} {v}" for k, v in list(report["class_counts"].items())[:30])
        lines.append(f"classes         {len(report['classes'])}: {counts}")
    lines.append("ok: textclf train would accept this data and config")
    print("\n".join(lines))
