"""textclf.data.tables: reading tables, labels, tokenizing once, dynamic padding, batch order."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import model_node
from omegaconf import OmegaConf

from textclf.data.tables import (Collator, DirectEncoder, Encoded, EpochBatches, LabelSpace, length_grouped_batches,
                                 load_split, read_table, sorted_batches, tokenize)
from textclf.errors import TextclfError


def encoded_rows(rows: list[list[int]]) -> Encoded:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    return Encoded(np.concatenate([np.asarray(r, dtype=np.int32) for r in rows]), offsets)


def data_cfg(**kw):
    base = dict(text_col="text", text_pair_col=None, label_col="label", encoding="utf-8", encoding_errors="replace")
    return OmegaConf.create({**base, **kw})


# ----------------------------------------------------------------------------- Collator
ROWS = [[2, 11, 12, 3], [2, 13, 3], [2, 14, 15, 16, 17, 3], [2, 3]]


@pytest.mark.parametrize("pad_left", [False, True])
def test_collator_pads_each_batch_to_its_longest_row(pad_left):
    pad = 99
    collate = Collator(encoded_rows(ROWS), np.array([0, 1, 2, 1]), pad_id=pad, pad_left=pad_left)
    order = [3, 0, 1]  # any order: the batch keeps it
    batch = collate(order)
    width = max(len(ROWS[r]) for r in order)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, width)  # not the global max (6)
    assert batch["rows"].tolist() == order
    assert batch["labels"].tolist() == [1, 0, 1]
    for j, r in enumerate(order):
        ids, mask, n = batch["input_ids"][j].tolist(), batch["attention_mask"][j].tolist(), len(ROWS[r])
        if pad_left:
            assert ids == [pad] * (width - n) + ROWS[r]
            assert mask == [0] * (width - n) + [1] * n
        else:
            assert ids == ROWS[r] + [pad] * (width - n)
            assert mask == [1] * n + [0] * (width - n)
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long


def test_collator_without_labels_and_with_pairs():
    enc = encoded_rows(ROWS[:2])
    enc.type_ids = np.array([0, 0, 1, 1, 0, 0, 1], dtype=np.int8)
    batch = Collator(enc, None, pad_id=0)([1, 0])
    assert "labels" not in batch
    assert batch["token_type_ids"].tolist() == [[0, 0, 1, 0], [0, 0, 1, 1]]


# ----------------------------------------------------------------------------- batch order
def lengths_for(n, seed=0):
    return np.random.default_rng(seed).integers(3, 60, size=n)


def test_length_grouped_batches_cover_every_row_once():
    lengths = lengths_for(103)
    rows = np.arange(5, 103)  # a fold's subset of rows
    batches = length_grouped_batches(rows, lengths, 8, 4, np.random.default_rng(0))
    flat = [r for b in batches for r in b]
    assert sorted(flat) == rows.tolist()
    assert all(1 <= len(b) <= 8 for b in batches)
    assert len(batches) == -(-len(rows) // 8)


def test_length_grouped_batches_put_the_longest_batch_first():
    lengths = lengths_for(200, seed=1)
    for seed in range(5):
        batches = length_grouped_batches(np.arange(200), lengths, 16, 3, np.random.default_rng(seed))
        assert lengths[batches[0]].max() == lengths.max()


def test_length_grouped_batches_are_length_homogeneous():
    lengths = lengths_for(256, seed=2)
    rows = np.arange(256)
    # one window over everything: batches are consecutive runs of the length order, so their ranges do not overlap
    batches = length_grouped_batches(rows, lengths, 16, 16, np.random.default_rng(0))
    spans = sorted((lengths[b].min(), lengths[b].max()) for b in batches)
    for (lo1, hi1), (lo2, hi2) in zip(spans, spans[1:]):
        assert hi1 <= lo2, spans

    # with smaller windows, padding is still far below random batching
    def padded(bs):
        return sum(len(b) * lengths[b].max() for b in bs)

    grouped = length_grouped_batches(rows, lengths, 16, 4, np.random.default_rng(0))
    shuffled = np.random.default_rng(0).permutation(rows)
    random_batches = [shuffled[i:i + 16] for i in range(0, 256, 16)]
    assert padded(grouped) < 0.85 * padded(random_batches)


def test_epoch_batches_reshuffle_each_epoch_and_repeat_with_the_seed():
    lengths = lengths_for(120, seed=3)
    sampler = EpochBatches(np.arange(120), lengths, 8, 4, seed=42)
    sampler.set_epoch(0)
    first = list(sampler)
    assert list(sampler) == first, "same epoch, same seed: same batches"
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    assert sorted(r for b in second for r in b) == list(range(120))
    assert len(sampler) == len(first) == len(second)
    other_seed = EpochBatches(np.arange(120), lengths, 8, 4, seed=43)
    assert list(other_seed) != first


def test_sorted_batches_longest_first_and_complete():
    lengths = lengths_for(50, seed=4)
    rows = np.arange(3, 50)
    batches = sorted_batches(rows, lengths, 7)
    flat = [r for b in batches for r in b]
    assert sorted(flat) == rows.tolist()
    assert list(lengths[flat]) == sorted(lengths[rows], reverse=True)
    assert all(len(b) == 7 for b in batches[:-1])


# ----------------------------------------------------------------------------- tokenize once
TEXTS = ["goal match team score", "the market", "Vote, election!  party minister of the new big bank today",
         "a", "stock price " * 40]


def test_tokenize_flat_storage_matches_the_tokenizer(tiny_tokenizer):
    enc = tokenize(tiny_tokenizer, TEXTS, None, 16)
    assert len(enc) == len(TEXTS)
    assert enc.ids.ndim == 1 and enc.ids.dtype == np.int32
    for i, text in enumerate(TEXTS):
        expected = tiny_tokenizer(text, truncation=True, max_length=16)["input_ids"]
        assert enc.ids[enc.offsets[i]:enc.offsets[i + 1]].tolist() == expected
    assert enc.lengths.tolist() == [min(len(tiny_tokenizer(t)["input_ids"]), 16) for t in TEXTS]
    assert enc.lengths.max() == 16  # the long text was truncated to max_length
    assert enc.type_ids is None


def test_tokenize_in_chunks_gives_the_same_result(tiny_tokenizer):
    whole = tokenize(tiny_tokenizer, TEXTS * 3, None, 16)
    chunked = tokenize(tiny_tokenizer, TEXTS * 3, None, 16, chunk=2)
    assert np.array_equal(whole.ids, chunked.ids) and np.array_equal(whole.offsets, chunked.offsets)


def test_tokenize_pairs_keeps_token_type_ids(tiny_tokenizer):
    pairs = ["stock", "goal team", "a", "vote", "bank"]
    enc = tokenize(tiny_tokenizer, TEXTS, pairs, 24)
    for i, (a, b) in enumerate(zip(TEXTS, pairs)):
        expected = tiny_tokenizer(a, b, truncation=True, max_length=24)
        s, e = enc.offsets[i], enc.offsets[i + 1]
        assert enc.ids[s:e].tolist() == expected["input_ids"]
        assert enc.type_ids[s:e].tolist() == expected["token_type_ids"]


def test_tokenize_calls_the_rust_encoder_directly_with_the_ids_of_the_tokenizers_call(tiny_tokenizer, monkeypatch):
    pairs = ["stock", "goal team", "a", "vote", "bank"]
    for second in (None, pairs):
        assert DirectEncoder.make(tiny_tokenizer, TEXTS, second, 16, second is not None) is not None
        direct = tokenize(tiny_tokenizer, TEXTS * 3, second and second * 3, 16, chunk=4)
        with monkeypatch.context() as m:
            m.setattr(DirectEncoder, "make", classmethod(lambda cls, *a, **k: None))  # __call__ only
            called = tokenize(tiny_tokenizer, TEXTS * 3, second and second * 3, 16, chunk=4)
        assert np.array_equal(direct.ids, called.ids) and np.array_equal(direct.offsets, called.offsets)
        assert (direct.type_ids is None) == (called.type_ids is None) == (second is None)


def test_a_direct_encoder_that_differs_from_the_tokenizers_call_is_not_used(tiny_tokenizer, monkeypatch):
    def off_by_one(self, texts, pairs):
        return [[i + 1 for i in e.ids] for e in self.backend.encode_batch(texts)], None

    monkeypatch.setattr(DirectEncoder, "__call__", off_by_one)
    assert DirectEncoder.make(tiny_tokenizer, TEXTS, None, 16, False) is None
    enc = tokenize(tiny_tokenizer, TEXTS, None, 16)
    assert enc.ids[enc.offsets[0]:enc.offsets[1]].tolist() == tiny_tokenizer(TEXTS[0], truncation=True,
                                                                               max_length=16)["input_ids"]


def test_tail_truncation_keeps_the_end(tiny_bert):
    from textclf.models.backbone import load_tokenizer

    head = load_tokenizer(str(tiny_bert), truncation="head")
    tail = load_tokenizer(str(tiny_bert), truncation="tail")
    text = "goal " * 20 + "vote bank"
    h = tokenize(head, [text], None, 8)
    t = tokenize(tail, [text], None, 8, truncation="tail")
    h_tokens = head.convert_ids_to_tokens(h.ids.tolist())
    t_tokens = tail.convert_ids_to_tokens(t.ids.tolist())
    assert h_tokens[0] == t_tokens[0] == "[CLS]" and h_tokens[-1] == t_tokens[-1] == "[SEP]"
    assert t_tokens[-3:-1] == ["vote", "bank"]
    assert "vote" not in h_tokens


# ----------------------------------------------------------------------------- sorted inference restores order
def test_predict_logits_over_sorted_batches_restores_input_order(tiny_bert, tiny_tokenizer):
    from textclf.engine.trainer import predict_logits
    from textclf.models.classifier import build_classifier

    torch.manual_seed(0)
    model_cfg = model_node({"trust_remote_code": False, "gradient_checkpointing": False})
    model = build_classifier(model_cfg, {"_target_": "textclf.models.pooling.MeanPooling"},
                             {"_target_": "textclf.models.heads.ClassificationHead", "dropout": 0.5}, 3,
                             name_or_path=str(tiny_bert))
    texts = ["goal", "market stock price bank and the new big", "vote", "the a of and to in is on for with today",
             "party minister", "score goal team match", "bank", "election vote party minister price the big new"]
    enc = tokenize(tiny_tokenizer, texts, None, 32)
    collate = Collator(enc, None, tiny_tokenizer.pad_token_id, tiny_tokenizer.padding_side == "left")
    batches = sorted_batches(np.arange(len(texts)), enc.lengths, 3)
    assert [r for b in batches for r in b] != list(range(len(texts))), "the test needs a reordering"
    loader = torch.utils.data.DataLoader(range(len(texts)), batch_sampler=batches, collate_fn=collate)

    rows, logits = predict_logits(model, loader, torch.device("cpu"))
    assert sorted(rows.tolist()) == list(range(len(texts)))
    restored = np.zeros_like(logits)
    restored[rows] = logits

    one_at_a_time = np.stack([predict_logits(model, [collate([i])], torch.device("cpu"))[1][0]
                              for i in range(len(texts))])
    np.testing.assert_allclose(restored, one_at_a_time, atol=1e-5)  # eval mode: dropout is off
    assert not np.allclose(one_at_a_time[0], one_at_a_time[1], atol=1e-3), "rows must differ for the test to mean much"


# ----------------------------------------------------------------------------- reading tables
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_read_table_by_extension(make_table, suffix):
    path, frame = make_table(f"train{suffix}", n=12)
    read = read_table(str(path), text_cols=("text",))
    assert list(read.columns) == ["text", "label"]
    assert read["text"].tolist() == frame["text"].tolist()
    assert read["label"].tolist() == frame["label"].tolist()


def test_read_table_keeps_text_that_looks_like_numbers_or_na(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\n007,a\nNA,b\nnull,a\n", encoding="utf-8")
    split = load_split("train", str(path), data_cfg(), need_labels=True)
    assert split.texts == ["007", "NA", "null"]


def test_read_table_unknown_extension_and_missing_file(tmp_path):
    bad = tmp_path / "data.xlsx"
    bad.write_text("x")
    with pytest.raises(TextclfError, match="xlsx"):
        read_table(str(bad))
    with pytest.raises(TextclfError, match="nope.csv"):
        read_table(str(tmp_path / "nope.csv"))


INVALID_UTF8 = b"text,label\ngoal match,sport\nstock \xff\xfe bank,business\nvote party,politics\n"


def test_invalid_utf8_is_replaced_with_a_warning(tmp_path, caplog):
    path = tmp_path / "latin.csv"
    path.write_bytes(INVALID_UTF8)
    with caplog.at_level(logging.WARNING):
        split = load_split("train", str(path), data_cfg(encoding_errors="replace"), need_labels=True)
    assert "\ufffd" in split.texts[1] and split.texts[0] == "goal match"
    assert any(r.levelno == logging.WARNING and "latin.csv" in r.getMessage() for r in caplog.records)


def test_invalid_utf8_with_strict_is_a_clear_error(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(INVALID_UTF8)
    with pytest.raises(TextclfError, match=r"latin\.csv.*(utf-8|encoding)"):
        read_table(str(path), encoding_errors="strict")


def test_other_encodings_read_when_named(tmp_path):
    path = tmp_path / "cp.csv"
    path.write_bytes("text,label\ncafé goal,sport\nbank,business\n".encode("cp1252"))
    split = load_split("train", str(path), data_cfg(encoding="cp1252", encoding_errors="strict"), need_labels=True)
    assert split.texts[0] == "café goal"


@pytest.mark.parametrize("body, message", [
    ("text,label\ngoal,sport\n,business\n", r"'text'.*row\S* 2\b"),
    ("text,label\ngoal,sport\nbank,\n", r"'label'.*row\S* 2\b"),
    ("review,label\ngoal,sport\n", r"text.*review, label"),
])
def test_load_split_names_column_and_row(tmp_path, body, message):
    path = tmp_path / "t.csv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(TextclfError, match=message):
        load_split("train", str(path), data_cfg(), need_labels=True)


def test_unlabelled_table_is_fine_for_inference_only(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text\ngoal\nbank\n", encoding="utf-8")
    assert load_split("test", str(path), data_cfg(), need_labels=False).labels is None
    with pytest.raises(TextclfError, match="label"):
        load_split("train", str(path), data_cfg(), need_labels=True)


# ----------------------------------------------------------------------------- labels
def test_label_space_strings_sorted():
    space = LabelSpace.fit(["sport", "business", "sport", "politics"])
    assert space.classes == ["business", "politics", "sport"]
    assert space.task == "multiclass"
    assert space.encode(["sport", "business"], "x").tolist() == [2, 0]


def test_label_space_integers_sorted_numerically(tmp_path):
    space = LabelSpace.fit([10, 2, 10, 2])
    assert space.classes == [2, 10] and space.names == ["2", "10"]
    assert space.task == "binary"
    assert space.encode([2, 10, 10], "x").tolist() == [0, 1, 1]
    # the same when the integers come from a file
    path = tmp_path / "t.csv"
    path.write_text("text,label\ngoal,10\nbank,2\nvote,9\n", encoding="utf-8")
    split = load_split("train", str(path), data_cfg(), need_labels=True)
    assert LabelSpace.fit(split.labels).classes == [2, 9, 10]


def test_label_space_rejects_an_unknown_label_naming_the_row():
    space = LabelSpace.fit(["a", "b", "a"])
    with pytest.raises(TextclfError, match=r"data.valid_file 'v.csv'.*row 3.*'c'"):
        space.encode(["a", "b", "c"], "data.valid_file 'v.csv'")


def test_label_space_needs_two_classes_and_rejects_binary_with_three():
    with pytest.raises(TextclfError, match="one class"):
        LabelSpace.fit(["a", "a"])
    with pytest.raises(TextclfError, match="binary"):
        LabelSpace.fit(["a", "b", "c"], task="binary")


@pytest.mark.parametrize("name", ["t.csv.gz", "t.jsonl.gz", "t.tsv.bz2"])
def test_compressed_tables_are_read_by_their_inner_extension(tmp_path, name):
    import pandas as pd

    from textclf.data.tables import read_table

    frame = pd.DataFrame({"text": ["héllo wörld", "b c"], "label": [["x", "y"], ["z"]] if "jsonl" in name else
                          ["x", "z"]})
    path = tmp_path / name
    if "jsonl" in name:
        frame.to_json(path, orient="records", lines=True, force_ascii=False, compression="infer")
    else:
        frame.to_csv(path, index=False, sep="\t" if ".tsv" in name else ",", compression="infer")
    read = read_table(str(path), text_cols=("text",))
    assert read["text"].tolist() == frame["text"].tolist()
    assert read["label"].tolist() == frame["label"].tolist()


# ----------------------------------------------------------------------------- labels as written, texts as lists
def test_label_columns_are_read_as_written(tmp_path):
    import pandas as pd

    path = tmp_path / "t.csv"
    path.write_text("text,label\ngoal,01\nbank,1\nvote,True\nscore,true\n", encoding="utf-8")
    assert load_split("train", str(path), data_cfg(), need_labels=True).labels == ["01", "1", "True", "true"]
    jsonl = tmp_path / "t.jsonl"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["1", 2, 3.0]}).to_json(jsonl, orient="records", lines=True)
    split = load_split("train", str(jsonl), data_cfg(), need_labels=True)
    assert split.labels == ["1", "2", "3"] and LabelSpace.fit(split.labels).classes == [1, 2, 3]


def test_unicode_forms_of_a_label_are_one_class_with_a_warning(tmp_path, caplog):
    path = tmp_path / "t.csv"
    path.write_text("text,label\ngoal,caf\u00e9\nbank,cafe\u0301\nvote,tea\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        split = load_split("train", str(path), data_cfg(), need_labels=True)
    assert LabelSpace.fit(split.labels).classes == ["caf\u00e9", "tea"]
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "two Unicode forms" in warning and r"'cafe\u0301' and 'caf\xe9'" in warning


def test_word_lists_in_the_text_column_are_joined_into_text(tmp_path, caplog):
    import pandas as pd

    path = tmp_path / "t.parquet"
    pd.DataFrame({"text": [["goal", "match"], ["bank"]], "label": ["sport", "business"]}).to_parquet(path)
    with caplog.at_level(logging.INFO):
        split = load_split("train", str(path), data_cfg(), need_labels=True)
    assert split.texts == ["goal match", "bank"]
    assert any("holds lists of words in 2 row(s); each list is joined with spaces" in r.getMessage()
               for r in caplog.records)
    pd.DataFrame({"text": [["goal", "match"], ["bank", None]], "label": ["a", "b"]}).to_parquet(path)
    with pytest.raises(TextclfError, match=r"column 'text' holds lists, not text, and the list at data row 2 holds "
                                           r"null, not a word"):
        load_split("train", str(path), data_cfg(), need_labels=True)
