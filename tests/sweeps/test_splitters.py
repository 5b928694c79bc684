"""K-fold variants: iterative multilabel stratification, group folds, repeats, subsets, folds.csv reuse."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from sklearn.model_selection import KFold

from textclf.engine.kfold import (GroupKFoldSplit, Holdout, MultilabelStratifiedKFoldSplit, StratifiedGroupKFoldSplit,
                                  StratifiedKFoldSplit, make_folds)
from textclf.errors import TextclfError
from textclf.data.tasks import LabelSpace


def rare_label_matrix(n: int = 200) -> np.ndarray:
    """5 labels with 100, 40, 20, 10 and 8 positives: rare labels are where a random split goes wrong."""
    rng = np.random.default_rng(0)
    y = np.zeros((n, 5), dtype=np.int64)
    for k, count in enumerate((100, 40, 20, 10, 8)):
        y[rng.choice(n, count, replace=False), k] = 1
    return y


def worst_label_imbalance(valid_sets, y: np.ndarray, n_splits: int) -> float:
    """Largest gap, over folds and labels, between a fold's positives and an even share of them."""
    share = y.sum(axis=0) / n_splits
    return max(float(np.abs(y[v].sum(axis=0) - share).max()) for v in valid_sets)


def assert_partition(folds, n: int) -> None:
    valid = np.concatenate([f.valid_rows for f in folds])
    assert sorted(valid) == list(range(n))  # every row validated exactly once
    for f in folds:
        assert len(np.intersect1d(f.train_rows, f.valid_rows)) == 0
        assert len(f.train_rows) + len(f.valid_rows) == n


@pytest.mark.parametrize("seed", range(5))
def test_multilabel_stratified_balances_every_label_where_a_random_kfold_does_not(seed):
    y = rare_label_matrix()
    folds = MultilabelStratifiedKFoldSplit(n_splits=5, seed=seed).split(y, len(y))
    assert_partition(folds, len(y))
    assert worst_label_imbalance([f.valid_rows for f in folds], y, 5) <= 1.0
    random_kfold = KFold(5, shuffle=True, random_state=seed).split(np.zeros(len(y)))
    assert worst_label_imbalance([v for _, v in random_kfold], y, 5) > 1.0


def test_multilabel_stratified_runs_through_make_folds_on_a_multilabel_task():
    y = rare_label_matrix(100)
    names = ["a", "b", "c", "d", "e"]
    cells = ["|".join(n for n, on in zip(names, row) if on) or "a" for row in y]
    labels = LabelSpace.fit(cells, "multilabel")
    encoded = labels.encode(cells, "t")
    folds, table = make_folds(MultilabelStratifiedKFoldSplit(n_splits=4), labels, encoded)
    assert_partition(folds, len(y))
    assert worst_label_imbalance([f.valid_rows for f in folds], encoded, 4) <= 1.0
    assert list(table.columns) == ["row", "fold"] and len(table) == len(y)


def test_multilabel_stratified_on_single_label_classes_stratifies_them():
    y = np.repeat([0, 1, 2], [30, 12, 6])
    folds = MultilabelStratifiedKFoldSplit(n_splits=3).split(y, len(y))
    for f in folds:
        assert np.bincount(y[f.valid_rows], minlength=3).tolist() == [10, 4, 2]


