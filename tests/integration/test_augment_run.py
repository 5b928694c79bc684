"""augment=eda | mlm in a real run: each fold trains on its own rows plus exactly their copies; validation rows,
out-of-fold outputs and oof.csv only ever hold original rows; data.valid_file rows are never augmented."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_frame, write_frame
from hydra import compose, initialize_config_module
from tiny_models import build_tiny_masked_lm

from textclf.commands.train import TrainRun, train


def run(tmp_path, monkeypatch, overrides):
    """Train in-process; returns the folds as build_fold received them (train rows with copies)."""
    seen = []
    build_fold = TrainRun.build_fold

    def spy(self, fold):
        seen.append((fold, self.data))
        return build_fold(self, fold)

    monkeypatch.setattr(TrainRun, "build_fold", spy)
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=csv", "data.train_file=train.csv", "model.max_length=24",
                                                      "trainer.epochs=1", "trainer.device=cpu", "plots=false",
                                                      *overrides])
    train(cfg, run_dir=tmp_path / "run")
    return seen


def test_kfold_folds_train_on_their_own_copies_and_validate_originals_only(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_frame(make_frame(40, seed=0), tmp_path / "train.csv")
    seen = run(tmp_path, monkeypatch, [f"model.name_or_path={tiny_bert}", "kfold=stratified", "kfold.n_splits=2",
                                       "augment=eda", "augment.copies=2"])
    folder = tmp_path / "run"
    report = json.loads((folder / "augment.json").read_text())
    assert (report["augment"], report["copies"], report["source_rows"]) == ("eda", 2, 40)
    # 2 copies of 40 rows; a copy EDA could not change (identical to its text) is left out and counted
    kept = report["augmented_rows"]
    assert kept + report["unchanged_copies_left_out"] == 80 and kept >= 70
    folds = pd.read_csv(folder / "folds.csv")
    assert len(seen) == 2
    for fold, data in seen:
        assert data.n_rows == 40 and len(data.y) == 40 + kept
        valid = np.sort(fold.valid_rows)
        assert valid.tolist() == sorted(folds.loc[folds["fold"] == fold.index, "row"])  # originals only
        originals = np.setdiff1d(np.arange(40), valid)
        train_rows = np.asarray(fold.train_rows)
        assert np.array_equal(np.sort(train_rows[train_rows < 40]), originals)
        copies = train_rows[train_rows >= 40]
        assert len(copies) == int(np.isin(data.augmented_from, originals).sum())  # every kept copy of its rows
        assert set(data.augmented_from[copies - 40].tolist()) == set(originals.tolist())  # their own copies
        assert np.array_equal(data.y[copies], data.y[data.augmented_from[copies - 40]])
        assert report["folds"][fold.index] == {"fold": fold.index, "train_rows": len(originals),
                                               "augmented_train_rows": len(copies), "valid_rows": len(valid)}
    oof = pd.read_csv(folder / "oof.csv")
    assert len(oof) == 40 and sorted(oof["row"]) == list(range(40))
    assert json.loads((folder / "metrics.json").read_text())["oof"]


def test_mlm_with_a_validation_file_and_text_pairs_augments_training_rows_only(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlm = build_tiny_masked_lm(tmp_path / "mlm")
    for name, n, seed in (("train.csv", 24, 0), ("valid.csv", 12, 1)):
        frame = make_frame(n, seed=seed)
        frame["context"] = [f"team {i % 3}" for i in range(n)]
        write_frame(frame, tmp_path / name)
    seen = run(tmp_path, monkeypatch, [f"model.name_or_path={tiny_bert}", "data.valid_file=valid.csv",
                                       "data.text_pair_col=context", "augment=mlm", f"augment.mlm_model={mlm}",
                                       "augment.p=0.3"])
    (fold, data), = seen
    assert data.n_rows == 36 and data.augmented_from.tolist() == list(range(24))  # no valid.csv row copied
    assert np.sort(fold.valid_rows).tolist() == list(range(24, 36))
    assert np.sort(fold.train_rows).tolist() == list(range(24)) + list(range(36, 60))
    oof = pd.read_csv(tmp_path / "run" / "oof.csv")
    assert len(oof) == 12 and set(oof["source"]) == {"valid"}
    assert json.loads((tmp_path / "run" / "augment.json").read_text())["augmented_rows"] == 24


@pytest.mark.parametrize("override, message", [
    ("augment.copies=0", "augment.copies must be a whole number >= 1"),
    ("augment.ops=[swap,shuffle]", "augment.ops: unknown operation(s) 'shuffle'"),
])
def test_bad_augment_options_stop_the_run_before_any_model_loads(tiny_bert, tmp_path, monkeypatch, override,
                                                                  message):
    from textclf.errors import TextclfError

    monkeypatch.chdir(tmp_path)
    write_frame(make_frame(12), tmp_path / "train.csv")
    with pytest.raises(TextclfError) as info:
        run(tmp_path, monkeypatch, [f"model.name_or_path={tiny_bert}", "augment=eda", override])
    assert message in str(info.value)
