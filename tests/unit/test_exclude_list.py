"""data.exclude_rows (textclf.data.exclude): reading the list of rows, leaving them out of the training split with
their original numbers kept, the refusals, and the folds and input fingerprints that follow the rows left."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from textclf.data.exclude import exclude_path, exclude_rows, excluded_note, read_row_numbers
from textclf.data.tables import LabelSpace, Split
from textclf.engine.kfold import StratifiedGroupKFoldSplit, StratifiedKFoldSplit, make_folds
from textclf.errors import TextclfError

CLASSES = ["a", "b", "c"]


def split_of(n: int = 30) -> tuple[Split, LabelSpace, np.ndarray]:
    """n rows cycling a, b, c; the text of row i is 'text i'."""
    labels = [CLASSES[i % 3] for i in range(n)]
    space = LabelSpace.fit(labels, "auto", where="train.csv")
    return Split("train", "train.csv", [f"text {i}" for i in range(n)], None, labels), space, space.encode(labels, "x")


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- the file
def test_a_label_issues_shaped_csv_is_read_by_its_row_column_and_duplicates_are_fine(tmp_path):
    issues = pd.DataFrame({"row": [12, 3, 12, 7], "text": ["a, quoted\nmultiline text", "b", "c", '"d"'],
                           "given_label": ["x", "y", "x", "z"], "suggested_label": ["y", "x", "y", "x"],
                           "score": [0.01, 0.2, 0.01, 0.5]})
    issues.to_csv(tmp_path / "label_issues.csv", index=False)
    assert read_row_numbers(str(tmp_path / "label_issues.csv")).tolist() == [3, 7, 12]


def test_a_tsv_by_its_suffix_a_bom_and_the_row_column_anywhere(tmp_path):
    path = tmp_path / "rows.tsv"
    path.write_bytes("\ufeffscore\trow\n0.5\t4\n0.1\t1\n".encode("utf-8"))
    assert read_row_numbers(str(path)).tolist() == [1, 4]


def test_a_text_file_of_one_number_per_line_with_an_optional_header_and_blank_lines(tmp_path):
    assert read_row_numbers(write(tmp_path / "rows.txt", "row\n5\n\n 2 \n5\n")).tolist() == [2, 5]
    assert read_row_numbers(write(tmp_path / "rows", "9\n0\n")).tolist() == [0, 9]


@pytest.mark.parametrize("text", ["", "row\n", "row,text\n"])
def test_an_empty_list_excludes_nothing(tmp_path, text):
    path = write(tmp_path / "none.csv", text)
    assert read_row_numbers(path).tolist() == []
    split, space, y = split_of(9)
    kept, y_kept = exclude_rows(split, y, path, space)
    assert kept.row_numbers().tolist() == list(range(9)) and kept.excluded.tolist() == [] and len(y_kept) == 9


def test_a_missing_file_is_refused_naming_it(tmp_path):
    with pytest.raises(TextclfError, match=r"data.exclude_rows 'nope.csv' does not exist \(looked at .*nope.csv\)"):
        read_row_numbers("nope.csv")


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(TextclfError, match="is a folder, not a file"):
        read_row_numbers(str(tmp_path))


def test_a_csv_without_a_row_column_is_refused_naming_its_columns(tmp_path):
    path = write(tmp_path / "x.csv", "index,text,label\n1,a,b\n")
    with pytest.raises(TextclfError, match=r"has no column 'row'; its columns are: 'index', 'text', 'label'"):
        read_row_numbers(path)


def test_a_headerless_csv_of_numbers_is_told_to_add_the_header(tmp_path):
    with pytest.raises(TextclfError, match="first line is a row number, not a header"):
        read_row_numbers(write(tmp_path / "x.csv", "3\n5\n"))


def test_a_table_named_txt_is_told_to_be_named_csv(tmp_path):
    with pytest.raises(TextclfError, match=r"looks like a table's header; name the file \.csv"):
        read_row_numbers(write(tmp_path / "x.txt", "row,text\n1,a\n"))


def test_values_that_are_not_row_numbers_are_refused_naming_a_few(tmp_path):
    path = write(tmp_path / "x.csv", "row\n1\nabc\n-2\n2.5\n\n4\n" + "".join(f"x{i}\n" for i in range(10)))
    with pytest.raises(TextclfError) as e:
        read_row_numbers(path)
    message = str(e.value)
    assert "13 value(s) are not row numbers" in message and "whole numbers 0 or more" in message
    assert "'abc' (data row 2), '-2' (data row 3), '2.5' (data row 4)" in message and "…" in message
    assert "\n" not in message


def test_a_spreadsheets_whole_float_is_a_row_number(tmp_path):
    assert read_row_numbers(write(tmp_path / "x.csv", "row\n3.0\n+4\n")).tolist() == [3, 4]


def test_exclude_path_reads_the_key_and_an_old_config_without_it():
    assert exclude_path(OmegaConf.create({"exclude_rows": "x.csv"})) == "x.csv"
    assert exclude_path(OmegaConf.create({"exclude_rows": None})) is None
    assert exclude_path(OmegaConf.create({"train_file": "t.csv"})) is None  # a run folder's config from before


# ----------------------------------------------------------------------------- the training split
def test_the_rows_left_keep_their_original_numbers_texts_and_labels(tmp_path):
    split, space, y = split_of(30)
    kept, y_kept = exclude_rows(split, y, write(tmp_path / "x.csv", "row\n4\n0\n29\n4\n"), space)
    assert len(kept) == 27 and kept.excluded.tolist() == [0, 4, 29]
    numbers = kept.row_numbers()
    assert 0 not in numbers and 4 not in numbers and 29 not in numbers and numbers[0] == 1
    assert kept.texts == [f"text {i}" for i in numbers]  # each text is still its row's
    assert kept.labels == [CLASSES[i % 3] for i in numbers]
    assert y_kept.tolist() == y[numbers].tolist()


def test_row_numbers_beyond_the_table_are_refused_naming_them_and_its_row_count(tmp_path):
    split, space, y = split_of(30)
    with pytest.raises(TextclfError, match=r"names 2 row\(s\) beyond data.train_file 'train.csv', which has 30 data "
                                           r"rows \(0 to 29\): 30, 100"):
        exclude_rows(split, y, write(tmp_path / "x.csv", "row\n2\n30\n100\n"), space)


def test_excluding_every_row_is_refused(tmp_path):
    split, space, y = split_of(6)
    with pytest.raises(TextclfError, match="leaves out all 6 rows of data.train_file 'train.csv': nothing is left"):
        exclude_rows(split, y, write(tmp_path / "x.txt", "\n".join(map(str, range(6)))), space)


def test_excluding_every_row_of_a_class_is_refused_naming_the_class(tmp_path):
    split, space, y = split_of(12)
    every_b = "\n".join(str(i) for i in range(1, 12, 3))
    with pytest.raises(TextclfError, match=r"leaves no row of class\(es\) 'b' \(all 4 of its rows\)"):
        exclude_rows(split, y, write(tmp_path / "x.txt", every_b), space)


def test_a_multilabel_label_left_without_positive_rows_is_refused(tmp_path):
    labels = ["x|y", "x", "y", "x|z", "x", "y"]
    space = LabelSpace.fit(labels, "multilabel", where="train.csv", sep="|")
    split = Split("train", "train.csv", [f"t{i}" for i in range(6)], None, labels)
    with pytest.raises(TextclfError, match=r"class\(es\) 'z' \(all 1 of its rows\)"):
        exclude_rows(split, space.encode(labels, "x"), write(tmp_path / "x.txt", "3"), space)


def test_regression_targets_have_no_classes_to_empty(tmp_path):
    labels = ["0.5", "1.5", "2.5", "3.5"]
    space = LabelSpace.fit(labels, "regression", where="train.csv")
    split = Split("train", "train.csv", [f"t{i}" for i in range(4)], None, labels)
    kept, y_kept = exclude_rows(split, space.encode(labels, "x"), write(tmp_path / "x.txt", "0\n1"), space)
    assert kept.row_numbers().tolist() == [2, 3] and y_kept[:, 0].tolist() == [2.5, 3.5]


def test_a_class_too_small_for_the_split_says_the_rows_were_excluded(tmp_path):
    split, space, y = split_of(30)
    path = write(tmp_path / "x.txt", "\n".join(str(i) for i in range(1, 25, 3)))  # 8 of the 10 b rows
    kept, y_kept = exclude_rows(split, y, path, space)
    with pytest.raises(TextclfError) as e, excluded_note(kept, path):
        make_folds(StratifiedKFoldSplit(n_splits=3), space, y_kept, rows=kept.rows)
    message = str(e.value)
    assert "'b' (2 rows) have fewer rows than kfold.n_splits=3" in message
    assert f"8 of data.train_file's 30 rows were left out by data.exclude_rows={path}" in message


def test_a_refusal_without_excluded_rows_is_left_as_it_is():
    split, space, y = split_of(30)
    with pytest.raises(TextclfError) as e, excluded_note(split, None):
        raise TextclfError("plain")
    assert str(e.value) == "plain"


# ----------------------------------------------------------------------------- folds and fingerprints
def test_folds_csv_names_the_original_rows_and_is_reused_by_them(tmp_path):
    split, space, y = split_of(30)
    kept, y_kept = exclude_rows(split, y, write(tmp_path / "x.txt", "0\n5\n17"), space)
    folds, table = make_folds(StratifiedKFoldSplit(n_splits=3), space, y_kept, rows=kept.rows)
    assert table["row"].tolist() == kept.row_numbers().tolist()
    assert sorted(np.concatenate([f.valid_rows for f in folds]).tolist()) == list(range(27))  # positions
    table.to_csv(tmp_path / "folds.csv", index=False)
    again, table_again = make_folds(StratifiedKFoldSplit(n_splits=3), space, y_kept, rows=kept.rows, run_dir=tmp_path)
    assert [f.valid_rows.tolist() for f in again] == [f.valid_rows.tolist() for f in folds]
    assert table_again.equals(table)
    # the full table's folds.csv (rows 0-29) is not the split of the rows left
    make_folds(StratifiedKFoldSplit(n_splits=3), space, y)[1].to_csv(tmp_path / "folds.csv", index=False)
    with pytest.raises(TextclfError, match="describes other training rows than the 27 that data.exclude_rows leaves"):
        make_folds(StratifiedKFoldSplit(n_splits=3), space, y_kept, rows=kept.rows, run_dir=tmp_path)


def test_group_splits_read_the_groups_of_the_rows_left(tmp_path):
    n = 30
    frame = pd.DataFrame({"text": [f"text {i}" for i in range(n)], "label": [CLASSES[i % 3] for i in range(n)],
                          "author": [f"author{i // 3}" if i != 4 else "" for i in range(n)]})  # row 4: no group
    frame.to_csv(tmp_path / "train.csv", index=False)
    data = OmegaConf.create({"train_file": str(tmp_path / "train.csv"), "group_col": "author", "encoding": "utf-8",
                             "encoding_errors": "replace"})
    split, space, y = split_of(n)
    with pytest.raises(TextclfError, match=r"1 empty cell\(s\), at data row\(s\) 5\b"):
        make_folds(StratifiedGroupKFoldSplit(n_splits=3), space, y, data_cfg=data)
    kept, y_kept = exclude_rows(split, y, write(tmp_path / "x.txt", "4"), space)  # the row without a group
    folds, table = make_folds(StratifiedGroupKFoldSplit(n_splits=3), space, y_kept, data_cfg=data, rows=kept.rows)
    author = frame["author"].to_numpy()[kept.rows]
    for f in folds:
        assert not set(author[f.train_rows]) & set(author[f.valid_rows])


def test_inputs_json_fingerprints_the_exclude_file(tmp_path, monkeypatch):
    from textclf.run.checkpoint import data_changes, input_fingerprints
    from textclf.run.folder import INPUTS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n", encoding="utf-8")
    write(tmp_path / "issues.csv", "row,text\n1,b\n")
    data = OmegaConf.create({"train_file": "train.csv", "exclude_rows": "issues.csv"})
    split = Split("train", "train.csv", ["a", "b"], None, ["x", "y"])
    inputs = input_fingerprints(data, {"train": split})
    entry = inputs["data.exclude_rows"]
    assert entry["file"] == "issues.csv" and entry["size"] == (tmp_path / "issues.csv").stat().st_size
    assert len(entry["sha256"]) == 64
    (tmp_path / INPUTS).write_text(json.dumps(inputs), encoding="utf-8")
    write(tmp_path / "issues.csv", "row,text\n0,a\n")  # same size, other rows
    changed = data_changes(tmp_path, input_fingerprints(data, {"train": split}))
    assert len(changed) == 1 and changed[0].startswith("data.exclude_rows 'issues.csv'")
    assert "data.exclude_rows" not in input_fingerprints(OmegaConf.create({"train_file": "train.csv",
                                                                           "exclude_rows": None}), {"train": split})
