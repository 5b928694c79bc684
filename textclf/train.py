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

import logging
import os
import random
from functools import partial
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .config import validate
from .data import Collator, EpochBatches, LabelSpace, load_splits, sorted_batches, tokenize
from .errors import TextclfError
from .io import save_weights, write_csv, write_json, write_text

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
    labels = LabelSpace.fit(train_split.labels, cfg.task, where=f"data.train_file {cfg.data.train_file!r}")
    y = labels.encode(train_split.labels, f"data.train_file {cfg.data.train_file!r}")
    y_valid = labels.encode(valid_split.labels, f"data.valid_file {cfg.data.valid_file!r}") if valid_split else None
    from hydra.utils import get_class, instantiate

    from .metrics import metrics_for_task

    if str(tcfg.monitor) not in metrics_for_task(labels.task):
        raise TextclfError(f"trainer.monitor={tcfg.monitor} is not computed for task {labels.task!r}; "
                           f"choose one of {', '.join(metrics_for_task(labels.task))}")
    loss_cls = get_class(cfg.loss._target_)
    if labels.task not in getattr(loss_cls, "tasks", (labels.task,)):
        raise TextclfError(f"loss={cfg.loss._target_.rsplit('.', 1)[-1]} does not fit task {labels.task!r} "
                           f"(it fits: {', '.join(loss_cls.tasks)})")
    splitter = instantiate(cfg.kfold)
    if not valid_split:
        splitter.check(y, labels.names)
    folds = splitter.split(y, len(valid_split) if valid_split else 0)
    log.info("task %s, %d classes: %s", labels.task, len(labels.classes), ", ".join(labels.names[:20]))

    # 2. backbone files and one tokenization for the whole run
    import torch

    from .engine.kfold import run_folds
    from .engine.trainer import Trainer, predict_logits, resolve_device
    from .models import build_classifier
    from .models.backbone import load_backbone_config, load_tokenizer, resolve_name_or_path
    from .optim import param_groups

    seed_everything(int(tcfg.seed), bool(tcfg.deterministic))
    device = resolve_device(str(tcfg.device))
    if tcfg.precision == "fp16" and device.type != "cuda":
        raise TextclfError("trainer.precision=fp16 needs a CUDA device; on CPU use bf16 or fp32")
    name_or_path = resolve_name_or_path(cfg.model.name_or_path)
    mcfg = cfg.model
    tokenizer = load_tokenizer(name_or_path, truncation=mcfg.truncation, trust_remote_code=mcfg.trust_remote_code)
    backbone_config = load_backbone_config(name_or_path, hidden_dropout=mcfg.hidden_dropout,
                                           attention_dropout=mcfg.attention_dropout,
                                           trust_remote_code=mcfg.trust_remote_code)
    check_max_length(int(mcfg.max_length), backbone_config, name_or_path)
    save_run_files(run_dir, cfg, labels, tokenizer, backbone_config)

    texts = train_split.texts + (valid_split.texts if valid_split else [])
    pairs = (train_split.pairs + (valid_split.pairs if valid_split else [])) if train_split.pairs else None
    encoded = tokenize(tokenizer, texts, pairs, int(mcfg.max_length), desc="tokenize")
    y_all = np.concatenate([y, y_valid]) if valid_split else y
    lengths = encoded.lengths
    log.info("tokenized %d texts once: mean %.1f tokens, %.1f%% truncated at max_length=%d", len(encoded),
             lengths.mean(), 100.0 * (lengths >= int(mcfg.max_length)).mean(), int(mcfg.max_length))
    test_encoded = tokenize(tokenizer, test_split.texts, test_split.pairs, int(mcfg.max_length),
                            desc="tokenize test") if test_split else None
    pad_left = tokenizer.padding_side == "left"
    collate = Collator(encoded, y_all, tokenizer.pad_token_id, pad_left)
    loader = partial(torch.utils.data.DataLoader, num_workers=int(tcfg.num_workers),
                     pin_memory=device.type == "cuda")
    write_csv(run_dir / "folds.csv", folds_table(folds, len(y)))

    n_classes = len(labels.classes)
    oof = np.full((len(y_all), n_classes), np.nan, dtype=np.float32)
    test_probs = np.zeros((len(test_split), n_classes), dtype=np.float64) if test_split else None

    def fit_fold(fold) -> dict:
        import torch

        torch.manual_seed(int(tcfg.seed) + fold.index)
        fold_dir = run_dir / f"fold_{fold.index}"
        model = build_classifier(mcfg, cfg.pooling, cfg.head, n_classes, name_or_path=name_or_path,
                                 backbone_config=backbone_config)
        train_batches = EpochBatches(fold.train_rows, lengths, int(tcfg.batch_size), int(tcfg.length_window),
                                     seed=int(tcfg.seed) + 1000 * fold.index)
        train_loader = loader(range(len(encoded)), batch_sampler=train_batches, collate_fn=collate)
        valid_loader = loader(range(len(encoded)), collate_fn=collate,
                              batch_sampler=sorted_batches(fold.valid_rows, lengths, int(tcfg.eval_batch_size)))
        steps_per_epoch = -(-len(train_batches) // int(tcfg.grad_accum_steps))
        optimizer = instantiate(cfg.optimizer)(param_groups(model, float(cfg.optimizer.get("weight_decay", 0.0))))
        scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=steps_per_epoch * int(tcfg.epochs))
        loss_fn = instantiate(cfg.loss).to(device)
        trainer = Trainer(model, loss_fn, optimizer, scheduler, device=device, epochs=int(tcfg.epochs),
                          grad_accum_steps=int(tcfg.grad_accum_steps), max_grad_norm=tcfg.max_grad_norm,
                          precision=str(tcfg.precision), monitor=str(tcfg.monitor),
                          early_stopping_patience=tcfg.early_stopping_patience,
                          log_every_steps=int(tcfg.log_every_steps), desc=f"fold {fold.index}")

        def score(rows, logits):
            return score_logits(y_all[rows], logits, labels.task)

        result = trainer.fit(train_loader, valid_loader, score,
                             on_improve=lambda state: save_weights(fold_dir / "model.safetensors", state))
        rows, logits = result.best_valid_logits
        oof[rows] = softmax(logits)
        write_csv(fold_dir / "history.csv", _frame(result.history))
        if test_encoded is not None:
            model.load_state_dict(load_weights(fold_dir / "model.safetensors"))
            test_collate = Collator(test_encoded, None, tokenizer.pad_token_id, pad_left)
            test_loader = loader(range(len(test_encoded)), collate_fn=test_collate,
                                 batch_sampler=sorted_batches(np.arange(len(test_encoded)), test_encoded.lengths,
                                                              int(tcfg.eval_batch_size)))
            t_rows, t_logits = predict_logits(model, test_loader, device, str(tcfg.precision), desc="test")
            test_probs[t_rows] += softmax(t_logits) / len(folds)
        del model, optimizer, trainer
        out = {"fold": fold.index, "best_epoch": result.best_epoch, **result.best_metrics,
               "train_samples_per_s": result.train_samples_per_s, "eval_samples_per_s": result.eval_samples_per_s}
        out.pop("epoch", None)
        log.info("fold %d: best epoch %d, %s=%.4f", fold.index, result.best_epoch, tcfg.monitor,
                 result.best_metrics[tcfg.monitor])
        return out

    # 3. the folds
    fold_results = run_folds(folds, fit_fold)

    # 4. out-of-fold predictions, metrics, test predictions
    from .metrics import summarize

    scored = ~np.isnan(oof[:, 0])
    oof_metrics = score_logits(y_all[scored], np.log(np.clip(oof[scored], 1e-12, 1)), labels.task)
    mean, std = summarize(fold_results)
    write_json(run_dir / "metrics.json", {"task": labels.task, "monitor": str(tcfg.monitor), "folds": fold_results,
                                         "mean": mean, "std": std, "oof": oof_metrics})
    source = ["train"] * len(y) + ["valid"] * (len(y_all) - len(y))
    row_in_file = list(range(len(y))) + list(range(len(y_all) - len(y)))
    write_csv(run_dir / "oof.csv", prediction_table(oof[scored], labels, y_true=y_all[scored],
                                                    extra={"source": np.asarray(source)[scored],
                                                           "row": np.asarray(row_in_file)[scored]}))
    if test_probs is not None:
        write_csv(run_dir / "test_predictions.csv", prediction_table(test_probs, labels))
    score_value = mean[str(tcfg.monitor)]
    log.info("done: %s = %.4f ± %.4f over %d fold(s); accuracy %.4f; run folder %s", tcfg.monitor, score_value,
             std[str(tcfg.monitor)], len(fold_results), mean["accuracy"], run_dir)
    return float(score_value)


# ----------------------------------------------------------------------------- helpers
def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def score_logits(y_true: np.ndarray, logits: np.ndarray, task: str) -> dict:
    from .metrics import classification_metrics, cross_entropy

    probs = softmax(logits)
    return {**classification_metrics(y_true, probs, task), "loss": cross_entropy(y_true, probs)}


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


def folds_table(folds, n_rows: int):
    import pandas as pd

    fold_of = np.full(n_rows, -1, dtype=np.int64)
    for f in folds:
        fold_of[f.valid_rows[f.valid_rows < n_rows]] = f.index
    return pd.DataFrame({"row": np.arange(n_rows), "fold": fold_of})


def prediction_table(probs: np.ndarray, labels: LabelSpace, y_true: np.ndarray | None = None, extra=None):
    import pandas as pd

    names = labels.names
    table = pd.DataFrame(extra or {})
    if y_true is not None:
        table["label"] = [names[i] for i in y_true]
    table["pred"] = [names[i] for i in probs.argmax(axis=1)]
    for i, name in enumerate(names):
        table[f"prob_{name}"] = probs[:, i]
    return table


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
