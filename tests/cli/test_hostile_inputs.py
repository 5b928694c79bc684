"""The hostile-input corpus: files a user really hands to `textclf train`, and what the user sees.

REFUSED cases must end with a non-zero exit and one message naming what is wrong (no traceback), before any
model loads (model.name_or_path points nowhere: a message about the model would mean the data check came too
late), and leave no run folder that looks finished (no run.json). ACCEPTED cases are awkward but valid
files: they train on the tiny model (warnings where something deserves a look).

One line per case: name -> (make the files, extra overrides, patterns the console output must contain).
"""
from __future__ import annotations

import gzip
import json
import re

import pandas as pd
import pytest
from conftest import (assert_refused_clearly, describe, make_frame, run_concurrently,
                      run_textclf, selected_cases, tiny_overrides, write_frame)

pytestmark = pytest.mark.slow

NO_MODEL = "/nonexistent/textclf-hostile-model"
BASE = ["train", "data=csv", "data.train_file=train.csv", f"model.name_or_path={NO_MODEL}", "trainer.device=cpu",
        "hydra.run.dir=run"]


def _xlsx(path):
    """The parts of an .xlsx that matter here: a zip archive with an xl/ folder (no spreadsheet package needed)."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
        z.writestr("xl/worksheets/sheet1.xml", "<worksheet/>")


def table(d, name="train.csv", edit=None, n=30):
    frame = make_frame(n, seed=7).astype(object)
    if edit:
        frame = edit(frame)
    write_frame(frame, d / name)


def cell(row, col, value):
    def edit(frame):
        frame.loc[row, col] = value
        return frame
    return edit


def write(name, data: bytes | str):
    def setup(d):
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return setup


GOOD_ROWS = "goal match team,sport\nstock bank price,business\nvote party,politics\n" * 3

REFUSED = {
    # user sees: data.train_file 'train.csv' is empty (0 bytes)
    "empty_file": (write("train.csv", b""), [], ["train.csv", r"empty \(0 bytes\)"]),
    # user sees: ... has no rows (only a header)
    "header_only": (write("train.csv", "text,label\n"), [], ["train.csv", "no rows", "only a header"]),
    # user sees: no column data.text_col='body'; its columns are: text, label
    "missing_text_column": (table, ["data.text_col=body"], ["body", r"columns are: text, label"]),
    # user sees: no column data.label_col='stars'; its columns are: text, label
    "missing_label_column": (table, ["data.label_col=stars"], ["stars", r"columns are: text, label"]),
    # user sees: column 'label' has 1 missing label(s), at data row(s) 5
    "nan_label": (lambda d: table(d, edit=cell(4, "label", float("nan"))), [], ["'label'", r"row\(s\) 5\b"]),
    # user sees: column 'text' has 1 empty or missing text cell(s), at data row(s) 3
    "nan_text": (lambda d: table(d, edit=cell(2, "text", float("nan"))), [], ["'text'", r"row\(s\) 3\b"]),
    # user sees: the label column has only one class ('sport'); a classifier needs at least two
    "single_class_file": (lambda d: table(d, edit=lambda f: f.assign(label="sport")), [],
                          ["only one class", "sport"]),
    # user sees: data.valid_file 'valid.csv': unknown label 'cooking' at row 3 ...
    "unknown_label_in_valid": (lambda d: (table(d), table(d, "valid.csv", cell(2, "label", "cooking"))),
                               ["data.valid_file=valid.csv"], ["valid.csv", "cooking", r"row 3\b"]),
    # user sees: data.test_file 'test.csv': unknown label 'cooking' at row 2 ...
    "unknown_label_in_test": (lambda d: (table(d), table(d, "test.csv", cell(1, "label", "cooking"))),
                              ["data.test_file=test.csv"], ["test.csv", "cooking", r"row 2\b"]),
    # user sees: data.train_file 'train.csv' looks like a binary file (it contains NUL bytes), not csv text
    "binary_garbage": (write("train.csv", bytes(range(256)) * 40), [], ["train.csv", "binary file"]),
    # user sees: ... is not valid utf-8 (byte 24): set data.encoding (e.g. cp1252) or data.encoding_errors=replace
    "latin1_file_strict": (write("train.csv", ("text,label\ncafé crème goal,sport\n" + GOOD_ROWS).encode("latin-1")),
                           ["data.encoding_errors=strict"], ["train.csv", "not valid utf-8", "data.encoding"]),
    # user sees: no column ...; its columns are: text;label (one column only: the file seems to be separated by ';' ...)
    "semicolon_delimited_csv": (write("train.csv", "text;label\n" + GOOD_ROWS.replace(",", ";")), [],
                                ["separated by ';'"]),
    # user sees: ... has duplicated column names: 'label' (columns 2 and 3); rename them
    "duplicated_column_names": (write("train.csv", "text,label,label\n" + GOOD_ROWS.replace("\n", ",x\n")), [],
                                ["duplicated column names", "'label'"]),
    # user sees: class(es) 'weather' (1 rows) have fewer rows than kfold.n_splits=3; lower n_splits or add rows
    "label_with_one_row_kfold": (lambda d: table(d, edit=cell(0, "label", "weather")),
                                 ["kfold=stratified", "kfold.n_splits=3"], ["weather", "n_splits"]),
    # user sees: class(es) 'weather' (1) have fewer than 2 rows, too few to hold any out for validation
    "label_with_one_row_holdout": (lambda d: table(d, edit=cell(0, "label", "weather")), [],
                                   ["weather", "fewer than 2 rows"]),
    # user sees: data.train_file 'nothere.csv' does not exist (looked at /...)
    "missing_file": (None, ["data.train_file=nothere.csv"], ["nothere.csv", "does not exist"]),
    # user sees: data.train_file 'train.csv' is a folder, not a file
    "folder_not_file": (lambda d: (d / "train.csv").mkdir(), [], ["is a folder"]),
    # user sees: unknown file type '.xlsx'; use one of .csv, .json, .jsonl, .parquet, .tsv, .txt
    "excel_file": (write("train.xlsx", b"PK\x03\x04 not really"), ["data.train_file=train.xlsx"],
                   ["unknown file type", ".xlsx"]),
    # user sees: could not be read as jsonl: ...
    "malformed_jsonl": (write("train.jsonl", '{"text": "goal", "label": "sport"}\n{"text": "oops", \n'),
                        ["data.train_file=train.jsonl"], ["train.jsonl", "could not be read as jsonl"]),
    # user sees: could not be read as parquet: ...
    "corrupt_parquet": (write("train.parquet", b"PAR1 this is not parquet"), ["data.train_file=train.parquet"],
                        ["train.parquet", "could not be read as parquet"]),
    # user sees: could not be read as csv: ... (not a gzipped file)
    "fake_gzip": (write("train.csv.gz", "text,label\n" + GOOD_ROWS), ["data.train_file=train.csv.gz"],
                  ["train.csv.gz", "could not be read"]),
    # user sees: could not be read as csv: Error tokenizing data. C error: Expected 2 fields in line 3, saw 3
    "ragged_row": (write("train.csv", "text,label\ngoal,sport\nstock,business,extra\n" + GOOD_ROWS), [],
                   ["train.csv", "Expected 2 fields"]),
    # user sees: ... regression targets must be finite numbers ... row ...
    "infinite_regression_target": (write("train.csv", "text,label\n" + "".join(
        f"text number {i},{'inf' if i == 3 else i / 10}\n" for i in range(12))), ["task=regression"],
        ["train.csv", r"row"]),
    # user sees: task=binary but data.train_file 'train.csv' has 3 classes: ['business', 'politics', 'sport']
    "binary_task_three_classes": (table, ["task=binary"], ["task=binary", "3 classes"]),
    # user sees: the label column holds non-integer numbers (e.g. 0.5); use task=regression ...
    "fractional_labels_as_classes": (write("train.csv", "text,label\n" + "".join(
        f"text {i},{0.5 if i % 2 else 1.5}\n" for i in range(12))), ["task=multiclass"], ["non-integer"]),
    # user sees: no column data.text_pair_col='hypothesis'; its columns are: text, label
    "missing_pair_column": (table, ["data.text_pair_col=hypothesis"], ["hypothesis"]),
    # user sees: multilabel: column 'label' has 1 missing label(s), at data row(s) 2
    "multilabel_empty_label_list": (write("train.jsonl", "\n".join(json.dumps(
        {"text": f"text {i}", "label": [] if i == 1 else ["a", "b"][: 1 + i % 2]}) for i in range(12)) + "\n"),
        ["data.train_file=train.jsonl"], [r"row\(s\) 2\b"]),

    # ---- labels are read as written: numbers only when every label is one (pandas merged these spellings)
    # user sees: data.train_file 'train.csv': labels '01' and '1' would be the same class once read as numbers; write
    # them one way, or, if they are different classes, make them text (e.g. 'c01' and 'c1': ...)
    "labels_01_and_1": (write("train.csv", "text,label\n" + "".join(
        f"text number {i},{['01', '1', '2'][i % 3]}\n" for i in range(12))), [],
        ["train.csv", "labels '01' and '1' would be the same class once read as numbers", "write them one way"]),
    # user sees: ...: labels 'True' and 'true' would be the same class once read as true/false (...); write them one way
    "labels_True_and_true": (write("train.csv", "text,label\n" + "".join(
        f"text number {i},{['True', 'true', 'False'][i % 3]}\n" for i in range(12))), [],
        ["train.csv", "labels 'True' and 'true' would be the same class", "write them one way"]),

    # ---- one column, two roles (it used to train on the labels as text)
    # user sees: invalid configuration: - data.text_col and data.label_col: both name column 'label', but a column
    # can have only one role: point data.text_col at the column that holds the texts, or data.label_col at ...
    "text_col_is_the_label_col": (table, ["data.text_col=label"],
                                  ["data.text_col and data.label_col", "column 'label'", "only one role"]),
    # user sees: - data.text_col and data.text_pair_col: both name column 'text', ...
    "pair_col_is_the_text_col": (table, ["data.text_pair_col=text"],
                                 ["data.text_col and data.text_pair_col", "column 'text'", "only one role"]),
    # user sees: - data.label_col and data.group_col: both name column 'label', ... (every fold would validate on
    # classes it never trained on)
    "group_col_is_the_label_col": (table, ["data.group_col=label", "kfold=group", "kfold.n_splits=2"],
                                   ["data.label_col and data.group_col", "column 'label'"]),
    # user sees: - data.label_col: lists column 'label' twice; name each column once
    "label_col_list_repeats_a_column": (table, ["data.label_col=[label,label]"], ["data.label_col", "twice"]),
    # user sees: data.label_col names 2 columns; several label columns mean task=regression (got task=multiclass)
    "label_col_list_for_classes": (lambda d: table(d, edit=lambda f: f.assign(topic=f.label)),
                                   ["data.label_col=[label,topic]", "task=multiclass"],
                                   ["data.label_col", "task=regression"]),

    # ---- a file that is not what its name says
    # user sees: no column data.text_col='text', data.label_col='label'; its columns are: text<TAB>label (one column
    # only: the file seems to be separated by '\t', not by what its extension says; save it as .tsv)
    "tsv_named_csv": (write("train.csv", "text\tlabel\n" + GOOD_ROWS.replace(",", "\t")), [],
                      ["train.csv", r"separated by '\\t'", r"\.tsv"]),
    # user sees: data.train_file 'train.csv' is an Excel workbook, not csv text: save it as CSV (Excel: File >
    # Save As > CSV UTF-8) and use that file
    "excel_workbook_named_csv": (lambda d: _xlsx(d / "train.csv"), [],
                                 ["train.csv", "Excel workbook", "save it as CSV"]),
    # user sees: data.train_file 'train.csv' is gzip-compressed, not plain csv text: rename it to train.csv.gz (...)
    "gzip_without_gz_name": (write("train.csv", gzip.compress(("text,label\n" + GOOD_ROWS).encode())), [],
                             ["train.csv", "gzip-compressed", r"rename it to train\.csv\.gz"]),
    # user sees: data.train_file 'data' is a folder, not a file: give one table file, e.g. data.train_file=data/a.csv
    # (it holds 2 tables)
    "folder_of_tables": (lambda d: (table(d, "data/a.csv"), table(d, "data/b.csv")), ["data.train_file=data"],
                         ["is a folder", "data.train_file=data/a.csv"]),
    # user sees: data.train_file=~/textclf-hostile.csv: cannot parse this override (...); a value starting with ~
    # (your home folder) must be quoted: "data.train_file='~/textclf-hostile.csv'" (or write the full path); ...
    "unquoted_home_path": (None, ["data.train_file=~/textclf-hostile.csv"], ["must be quoted", "'~/textclf-hostile"]),

    # ---- headers
    # user sees: no column data.text_col='text', data.label_col='label'; its columns are: review, stars; set
    # data.text_col and data.label_col to the columns to use
    "other_column_names": (lambda d: write_frame(make_frame(30, seed=7).rename(columns={"text": "review",
                                                                                         "label": "stars"}),
                                                 d / "train.csv"), [],
                           ["review, stars", "set data.text_col and data.label_col"]),
    # user sees: ...; its columns are: Text, Label; did you mean data.text_col='Text', data.label_col='Label'?
    "header_in_other_case": (lambda d: write_frame(make_frame(30, seed=7).rename(columns=str.title), d / "train.csv"),
                             [], ["did you mean data.text_col='Text'"]),
    # user sees: ...; its columns are: goal match team, sport (the first row looks like data, not a header: add a
    # header line naming the columns, e.g. text,label)
    "no_header_line": (write("train.csv", GOOD_ROWS), [], ["first row looks like data", "add a header line"]),
    # user sees: data.test_file 'test.csv': no column data.text_col='text'; its columns are: body, label; set
    # data.text_col to the column to use  (the test file alone was exported differently)
    "test_file_without_text_column": (lambda d: (table(d), write_frame(
        make_frame(12, seed=2).rename(columns={"text": "body"}), d / "test.csv")), ["data.test_file=test.csv"],
        ["test.csv", "no column data.text_col='text'", "body, label"]),

    # ---- cells
    # user sees: column 'label' has 2 missing label(s), at data row(s) 4, 8 (cells like 'n/a', 'null' in a column of
    # numbers; remove those rows or fill in their labels)  -- they used to become classes of their own
    "numbers_with_na_words": (write("train.csv", "text,label\n" + "".join(
        f"text number {i},{('n/a' if i == 3 else 'null') if i in (3, 7) else i / 10}\n" for i in range(20))), [],
        ["missing label", r"row\(s\) 4, 8\b", "'n/a', 'null'"]),
    "numbers_with_na_words_regression": (write("train.csv", "text,label\n" + "".join(
        f"text number {i},{('n/a' if i == 3 else 'null') if i in (3, 7) else i / 10}\n" for i in range(20))),
        ["task=regression"], ["missing label", r"row\(s\) 4, 8\b"]),
    # user sees: column 'text' has 30 empty or missing text cell(s), at data row(s) 1, 2, ... 10 …
    "all_texts_blank": (lambda d: table(d, edit=lambda f: f.assign(text="   ")), [], ["'text'", "30 empty"]),
    # user sees: data row 1 has target 'sport', which is not a number
    "regression_on_class_names": (table, ["task=regression"], ["not a number", "'sport'"]),

    # ---- leakage
    # user sees: data.valid_file 'train.csv' is the same file as data.train_file: every validation row would also be
    # trained on, so the scores (and the best epoch) would measure memory, not new data; give a separate ...
    "valid_file_is_train_file": (table, ["data.valid_file=train.csv"], ["same file as data.train_file"]),
    # user sees: data.valid_file 'valid.csv': every one of its 30 rows also appears in data.train_file (same text) ...
    "valid_file_is_a_copy_of_train": (lambda d: (table(d), table(d, "valid.csv")), ["data.valid_file=valid.csv"],
                                      ["valid.csv", "every one of its 30 rows", "data.train_file"]),

    # ---- folds
    # user sees: data.train_file: class(es) 'a' (1 rows), 'b' (1 rows), ... have fewer rows than kfold.n_splits=2
    "more_classes_than_rows": (write("train.csv", "text,label\ngoal,a\nbank,b\nvote,c\nscore,d\n"),
                               ["kfold=stratified", "kfold.n_splits=2"], ["fewer rows than kfold.n_splits=2"]),
    # user sees: kfold.n_splits must be at least 2, got 1
    "one_fold_kfold": (table, ["kfold=stratified", "kfold.n_splits=1"], ["kfold.n_splits", "at least 2"]),
    # user sees: kfold.folds=[3]: fold(s) [3] do not exist with n_splits=2 (folds 0 to 1)
    "fold_beyond_n_splits": (table, ["kfold=stratified", "kfold.n_splits=2", "kfold.folds=[3]"],
                             [r"kfold.folds=\[3\]", "folds 0 to 1"]),

    # ---- options
    # user sees: invalid configuration: - data.train_file: required (e.g. data.train_file=train.csv)
    "csv_data_without_a_file": (table, ["data.train_file="], ["data.train_file: required"]),
    # user sees: - trainer.batch_size: must be an integer >= 1, got -1
    "negative_batch_size": (table, ["trainer.batch_size=-1"], ["trainer.batch_size", ">= 1", "-1"]),
    # user sees: - data.label_sep: must be a non-empty separator (multilabel cells are split on it)
    "empty_label_sep": (table, ['data.label_sep=""'], ["data.label_sep", "non-empty"]),
    # user sees (CPU machine): trainer.device=cuda:5 but no CUDA device is available; use device=cpu or auto
    # (a machine with fewer GPUs: trainer.device=cuda:5 but this machine has 1 CUDA device(s) (cuda:0); ...)
    "missing_gpu": (table, ["trainer.device=cuda:5"], ["trainer.device=cuda:5"]),
    # user sees: model.name_or_path 'pytorch_model.bin' is a file, not a model folder: give the folder that holds
    # config.json, the weights and the tokenizer files (as save_pretrained writes them)
    "model_path_is_a_file": (lambda d: (table(d), (d / "pytorch_model.bin").write_bytes(b"weights")),
                             ["model.name_or_path=pytorch_model.bin"], ["'pytorch_model.bin' is a file"]),
    # user sees: model.name_or_path 'mymodel' is an empty folder: give the folder that holds config.json, ...
    "model_path_is_an_empty_folder": (lambda d: (table(d), (d / "mymodel").mkdir()), ["model.name_or_path=mymodel"],
                                      ["'mymodel' is an empty folder"]),
}

# awkward but valid: they must train (tiny model), with a warning where one is due
ACCEPTED = {
    # a 1 MB cell, commas/quotes/newlines inside quoted text, CRLF line ends, a UTF-8 byte-order mark, and a
    # text repeated with two labels (warned about, with its rows)
    "long_cells_quotes_crlf_bom_conflicts": (
        lambda d: (d / "train.csv").write_bytes(b"\xef\xbb\xbf" + make_frame(60, seed=3).assign(
            text=lambda f: f.text.where(f.index != 0, "goal " * 200_000)).assign(
            text=lambda f: f.text.where(f.index != 1, 'a "quoted", comma\nand a new line'))
            .pipe(lambda f: pd.concat([f, pd.DataFrame([{"text": "vote party", "label": "sport"},
                                                        {"text": "vote party", "label": "politics"}])]))
            .to_csv(index=False, lineterminator="\r\n").encode("utf-8")),
        [], ["appear more than once with different labels"]),
    # numbers in the text column of a JSON file are text
    "numbers_as_text": (lambda d: write_frame(make_frame(60, seed=4).assign(
        text=lambda f: f.text.where(f.index % 10 != 0, 12345)), d / "train.jsonl"),
        ["data.train_file=train.jsonl"], []),
    # a Latin-1 file read as UTF-8 with replacement (the default): a warning says how to fix it
    "latin1_file_default": (lambda d: (d / "train.csv").write_bytes(
        ("text,label\n" + "".join(f"café {r.text},{r.label}\n" for r in make_frame(60, seed=5).itertuples()))
        .encode("latin-1")), [], ["U\\+FFFD", "data.encoding"]),
    # a JSON array of records (json.dump(rows)) named .json, not JSON lines: read as one row per object
    "json_array_file": (lambda d: (d / "train.json").write_text(make_frame(60, seed=6).to_json(orient="records",
                                                                                                indent=2)),
                        ["data.train_file=train.json"], []),
    # a path with spaces (quoted once on the command line, nothing else)
    "path_with_spaces": (lambda d: write_frame(make_frame(60, seed=6), d / "my data" / "train file.csv"),
                         ["data.train_file=my data/train file.csv"], []),
    # a test file that is the training file: trains, with a warning that its scores are in-sample
    "test_file_is_train_file": (lambda d: write_frame(make_frame(60, seed=6), d / "train.csv"),
                                ["data.test_file=train.csv"], ["is the same file as data.train_file", "in-sample"]),
    # a validation file that shares some rows with the training file: trains, with the shared rows counted
    "valid_file_overlaps_train": (lambda d: (write_frame(make_frame(60, seed=6), d / "train.csv"), write_frame(
        pd.concat([make_frame(60, seed=6).head(4), make_frame(30, seed=9)]), d / "valid.csv")),
        ["data.valid_file=valid.csv"], [r"has \d+ of its 34 rows also in data.train_file", "in-sample"]),
    # a label written in two Unicode forms (NFC and NFD 'café' look the same): one class, with a warning naming both
    "unicode_forms_of_one_label": (lambda d: write_frame(make_frame(60, seed=6).assign(label=lambda f: [
        ("caf\u00e9" if i % 2 else "cafe\u0301") if label == "politics" else label
        for i, label in enumerate(f.label)]), d / "train.csv"), [],
        ["two Unicode forms", r"'cafe\\u0301' and 'caf\\xe9'", "3 classes: business, caf\u00e9, sport"]),
    # a Parquet text column of word lists (["goal", "match"]): joined with spaces into texts, and said so
    "parquet_word_lists_as_text": (lambda d: write_frame(make_frame(60, seed=6).assign(
        text=lambda f: f.text.str.split()), d / "train.parquet"), ["data.train_file=train.parquet"],
        ["holds lists of words in 60 row", "joined with spaces"]),
    # augment=eda on texts of one word: their copies would be the texts themselves; left out, counted in a warning
    "eda_on_one_word_texts": (lambda d: write_frame(make_frame(60, seed=6).assign(
        text=lambda f: f.text.where(f.index % 3 != 0, f.text.str.split().str[0])), d / "train.csv"),
        ["augment=eda", "augment.ops=[delete]"],
        [r"augment=eda: 20 of 60 copies are identical to their original text", "40 copies train"]),
    # 'n/a' used as a class name among class names: kept (it may be a real class), with a warning
    "na_word_among_class_names": (lambda d: write_frame(make_frame(60, seed=6).assign(
        label=lambda f: f.label.where(f.index % 10 != 0, "n/a")), d / "train.csv"), [], ["kept as class names"]),
}


def _run(name, root, tiny_bert):
    refused = name in REFUSED
    setup, extra, _ = REFUSED[name] if refused else ACCEPTED[name]
    cwd = root / name
    cwd.mkdir()
    if setup:
        setup(cwd)
    if refused:
        args = [*BASE, *extra]
        trained = run_textclf(args, cwd, timeout=300)
        # `textclf validate` with the same overrides must refuse it too, with the same message (one check path)
        return trained, cwd, run_textclf(["validate", *args[1:]], cwd, timeout=300)
    args = ["train", "data=csv", "data.train_file=train.csv", *extra, *tiny_overrides(tiny_bert, cwd / "run")]
    return run_textclf(args, cwd, timeout=300), cwd, None


@pytest.fixture(scope="module")
def results(request, tiny_bert, tmp_path_factory):
    """Run the cases selected in this session (all of them in a full run), a few at a time."""
    root = tmp_path_factory.mktemp("hostile")
    names = selected_cases(request) or list(REFUSED) + list(ACCEPTED)
    return run_concurrently(names, lambda name: _run(name, root, tiny_bert))


def test_the_corpus_is_large_enough():
    assert len(REFUSED) + len(ACCEPTED) >= 60


@pytest.mark.parametrize("case", list(REFUSED))
def test_hostile_input_is_refused_with_one_clear_message(results, case):
    (rc, out, err), cwd, _ = results[case]
    assert_refused_clearly(rc, out, err, REFUSED[case][2], no_model=NO_MODEL)
    assert not (cwd / "run" / "run.json").exists(), "a refused run left a folder that looks finished"


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("textclf: error:")]
    return lines[0] if lines else ""


@pytest.mark.parametrize("case", list(REFUSED))
def test_validate_refuses_it_with_the_same_message(results, case):
    trained, _, validated = results[case]
    assert validated[0] == 2, f"validate accepted what train refuses:\n{describe(validated)}"
    assert error_line(validated[2]) == error_line(trained[2]) != "", (describe(validated), describe(trained))


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_awkward_but_valid_input_trains(results, case):
    (rc, out, err), cwd, _ = results[case]
    console = out + err + ((cwd / "run" / "train.log").read_text() if (cwd / "run" / "train.log").exists() else "")
    assert rc == 0, describe((rc, out, err))
    assert (cwd / "run" / "run.json").exists()
    for pattern in ACCEPTED[case][2]:
        assert re.search(pattern, console), f"{pattern!r} not in the output:\n{console[-2500:]}"


def test_predict_reads_the_label_column_as_train_did(tiny_bert, tmp_path):
    """A run trained on the labels 1 and 2 of a CSV file scores a JSONL file whose labels are the strings "1" and "2":
    predict reads labels with train's rule (numbers when every label is one), so they are its classes, not unknown
    labels refused with 'known labels: 1, 2'."""
    frame = make_frame(60, seed=6).assign(label=lambda f: f.label.map({"sport": 1, "business": 2, "politics": 2}))
    write_frame(frame, tmp_path / "train.csv")
    (tmp_path / "new.jsonl").write_text("".join(json.dumps({"text": r.text, "label": str(r.label)}) + "\n"
                                                for r in frame.head(12).itertuples()), encoding="utf-8")
    trained = run_textclf(["train", "data=csv", "data.train_file=train.csv",
                           *tiny_overrides(tiny_bert, tmp_path / "run")], tmp_path)
    assert trained[0] == 0, describe(trained)
    assert json.loads((tmp_path / "run" / "labels.json").read_text())["classes"] == [1, 2]
    predicted = run_textclf(["predict", f"run_dir={tmp_path / 'run'}", "input=new.jsonl", "output=p.csv",
                             "device=cpu"], tmp_path)
    assert predicted[0] == 0, describe(predicted)
    assert "accuracy" in json.loads(predicted[1][predicted[1].index("{"):])
    assert len(pd.read_csv(tmp_path / "p.csv")) == 12
