"""A run that learns from a teacher run (textclf.data.pseudo): pseudo_label=default adds the teacher's confident
decisions on unlabelled texts as training rows; distill=default (textclf distill) makes the teacher's outputs the
training targets. Checked before any weights load (check_teacher, from preflight); applied once per run, before its
one tokenization (teach)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from textclf.errors import TextclfError, own_errors
from textclf.run import folder

log = logging.getLogger(__name__)


@dataclass
class Taught:
    """What a teacher adds to the run: rows every fold trains on (texts, pairs, labels encoded as the training
    labels'), the training targets of every row when distilling (soft), and the record for the run folder."""

    texts: list
    pairs: list | None
    y: np.ndarray
    soft: np.ndarray | None
    record_file: str
    record: dict


def settings(cfg: DictConfig):
    """(PseudoLabels or None, Distill or None), their options checked; both at once are refused."""
    with own_errors():
        built = [instantiate(node) if node is not None and node.get("_target_") else None
                 for node in (cfg.get("pseudo_label"), cfg.get("distill"))]
    if all(built):
        raise TextclfError("pseudo_label and distill both learn from a teacher run; use one of them in a run "
                           "(distill with data.unlabeled_file already learns the teacher's outputs on those texts)")
    return built


def check_teacher(cfg: DictConfig, splits: dict, labels) -> None:
    """The options, the texts they need, and the teacher folder (a finished run with this run's labels)."""
    from textclf.inference.teacher import Teacher

    pseudo, distill = settings(cfg)
    if pseudo is not None:
        wanted = "unlabeled_file" if pseudo.source == "unlabeled" else "test_file"
        if not cfg.data.get(wanted):
            raise TextclfError(f"pseudo_label.source={pseudo.source} labels the texts of data.{wanted}, which is not "
                               f"set: give data.{wanted}=<table>")
        Teacher.load(pseudo.teacher, labels, "pseudo_label.teacher")
    if distill is not None:
        Teacher.load(distill.teacher, labels, "distill.teacher")
    elif cfg.data.get("unlabeled_file") and pseudo is None:
        log.warning("data.unlabeled_file is set but neither pseudo_label nor distill is on: its texts are not used")


def teach(checked, augmented, device) -> Taught | None:
    """The teacher's contribution to this run; None when no teacher is set."""
    from textclf.inference.teacher import Teacher

    pseudo, distill = settings(checked.cfg)
    if pseudo is None and distill is None:
        return None
    batch = int(checked.cfg.trainer.eval_batch_size)
    if pseudo is not None:
        return _pseudo_labels(checked, pseudo, Teacher.load(pseudo.teacher, checked.labels, "pseudo_label.teacher"),
                              device, batch)
    return _distill(checked, augmented, distill, Teacher.load(distill.teacher, checked.labels, "distill.teacher"),
                    device, batch)


def _pseudo_labels(checked, pseudo, teacher, device, batch: int) -> Taught:
    labels, cfg = checked.labels, checked.cfg
    name = "unlabeled" if pseudo.source == "unlabeled" else "test"
    split = checked.splits[name]
    if name == "test":
        log.warning("pseudo_label.source=test: the run trains on data.test_file's texts with the teacher's labels; "
                    "its test scores are no longer those of texts it has not seen")
    outputs = teacher.predict(split.texts, split.pairs, device=device, batch_size=batch,
                              desc=f"texts of data.{name}_file")
    chosen = pseudo.select(labels, outputs, len(checked.y))
    thresholds = pseudo.thresholds(labels)
    log.info("pseudo_label: %d of %d texts are confident (%s); %d kept%s as training rows of every fold",
             sum(chosen.confident_by_class.values()), chosen.offered,
             ", ".join(f"{k} {v}" for k, v in chosen.confident_by_class.items()) or "none", len(chosen.rows),
             f" (capped at pseudo_label.max_share={pseudo.max_share} of {len(checked.y)} training rows)"
             if chosen.capped else "")
    numbers = split.row_numbers()
    record = {"teacher": str(teacher.run_dir), "teacher_folds": teacher.n_folds, "source": pseudo.source,
              "file": str(cfg.data[f"{name}_file"]), "texts": chosen.offered,
              "thresholds": {str(n): float(t) for n, t in zip(labels.names, thresholds)},
              "max_share": pseudo.max_share, "capped": chosen.capped,
              "confident_by_class": chosen.confident_by_class, "kept_by_class": chosen.kept_by_class,
              "kept": len(chosen.rows), "training_rows": len(checked.y),
              "rows": [int(numbers[r]) for r in chosen.rows],
              "examples": [{"row": int(numbers[r]), "text": split.texts[r],
                            "label": _label_text(labels, y), "confidence": round(float(c), 4)}
                           for r, y, c in list(zip(chosen.rows, chosen.y, chosen.confidence))[:5]]}
    pairs = [split.pairs[r] for r in chosen.rows] if split.pairs is not None else None
    return Taught([split.texts[r] for r in chosen.rows], pairs, chosen.y.astype(checked.y.dtype), None,
                  folder.PSEUDO_LABELS, record)


def _distill(checked, augmented, distill, teacher, device, batch: int) -> Taught:
    labels, splits = checked.labels, checked.splits
    train = splits["train"]
    source = "ensemble"
    if distill.targets == "oof":
        outputs, covered = teacher.out_of_fold(len(train), train.row_numbers())
        missing = np.flatnonzero(~covered)
        source = "oof" if not len(missing) else f"oof ({len(missing)} rows from the ensemble)"
        if len(missing):
            log.info("distill: the teacher's oof.csv lacks %d of the %d training rows (it did not validate them): "
                     "those get its fold ensemble's outputs", len(missing), len(train))
            pairs = [train.pairs[i] for i in missing] if train.pairs is not None else None
            outputs[missing] = teacher.predict([train.texts[i] for i in missing], pairs, device=device,
                                               batch_size=batch, desc="training rows it did not validate")
    else:
        outputs = teacher.predict(train.texts, train.pairs, device=device, batch_size=batch, desc="training rows")
    width = outputs.shape[1]
    parts = [distill.soft_targets(labels, checked.y, outputs)]
    if checked.y_valid is not None:  # validation rows never train: their labels, for completeness
        parts.append(distill.soft_targets(labels, checked.y_valid, np.zeros((len(checked.y_valid), width)), alpha=0))
    if augmented is not None:  # a copy learns its source row's target
        parts.append(parts[0][augmented.source])
    texts, pairs, y = [], None, checked.y[:0]
    unlabeled = splits.get("unlabeled")
    if unlabeled is not None:
        u = teacher.predict(unlabeled.texts, unlabeled.pairs, device=device, batch_size=batch,
                            desc="texts of data.unlabeled_file")
        parts.append(distill.soft_targets(labels, None, u))
        texts, pairs = list(unlabeled.texts), unlabeled.pairs
        y = labels.decide(u).astype(checked.y.dtype)  # what a row's label would be (the balanced sampler reads it)
    log.info("distill: the student learns alpha=%.2f x the teacher's outputs (%s, %d fold(s) of %s) + %.2f x the "
             "labels on %d training rows%s", distill.alpha, source, teacher.n_folds, teacher.run_dir,
             1 - distill.alpha, len(train), f", and its outputs alone on {len(texts)} unlabelled texts" if texts else "")
    record = {"teacher": str(teacher.run_dir), "teacher_folds": teacher.n_folds, "alpha": distill.alpha,
              "targets": source, "training_file_rows": len(train), "unlabeled_texts": len(texts),
              "unlabeled_file": str(checked.cfg.data.get("unlabeled_file")) if texts else None}
    return Taught(texts, pairs, y, np.concatenate(parts).astype(np.float32), folder.DISTILL, record)


def _label_text(labels, y) -> str:
    if labels.task == "multilabel":
        return labels.sep.join(str(n) for n, on in zip(labels.names, np.asarray(y)) if on)
    return str(labels.names[int(y)])
