"""`textclf train`: check everything, tokenize once, fit each fold, write the run folder.

Run folder (Hydra's output directory):
  config.yaml            the resolved config
  train.log              the log
  labels.json            task and class names, in logit order
  backbone/              backbone config + tokenizer files (predict rebuilds the model offline)
  fold_<k>/model.safetensors, fold_<k>/history.csv
  folds.csv              which fold validates each training row
  oof.csv                out-of-fold predictions: probabilities per class and the predicted label
  metrics.json           every fold's metrics, mean and std across folds
  test_predictions.csv   when data.test_file is given: probabilities averaged over folds
"""
from __future__ import annotations

import copy
import logging
import os
import random
from functools import partial
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .config import validate
from .data import Collator, EpochBatches, LabelSpace, load_splits, sorted_batches, tokenize_with
from .engine.checkpoint import FoldCheckpoint, fault_point
from .errors import TextclfError
from .io import atomic_path, save_weights, write_csv, write_json, write_text

log = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def train(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> float:
    """Train every fold; return the monitored metric's mean across folds (what a sweep optimises)."""
    run_dir = Path(run_dir) if run_dir is not None else output_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    validate(cfg)
    tcfg = cfg.trainer

    # 1. data, checked before anything heavy loads
    splits = load_splits(cfg.data)
    train_split, valid_split, test_split = splits["train"], splits.get("valid"), splits.get("test")
    label_cols = cfg.data.label_col
    target_names = [label_cols] if isinstance(label_cols, str) else [str(c) for c in label_cols]
    where = f"data.train_file {cfg.data.train_file!r}"
    labels = LabelSpace.fit(train_split.labels, cfg.task, where=where, sep=str(cfg.data.label_sep),
                            target_names=target_names)
    labels.threshold = float(cfg.threshold)
    y = labels.encode(train_split.labels, where)
    y_valid = labels.encode(valid_split.labels, f"data.valid_file {cfg.data.valid_file!r}") if valid_split else None
    # a labelled test file: its labels must be known classes; the ensemble is scored on it at the end
    y_test = (labels.encode(test_split.labels, f"data.test_file {cfg.data.test_file!r}")
              if test_split and test_split.labels is not None else None)
    from hydra.utils import get_class, instantiate

    from .losses import default_loss_for
    from .metrics import default_monitor, metrics_for_task

    if cfg.loss._target_ == "textclf.losses.auto":
        cfg = resolved_copy(cfg, loss=default_loss_for(labels.task))
    monitor = default_monitor(labels.task) if tcfg.monitor == "auto" else str(tcfg.monitor)
    if monitor not in metrics_for_task(labels.task):
        raise TextclfError(f"trainer.monitor={monitor} is not computed for task {labels.task!r}; "
                           f"choose one of {', '.join(metrics_for_task(labels.task))}")
    loss_cls = get_class(cfg.loss._target_)
    if labels.task not in getattr(loss_cls, "tasks", (labels.task,)):
        raise TextclfError(f"loss={cfg.loss._target_.rsplit('.', 1)[-1]} does not fit task {labels.task!r} "
                           f"(it fits: {', '.join(loss_cls.tasks)})")
    labels.single_logit = labels.task == "binary" and getattr(loss_cls, "single_logit_binary", False)
    from .engine.kfold import make_folds

    # an earlier run in this folder with the same settings is continued; other settings start over
    resuming = prepare_run_dir(run_dir, cfg, bool(cfg.get("resume", False)))
    splitter = instantiate(cfg.kfold)
    # reuses run_dir/folds.csv when it exists, so a rerun validates on identical splits
    folds, folds_frame = make_folds(splitter, labels, y, len(valid_split) if valid_split else 0, data_cfg=cfg.data,
                                    run_dir=run_dir)
    log.info("task %s, %d %s: %s", labels.task, len(labels.classes),
             "targets" if labels.task == "regression" else "classes", ", ".join(labels.names[:20]))

    # 2. backbone files and one tokenization for the whole run
    import torch

    from .engine.hooks import build_hooks
    from .engine.kfold import run_folds
    from .engine.trainer import Trainer, predict_logits, resolve_device
    from .models import build_classifier
    from .models.backbone import load_backbone_config, load_tokenizer, resolve_name_or_path

    seed_everything(int(tcfg.seed), bool(tcfg.deterministic))
    device = resolve_device(str(tcfg.device))
    if tcfg.precision == "fp16" and device.type != "cuda":
        raise TextclfError("trainer.precision=fp16 needs a CUDA device; on CPU use bf16 or fp32")
    name_or_path = resolve_name_or_path(cfg.model.name_or_path)
    mcfg = cfg.model
    aggregate = str(mcfg.get("window_aggregate", "mean"))
    tokenizer = load_tokenizer(name_or_path, truncation=mcfg.truncation, trust_remote_code=mcfg.trust_remote_code)
    backbone_config = load_backbone_config(name_or_path, hidden_dropout=mcfg.hidden_dropout,
                                           attention_dropout=mcfg.attention_dropout,
                                           trust_remote_code=mcfg.trust_remote_code)
    check_max_length(int(mcfg.max_length), backbone_config, name_or_path)
    save_run_files(run_dir, cfg, labels, tokenizer, backbone_config)

    texts = train_split.texts + (valid_split.texts if valid_split else [])
    pairs = (train_split.pairs + (valid_split.pairs if valid_split else [])) if train_split.pairs else None
    encoded = tokenize_with(tokenizer, texts, pairs, mcfg, desc="tokenize")
    y_all = np.concatenate([y, y_valid]) if valid_split else y
    lengths = encoded.lengths
    if encoded.doc is not None:
        log.info("tokenized %d texts once into %d windows of up to %d tokens (%.2f per text, at most %d); "
                 "window logits are %s-aggregated per text", encoded.n_docs, len(encoded), int(mcfg.max_length),
                 len(encoded) / max(encoded.n_docs, 1), int(np.bincount(encoded.doc).max()), aggregate)
    else:
        log.info("tokenized %d texts once: mean %.1f tokens, %.1f%% cut to max_length=%d (truncation=%s)",
                 len(encoded), lengths.mean(), 100.0 * (lengths >= int(mcfg.max_length)).mean(),
                 int(mcfg.max_length), mcfg.truncation)
    test_encoded = (tokenize_with(tokenizer, test_split.texts, test_split.pairs, mcfg, desc="tokenize test")
                    if test_split else None)
    collate = Collator.for_tokenizer(tokenizer, encoded, y_all)
    # loaders draw their worker seeds from their own generator: each new iterator would otherwise take a number
    # from the global RNG (the dropout masks' source), and a resumed epoch, which makes its iterator after
    # restoring that RNG, would drift from the uninterrupted run
    loader = partial(torch.utils.data.DataLoader, num_workers=int(tcfg.num_workers),
                     pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(int(tcfg.seed)))
    write_csv(run_dir / "folds.csv", folds_frame)

    n_cols = len(labels.classes)
    # summed over the folds that validate a row (once per kfold.repeats); averaged after the folds
    oof_sum = np.zeros((len(y_all), n_cols), dtype=np.float64)
    oof_count = np.zeros(len(y_all), dtype=np.int64)
    test_out = np.zeros((len(test_split), n_cols), dtype=np.float64) if test_split else None

    def fit_fold(fold) -> dict:
        import torch

        torch.manual_seed(int(tcfg.seed) + fold.index)
        fold_dir = run_dir / f"fold_{fold.index}"
        if resuming and (fold_dir / "result.json").exists():
            return finished_fold(fold_dir, fold.index, oof_sum, oof_count, test_out, len(folds))
        checkpoint = FoldCheckpoint(fold_dir / "checkpoint", int(tcfg.get("checkpoint_every_steps", 0) or 0),
                                    tag=str(fold.index))
        if not resuming:
            checkpoint.clear()
        model = build_classifier(mcfg, cfg.pooling, cfg.head, labels.num_outputs, name_or_path=name_or_path,
                                 backbone_config=backbone_config)
        train_batches = EpochBatches(encoded.seq_rows(fold.train_rows), lengths, int(tcfg.batch_size), int(tcfg.length_window),
                                     seed=int(tcfg.seed) + 1000 * fold.index)
        train_loader = loader(range(len(encoded)), batch_sampler=train_batches, collate_fn=collate)
        valid_loader = loader(range(len(encoded)), collate_fn=collate,
                              batch_sampler=sorted_batches(encoded.seq_rows(fold.valid_rows), lengths,
                                                                   int(tcfg.eval_batch_size)))
        steps_per_epoch = -(-len(train_batches) // int(tcfg.grad_accum_steps))
        model.to(device)  # before the optimizer, so its state lives on the same device
        if tcfg.get("compile", False):
            model.compile(dynamic=True)  # in place: state_dict keys stay the same for saving and predict
        optimizer = instantiate(cfg.optimizer)(model)
        scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=steps_per_epoch * int(tcfg.epochs))
        loss_fn = build_loss(cfg.loss, labels, y_all[fold.train_rows])
        eval_loss_fn = copy.deepcopy(loss_fn)  # scores logits on the CPU; the training copy stays on the device
        loss_fn.to(device)
        hooks = build_hooks(cfg.get("adversarial"), cfg.get("ema"))  # fresh per fold; `none` ({}) builds nothing
        objective = (instantiate(cfg.rdrop, task=labels.task, single_logit=labels.single_logit)
                     if cfg.get("rdrop") else None)
        trainer = Trainer(model, loss_fn, optimizer, scheduler, device=device, epochs=int(tcfg.epochs),
                          grad_accum_steps=int(tcfg.grad_accum_steps), max_grad_norm=tcfg.max_grad_norm,
                          precision=str(tcfg.precision), monitor=monitor,
                          early_stopping_patience=tcfg.early_stopping_patience, hooks=hooks, objective=objective,
                          log_every_steps=int(tcfg.log_every_steps), desc=f"fold {fold.index}")

        def score(rows, logits):
            return score_logits(labels, y_all[rows], logits, eval_loss_fn)

        result = trainer.fit(train_loader, valid_loader, score,
                             on_improve=lambda state: save_weights(fold_dir / "model.safetensors", state),
                             reduce=lambda rows, logits: encoded.aggregate(rows, logits, aggregate),
                             checkpoint=checkpoint)
        rows, logits = result.best_valid_logits
        fold_oof = labels.outputs(logits)
        oof_sum[rows] += fold_oof
        oof_count[rows] += 1
        write_csv(fold_dir / "history.csv", _frame(result.history))
        fold_test = None
        if test_encoded is not None:
            model.load_state_dict(load_weights(fold_dir / "model.safetensors"))
            test_collate = Collator.for_tokenizer(tokenizer, test_encoded)
            test_loader = loader(range(len(test_encoded)), collate_fn=test_collate,
                                 batch_sampler=sorted_batches(np.arange(len(test_encoded)), test_encoded.lengths,
                                                              int(tcfg.eval_batch_size)))
            t_rows, t_logits = test_encoded.aggregate(
                *predict_logits(model, test_loader, device, str(tcfg.precision), desc="test"), aggregate)
            fold_test = np.zeros_like(test_out)
            fold_test[t_rows] = labels.outputs(t_logits)
            test_out[:] += fold_test / len(folds)
        del model, optimizer, trainer
        out = {"fold": fold.index, "best_epoch": result.best_epoch, **result.best_metrics,
               "train_samples_per_s": result.train_samples_per_s, "eval_samples_per_s": result.eval_samples_per_s}
        out.pop("epoch", None)
        # the fold's outputs, then result.json last: a fold with result.json is complete, and a resume skips it
        save_arrays(fold_dir / "outputs.npz", oof_rows=rows, oof=fold_oof,
                    **({"test": fold_test} if fold_test is not None else {}))
        write_json(fold_dir / "result.json", out)  # write_json turns numpy scalars into numbers
        checkpoint.clear()
        fault_point(f"fold:{fold.index}")
        log.info("fold %d: best epoch %d, %s=%.4f", fold.index, result.best_epoch, monitor,
                 result.best_metrics[monitor])
        return out

    # 3. the folds
    fold_results = run_folds(folds, fit_fold)
    oof = np.full((len(y_all), n_cols), np.nan, dtype=np.float64)
    oof[oof_count > 0] = oof_sum[oof_count > 0] / oof_count[oof_count > 0, None]

    # 4. out-of-fold predictions, metrics, test predictions
    from .metrics import compute_metrics, per_class_report, summarize
    from .tasks import tune_thresholds

    scored = ~np.isnan(oof[:, 0])
    oof_metrics = compute_metrics(labels, y_all[scored], oof[scored])
    summary = {"task": labels.task, "monitor": monitor, "folds": fold_results}
    summary["mean"], summary["std"] = summarize(fold_results)
    summary["oof"] = oof_metrics
    if labels.task == "multilabel" and cfg.tune_threshold:
        labels.threshold = tune_thresholds(y_all[scored], oof[scored])
        summary["oof_tuned_threshold"] = {"threshold": labels.threshold,
                                          **compute_metrics(labels, y_all[scored], oof[scored])}
        write_json(run_dir / "labels.json", labels.to_dict())
        log.info("tuned per-class thresholds on out-of-fold predictions: %s", labels.threshold)
    report = per_class_report(labels, y_all[scored], oof[scored])
    if report is not None:
        summary["oof_report"] = report
    source = ["train"] * len(y) + ["valid"] * (len(y_all) - len(y))
    row_in_file = list(range(len(y))) + list(range(len(y_all) - len(y)))
    write_csv(run_dir / "oof.csv", labels.table(oof[scored], y_true=y_all[scored],
                                                extra={"source": np.asarray(source)[scored],
                                                       "row": np.asarray(row_in_file)[scored]}))
    if test_out is not None:
        write_csv(run_dir / "test_predictions.csv", labels.table(test_out))
    if test_out is not None and y_test is not None:
        summary["test"] = compute_metrics(labels, y_test, test_out)
        log.info("test (%d rows, folds averaged): %s", len(y_test),
                 "  ".join(f"{k}={v:.4f}" for k, v in summary["test"].items()))
    # metrics.json, then run.json last: a folder with run.json is a finished run (predict checks it)
    write_json(run_dir / "metrics.json", summary)
    from .manifest import write_manifest

    write_manifest(run_dir)
    mean, std = summary["mean"], summary["std"]
    log.info("done: %s = %.4f ± %.4f over %d fold(s); run folder %s", monitor, mean[monitor], std[monitor],
             len(fold_results), run_dir)
    return float(mean[monitor])


# ----------------------------------------------------------------------------- resuming
#: settings that may change between an interrupted run and its resumption without changing its results
RESUME_FREE_KEYS = {"resume", "trainer.checkpoint_every_steps", "trainer.log_every_steps", "trainer.num_workers"}
#: what a run writes; a run folder reused with other settings loses these (folds.csv stays only if the split
#: settings are unchanged)
RUN_OUTPUTS = ("run.json", "metrics.json", "oof.csv", "test_predictions.csv")


def prepare_run_dir(run_dir: Path, cfg: DictConfig, resume: bool) -> bool:
    """True when run_dir holds an earlier run with the same settings: it continues (finished folds are kept,
    the fold in flight goes on from its last checkpoint). Other settings: resume=true is an error, otherwise
    the folder's earlier outputs are removed and the run starts over."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        if resume:
            raise TextclfError(f"resume=true but {run_dir} holds no run to resume (no config.yaml); point "
                               f"hydra.run.dir (or resume=<folder>) at the folder of the interrupted run")
        return False
    old = OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
    new = OmegaConf.to_container(cfg, resolve=True)
    changed = [k for k in config_differences(old, new) if k not in RESUME_FREE_KEYS]
    if not changed:
        done = sorted(p.parent.name for p in run_dir.glob("fold_*/result.json"))
        log.info("resuming the run in %s (finished folds: %s)", run_dir, ", ".join(done) or "none")
        return True
    if resume:
        raise TextclfError(f"cannot resume {run_dir}: it was started with other settings "
                           f"({', '.join(changed[:8])}); resume with the same settings, or use another run folder")
    log.warning("run folder %s holds an earlier run with other settings (%s): starting over", run_dir,
                ", ".join(changed[:8]))
    import shutil

    for path in run_dir.glob("fold_*"):
        if path.is_dir():
            shutil.rmtree(path)
    for name in RUN_OUTPUTS:
        (run_dir / name).unlink(missing_ok=True)
    if any(k.startswith(("kfold.", "data.")) and k != "kfold.folds" or k == "trainer.seed" for k in changed):
        (run_dir / "folds.csv").unlink(missing_ok=True)
    return False


def config_differences(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out.extend(config_differences(old.get(key, "<missing>"), new.get(key, "<missing>"), f"{prefix}{key}."))
        return out
    return [] if old == new else [prefix.rstrip(".")]


def finished_fold(fold_dir: Path, index: int, oof_sum: np.ndarray, oof_count: np.ndarray,
                  test_out: np.ndarray | None, n_folds: int) -> dict:
    """A fold a resumed run had finished: its result and predictions, read back instead of trained again."""
    import json

    arrays = np.load(fold_dir / "outputs.npz", allow_pickle=False)
    oof_sum[arrays["oof_rows"]] += arrays["oof"]
    oof_count[arrays["oof_rows"]] += 1
    if test_out is not None:
        if "test" not in arrays:
            raise TextclfError(f"cannot resume: {fold_dir} has no test predictions but data.test_file is set")
        test_out += arrays["test"] / n_folds
    log.info("fold %d: finished before, kept", index)
    return json.loads((fold_dir / "result.json").read_text(encoding="utf-8"))


def save_arrays(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


# ----------------------------------------------------------------------------- helpers
def score_logits(labels: LabelSpace, y_true: np.ndarray, logits: np.ndarray, loss_fn=None) -> dict:
    """The task's metrics from raw logits, plus the loss (the training objective) when loss_fn is given."""
    from .metrics import compute_metrics

    out = compute_metrics(labels, y_true, labels.outputs(logits))
    if loss_fn is not None:
        import torch

        with torch.no_grad():
            out["loss"] = float(loss_fn(torch.from_numpy(logits).float(), torch.from_numpy(y_true)))
    return out


def build_loss(loss_cfg, labels: LabelSpace, y_train: np.ndarray):
    """Instantiate the loss; `class_weights: balanced` becomes n / (K * count_k) on this fold's rows."""
    from hydra.utils import instantiate

    weights = loss_cfg.get("class_weights")
    if weights is None:
        return instantiate(loss_cfg)
    k = len(labels.classes)
    if weights == "balanced":
        counts = y_train.sum(axis=0) if labels.task == "multilabel" else np.bincount(y_train, minlength=k)
        weights = (len(y_train) / (k * np.maximum(counts, 1))).tolist()
    weights = [float(w) for w in weights]
    if len(weights) != k:
        raise TextclfError(f"loss.class_weights has {len(weights)} values but there are {k} classes "
                           f"({', '.join(labels.names[:20])})")
    return instantiate(loss_cfg, class_weights=weights)


def resolved_copy(cfg: DictConfig, **groups) -> DictConfig:
    """A copy of cfg with whole groups replaced (e.g. loss=auto made concrete for the task)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.update({k: OmegaConf.to_container(v) if isinstance(v, DictConfig) else v for k, v in groups.items()})
    return OmegaConf.create(data)


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


def load_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def save_run_files(run_dir: Path, cfg: DictConfig, labels: LabelSpace, tokenizer, backbone_config) -> None:
    """Everything predict needs to rebuild the model offline, besides the fold weights."""
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_json(run_dir / "labels.json", labels.to_dict())
    backbone_dir = run_dir / "backbone"
    backbone_dir.mkdir(parents=True, exist_ok=True)
    backbone_config.save_pretrained(backbone_dir)
    tokenizer.save_pretrained(backbone_dir)