def groups_and_classes(n_groups: int = 30, seed: int = 0):
    """Groups of 1-6 rows; each group's rows share a class (as an author writes about one topic)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    classes = np.repeat(np.arange(n_groups) % 3, sizes)
    order = rng.permutation(len(groups))  # groups interleaved in the file
    return groups[order], classes[order]


@pytest.mark.parametrize("splitter_cls", [GroupKFoldSplit, StratifiedGroupKFoldSplit])
@pytest.mark.parametrize("repeats", [1, 2])
def test_group_folds_never_split_a_group(splitter_cls, repeats):
    groups, classes = groups_and_classes()
    splitter = splitter_cls(n_splits=4, repeats=repeats)
    folds = splitter.split(classes, len(groups), groups=groups)
    assert [f.index for f in folds] == list(range(4 * repeats))
    for r in range(repeats):
        assert_partition([f for f in folds if f.repeat == r], len(groups))
    for f in folds:
        assert not set(groups[f.train_rows]) & set(groups[f.valid_rows]), f"fold {f.index} splits a group"


def test_stratified_group_keeps_every_class_in_every_fold():
    groups, classes = groups_and_classes(n_groups=60)
    folds = StratifiedGroupKFoldSplit(n_splits=4).split(classes, len(groups), groups=groups)
    overall = np.bincount(classes) / len(classes)
    for f in folds:
        share = np.bincount(classes[f.valid_rows], minlength=3) / len(f.valid_rows)
        assert (share > 0).all() and np.abs(share - overall).max() < 0.15


def test_group_splitter_without_groups_is_an_error():
    with pytest.raises(TextclfError, match="data.group_col"):
        GroupKFoldSplit(n_splits=3).split(None, 30)


def test_repeats_number_folds_across_repeats_and_reshuffle():
    y = np.repeat([0, 1, 2], 10)
    once = StratifiedKFoldSplit(n_splits=3, seed=5).split(y, len(y))
    folds = StratifiedKFoldSplit(n_splits=3, seed=5, repeats=3).split(y, len(y))
    assert [(f.index, f.repeat) for f in folds] == [(r * 3 + j, r) for r in range(3) for j in range(3)]
    for r in range(3):
        assert_partition(folds[3 * r:3 * r + 3], len(y))
    # repeat 0 is the un-repeated split; later repeats shuffle anew
    assert all(np.array_equal(a.valid_rows, b.valid_rows) for a, b in zip(once, folds[:3]))
    assert not all(np.array_equal(a.valid_rows, b.valid_rows) for a, b in zip(folds[:3], folds[3:6]))


def test_a_subset_of_folds_counts_across_repeats_and_folds_csv_still_records_all():
    y = np.repeat([0, 1], 10)
    labels = LabelSpace.fit(["a"] * 10 + ["b"] * 10)
    splitter = StratifiedKFoldSplit(n_splits=2, repeats=2, folds=[1, 3])
    folds, table = make_folds(splitter, labels, y)
    assert [f.index for f in folds] == [1, 3]
    assert len(table) == 2 * len(y) and sorted(table["fold"].unique()) == [0, 1, 2, 3]
    assert (table.groupby("row").size() == 2).all()  # once per repeat


@pytest.mark.parametrize("kwargs, message", [
    (dict(repeats=0), "kfold.repeats"),
    (dict(repeats=2, shuffle=False), "shuffle"),
    (dict(n_splits=2, repeats=2, folds=[4]), "folds 0 to 3"),
])
def test_bad_kfold_settings_are_clear_errors(kwargs, message):
    with pytest.raises(TextclfError, match=message):
        StratifiedKFoldSplit(**kwargs)


# ----------------------------------------------------------------------------- folds.csv reuse
def multiclass(n: int = 30):
    names = ["x", "y", "z"]
    raw = [names[i % 3] for i in range(n)]
    labels = LabelSpace.fit(raw)
    return labels, labels.encode(raw, "t")


def test_an_existing_folds_csv_is_reused_even_when_the_seed_would_split_differently(tmp_path, caplog):
    labels, y = multiclass()
    first, table = make_folds(StratifiedKFoldSplit(n_splits=3, seed=1), labels, y, run_dir=tmp_path)
    table.to_csv(tmp_path / "folds.csv", index=False)
    fresh, _ = make_folds(StratifiedKFoldSplit(n_splits=3, seed=2), labels, y)
    assert not all(np.array_equal(a.valid_rows, b.valid_rows) for a, b in zip(first, fresh))
    with caplog.at_level(logging.INFO, logger="textclf.engine.kfold"):
        again, table2 = make_folds(StratifiedKFoldSplit(n_splits=3, seed=2), labels, y, run_dir=tmp_path)
    assert "reusing" in caplog.text
    assert all(np.array_equal(a.valid_rows, b.valid_rows) and np.array_equal(a.train_rows, b.train_rows)
               for a, b in zip(first, again))
    assert table2.equals(table)


def test_a_reused_folds_csv_with_repeats_and_a_holdout(tmp_path):
    labels, y = multiclass()
    first, table = make_folds(StratifiedKFoldSplit(n_splits=3, repeats=2), labels, y)
    table.to_csv(tmp_path / "folds.csv", index=False)
    again, _ = make_folds(StratifiedKFoldSplit(n_splits=3, repeats=2, folds=[4]), labels, y, run_dir=tmp_path)
    assert [f.index for f in again] == [4] and again[0].repeat == 1
    assert np.array_equal(again[0].valid_rows, first[4].valid_rows)

    holdout_dir = tmp_path / "holdout"
    holdout_dir.mkdir()
    (h,), table = make_folds(Holdout(0.2, seed=3), labels, y)
    table.to_csv(holdout_dir / "folds.csv", index=False)
    (h2,), _ = make_folds(Holdout(0.2, seed=4), labels, y, run_dir=holdout_dir)
    assert np.array_equal(h.valid_rows, h2.valid_rows) and np.array_equal(h.train_rows, h2.train_rows)


def test_a_folds_csv_for_other_data_or_other_folds_is_a_clear_error(tmp_path):
    labels, y = multiclass()
    _, table = make_folds(StratifiedKFoldSplit(n_splits=3), labels, y)
    table.to_csv(tmp_path / "folds.csv", index=False)
    small_labels, small_y = multiclass(24)
    with pytest.raises(TextclfError, match="describes 30 training rows but data.train_file has 24"):
        make_folds(StratifiedKFoldSplit(n_splits=3), small_labels, small_y, run_dir=tmp_path)
    with pytest.raises(TextclfError, match="holds folds 0-2, but the configuration makes folds 0-4"):
        make_folds(StratifiedKFoldSplit(n_splits=5), labels, y, run_dir=tmp_path)
    (tmp_path / "folds.csv").write_text("row,split\n0,1\n")
    with pytest.raises(TextclfError, match="needs columns row and fold"):
        make_folds(StratifiedKFoldSplit(n_splits=3), labels, y, run_dir=tmp_path)


# ----------------------------------------------------------------------------- the group column
def data_cfg(path, group_col="author"):
    return OmegaConf.create({"train_file": str(path), "group_col": group_col, "encoding": "utf-8",
                             "encoding_errors": "replace"})


def write_grouped(tmp_path, authors):
    frame = pd.DataFrame({"text": [f"t {i}" for i in range(len(authors))], "label": ["x", "y"] * (len(authors) // 2),
                          "author": authors})
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    return path


def test_group_ids_are_read_from_the_training_table(tmp_path):
    authors = [f"a{i // 2:03d}" for i in range(12)]  # zero-padded ids stay strings
    path = write_grouped(tmp_path, authors)
    labels = LabelSpace.fit(["x", "y"] * 6)
    y = labels.encode(["x", "y"] * 6, "t")
    folds, _ = make_folds(GroupKFoldSplit(n_splits=3), labels, y, data_cfg=data_cfg(path))
    groups = np.asarray(authors)
    for f in folds:
        assert not set(groups[f.train_rows]) & set(groups[f.valid_rows])


@pytest.mark.parametrize("authors, group_col, message", [
    (["a", "b", "c", "d"], None, "needs data.group_col"),
    (["a", "b", "c", "d"], "writer", "no column data.group_col='writer'; its columns are: text, label, author"),
    (["a", "", "c", "d"], "author", "1 empty cell.*data row.* 2"),
    (["a", "a", "b", "b"], "author", "2 distinct group.*fewer than kfold.n_splits=3"),
])
def test_bad_group_columns_are_clear_errors(tmp_path, authors, group_col, message):
    path = write_grouped(tmp_path, authors)
    labels = LabelSpace.fit(["x", "y"] * 2)
    y = labels.encode(["x", "y"] * 2, "t")
    with pytest.raises(TextclfError, match=message):
        make_folds(StratifiedGroupKFoldSplit(n_splits=3), labels, y, data_cfg=data_cfg(path, group_col))
