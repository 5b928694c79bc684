"""A finished run as a teacher: its fold ensemble's outputs on texts (pseudo_label, distill) and its out-of-fold
outputs on its own training rows (distill), checked against the labels of the run that learns from it."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from textclf.data.tables import Collator, LabelSpace, resolve_path, tokenize_with
from textclf.errors import TextclfError
from textclf.inference.ensemble import ensemble
from textclf.inference.runs import RunModel, load_run
from textclf.inference.torch_folds import torch_folds
from textclf.run import folder

log = logging.getLogger(__name__)


@dataclass
class Teacher:
    run_dir: Path
    run: RunModel
    key: str  # the config key that named it, for messages

    @classmethod
    def load(cls, path: str, labels: LabelSpace, key: str) -> "Teacher":
        """The run folder `path`; refused unless its task and classes are the learning run's."""
        run_dir = resolve_path(str(path))
        try:
            run_cfg, teacher_labels, weights = load_run(run_dir)
        except TextclfError as e:
            raise TextclfError(f"{key}={path}: {e}") from None
        if teacher_labels.task != labels.task or [str(c) for c in teacher_labels.classes] != [
                str(c) for c in labels.classes]:
            raise TextclfError(f"{key}={path}: that run learned a {teacher_labels.task} task with classes "
                               f"{[str(c) for c in teacher_labels.classes][:10]}, this one a {labels.task} task "
                               f"with {[str(c) for c in labels.classes][:10]}: a teacher must have this run's labels")
        return cls(run_dir, RunModel.load(run_dir, run_cfg, teacher_labels, weights), key)

    @property
    def n_folds(self) -> int:
        return len(self.run.weights)

    def predict(self, texts: list, pairs: list | None, *, device, batch_size: int, desc: str) -> np.ndarray:
        """The fold ensemble's outputs (probabilities per class; regression values) on the texts, in their order."""
        run, mcfg = self.run, self.run.cfg.model
        log.info("%s: the %d fold(s) of %s predict %d %s", self.key, self.n_folds, self.run_dir, len(texts), desc)
        encoded = tokenize_with(run.tokenizer, texts, pairs, mcfg, desc=None)
        folds = torch_folds(run.weights, run.make_model, device, "fp32", lazy=True)
        return ensemble(folds, encoded, Collator.for_tokenizer(run.tokenizer, encoded), run.labels,
                        batch_size=batch_size, aggregate=str(mcfg.window_aggregate))

    def out_of_fold(self, n_rows: int, row_numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(outputs, covered) for the training file's rows with these data row numbers: the teacher's oof.csv
        outputs where it has the row, `covered` False where it has not (a holdout teacher validates only some)."""
        path = self.run_dir / folder.OOF
        if not path.exists():
            raise TextclfError(f"{self.key}={self.run_dir}: it has no {folder.OOF} (an unfinished run?)")
        oof = pd.read_csv(path)
        labels = self.run.labels
        cols = [f"{'pred' if labels.task == 'regression' else 'prob'}_{n}" for n in labels.names]
        missing = [c for c in ["row", *cols] if c not in oof.columns]
        if missing:
            raise TextclfError(f"{self.key}={self.run_dir}: its {folder.OOF} lacks the column(s) {missing}")
        if "source" in oof.columns:  # data.valid_file rows are numbered in their own file: not training rows
            oof = oof[oof["source"] == "train"]
        by_row = dict(zip(oof["row"].astype(int).tolist(), oof[cols].to_numpy(np.float64)))
        outputs = np.zeros((n_rows, len(cols)), dtype=np.float64)
        covered = np.zeros(n_rows, dtype=bool)
        for i, r in enumerate(row_numbers.tolist()):
            if r in by_row:
                outputs[i], covered[i] = by_row[r], True
        return outputs, covered
