"""Long texts: head / tail / head_tail truncation and sliding windows, tokenized once, aggregated per text."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import model_node
from omegaconf import OmegaConf

from textclf.data.tables import Collator, Encoded, head_tail, sorted_batches, special_template, tokenize, windows
from textclf.errors import TextclfError

# the tiny vocabulary holds single letters: "a b c ..." is one token per letter, so positions are easy to check
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def letters(n: int, start: int = 0) -> str:
    return " ".join(LETTERS[(start + i) % 26] for i in range(n))


def token_strings(tok, enc: Encoded, i: int) -> list[str]:
    return tok.convert_ids_to_tokens(enc.ids[enc.offsets[i]:enc.offsets[i + 1]].tolist())


def test_special_template_of_bert(tiny_tokenizer):
    t = special_template(tiny_tokenizer)
    assert tiny_tokenizer.convert_ids_to_tokens(t.prefix) == ["[CLS]"]
    assert tiny_tokenizer.convert_ids_to_tokens(t.suffix) == ["[SEP]"]


@pytest.mark.parametrize("truncation, expected", [
    ("head", list(LETTERS[:8])),
    ("tail", list(LETTERS[12:20])),
    ("head_tail", list(LETTERS[:2]) + list(LETTERS[14:20])),  # 8 text tokens: 0.25 -> 2 from the start, 6 from the end
])
def test_truncation_modes_keep_the_right_tokens(tiny_tokenizer, truncation, expected):
    enc = tokenize(tiny_tokenizer, [letters(20)], None, max_length=10, truncation=truncation, head_fraction=0.25)
    assert token_strings(tiny_tokenizer, enc, 0) == ["[CLS]", *expected, "[SEP]"]
    assert enc.doc is None  # one sequence per text


def test_head_tail_leaves_short_texts_alone_and_honours_the_fraction(tiny_tokenizer):
    short = tokenize(tiny_tokenizer, [letters(5)], None, max_length=10, truncation="head_tail")
    head = tokenize(tiny_tokenizer, [letters(5)], None, max_length=10, truncation="head")
    assert token_strings(tiny_tokenizer, short, 0) == token_strings(tiny_tokenizer, head, 0)
    assert head_tail(list(range(10)), 4, 0.5) == [0, 1, 8, 9]
    assert head_tail(list(range(10)), 4, 1.0) == [0, 1, 2, 3]
    assert head_tail(list(range(10)), 4, 0.0) == [6, 7, 8, 9]


def test_windows_cover_the_text_stride_apart_and_end_at_the_end():
    ids = list(range(23))
    got = windows(ids, budget=8, step=5)
    assert [w[0] for w in got] == [0, 5, 10, 15]  # the last window starts where it ends the text
    assert all(len(w) == 8 for w in got) and got[-1][-1] == 22
    assert sorted(set(i for w in got for i in w)) == ids  # nothing skipped
    assert windows(list(range(5)), 8, 4) == [list(range(5))]
    assert windows([], 8, 4) == [[]]  # an empty text still gets one (empty) window
    capped = windows(list(range(100)), budget=10, step=5, max_windows=3)
    assert len(capped) == 3 and capped[0][0] == 0 and capped[-1][-1] == 99


def test_sliding_windows_tokenize_each_text_once_into_contiguous_windows(tiny_tokenizer):
    texts = [letters(3), letters(20), letters(6, start=3)]
    enc = tokenize(tiny_tokenizer, texts, None, max_length=10, truncation="window", stride=4)
    # text 1 has 20 letters, 8 per window, 4 apart: starts 0, 4, 8, 12
    assert enc.doc.tolist() == [0, 1, 1, 1, 1, 2]
    assert enc.n_docs == 3
    assert token_strings(tiny_tokenizer, enc, 1) == ["[CLS]", *LETTERS[0:8], "[SEP]"]
    assert token_strings(tiny_tokenizer, enc, 4) == ["[CLS]", *LETTERS[12:20], "[SEP]"]
    assert enc.lengths.max() <= 10
    assert enc.seq_rows([2, 0]).tolist() == [5, 0]
    assert enc.seq_rows([1]).tolist() == [1, 2, 3, 4]
    assert enc.seq_labels(np.array([7, 8, 9])).tolist() == [7, 8, 8, 8, 8, 9]


def test_aggregate_gives_one_row_per_text_in_input_order(tiny_tokenizer):
    enc = tokenize(tiny_tokenizer, [letters(3), letters(20), letters(6)], None, max_length=10,
                   truncation="window", stride=4)
    seq_logits = np.arange(12, dtype=np.float32).reshape(6, 2)
    order = np.array([3, 5, 0, 1, 4, 2])  # the order an inference loader yields (longest first)
    rows, mean = enc.aggregate(order, seq_logits[order], "mean")
    assert rows.tolist() == [0, 1, 2]
    np.testing.assert_allclose(mean, [seq_logits[0], seq_logits[1:5].mean(0), seq_logits[5]])
    rows, mx = enc.aggregate(order, seq_logits[order], "max")
    np.testing.assert_allclose(mx, [seq_logits[0], seq_logits[1:5].max(0), seq_logits[5]])
    # only some texts (one fold's validation rows)
    sub = enc.seq_rows([2, 1])
    rows, mean = enc.aggregate(sub, seq_logits[sub], "mean")
    assert rows.tolist() == [1, 2]


def test_windows_with_text_pairs_or_no_room_are_clear_errors(tiny_tokenizer):
    with pytest.raises(TextclfError, match="single texts"):
        tokenize(tiny_tokenizer, ["a b"], ["c d"], max_length=10, truncation="window")
    with pytest.raises(TextclfError, match="no room"):
        tokenize(tiny_tokenizer, ["a b"], None, max_length=2, truncation="head_tail")
    with pytest.raises(TextclfError, match="window_stride"):
        tokenize(tiny_tokenizer, ["a b"], None, max_length=10, truncation="window", stride=9)
    with pytest.raises(TextclfError, match="model.truncation"):
        tokenize(tiny_tokenizer, ["a b"], None, max_length=10, truncation="middle")


def test_collator_pads_segment_ids_with_the_tokenizers_pad_type():
    enc = Encoded(np.array([5, 6, 7, 8, 9], np.int32), np.array([0, 3, 5]), np.array([0, 0, 2, 0, 2], np.int8))
    batch = Collator(enc, None, pad_id=1, pad_left=True, pad_type_id=3)([0, 1])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [1, 8, 9]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 2], [3, 0, 2]]


def _predict(model, tok, enc: Encoded, how: str = "mean") -> np.ndarray:
    from textclf.engine.trainer import predict_logits

    collate = Collator.for_tokenizer(tok, enc)
    loader = torch.utils.data.DataLoader(range(len(enc)), collate_fn=collate,
                                         batch_sampler=sorted_batches(np.arange(len(enc)), enc.lengths, 4))
    rows, logits = enc.aggregate(*predict_logits(model, loader, torch.device("cpu")), how)
    assert rows.tolist() == list(range(enc.n_docs))
    return logits


def test_a_text_that_fits_one_window_predicts_the_same_with_or_without_windows(tiny_bert, tiny_tokenizer):
    from textclf.models.classifier import build_classifier

    mcfg = model_node({"name_or_path": str(tiny_bert), "max_length": 12, "truncation": "head",
                             "trust_remote_code": False, "gradient_checkpointing": False})
    torch.manual_seed(0)
    model = build_classifier(mcfg, {"_target_": "textclf.models.pooling.MeanPooling"},
                             {"_target_": "textclf.models.heads.ClassificationHead", "dropout": 0.0},
                             3, name_or_path=str(tiny_bert)).eval()
    texts = [letters(4), letters(30), "goal match team", letters(10, start=5), letters(25, start=2)]
    plain = _predict(model, tiny_tokenizer, tokenize(tiny_tokenizer, texts, None, 12, truncation="head"))
    windowed_enc = tokenize(tiny_tokenizer, texts, None, 12, truncation="window", stride=5)
    assert len(windowed_enc) > len(texts)  # the long texts did become several windows
    windowed = _predict(model, tiny_tokenizer, windowed_enc)
    fits = [0, 2, 3]  # at most 10 text tokens
    np.testing.assert_allclose(windowed[fits], plain[fits], atol=1e-5)
    assert not np.allclose(windowed[[1, 4]], plain[[1, 4]], atol=1e-4)  # the long ones see their whole text
    maxed = _predict(model, tiny_tokenizer, windowed_enc, "max")
    np.testing.assert_allclose(maxed[fits], plain[fits], atol=1e-5)


@pytest.mark.parametrize("arch", ["xlnet", "roberta", "deberta", "electra", "bert_chinese"])
def test_windows_keep_each_backbones_special_tokens(arch, tiny_backbones):
    from textclf.models.backbone import load_tokenizer

    tok = load_tokenizer(str(tiny_backbones(arch)))
    t = special_template(tok)
    long_text = "goal match team score " * 20 if arch != "bert_chinese" else "进球比赛" * 30
    enc = tokenize(tok, [long_text, "goal"], None, 24, truncation="window")
    assert enc.doc.tolist().count(0) > 2 and enc.doc[-1] == 1
    for i in range(len(enc)):
        ids = enc.ids[enc.offsets[i]:enc.offsets[i + 1]].tolist()
        assert len(ids) <= 24 and ids[:len(t.prefix)] == t.prefix and ids[len(ids) - len(t.suffix):] == t.suffix
    if arch == "xlnet":  # summary token last, in segment 2, as XLNet's tokenizer itself does it
        assert tok.convert_ids_to_tokens(t.suffix) == ["<sep>", "<cls>"]
        assert enc.type_ids[enc.offsets[1] - 1] == 2
    plain = tokenize(tok, ["goal"], None, 24)
    assert plain.ids.tolist() == enc.ids[enc.offsets[-2]:].tolist()


@pytest.mark.slow
def test_training_with_windows_gives_one_oof_row_per_text(tiny_bert, tmp_path, monkeypatch, caplog):
    import json

    import pandas as pd
    from conftest import make_frame, write_frame
    from hydra import compose, initialize_config_module

    from textclf.commands.train import train

    monkeypatch.chdir(tmp_path)
    frame = make_frame(40, seed=3)
    frame.loc[::4, "text"] = frame.loc[::4, "text"] + " " + letters(40)  # every 4th text needs several windows
    write_frame(frame, tmp_path / "train.csv")
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "data=csv", "data.train_file=train.csv", f"model.name_or_path={tiny_bert}", "model.max_length=16",
            "model.truncation=window", "model.window_stride=7", "model.window_aggregate=max", "kfold=stratified",
            "kfold.n_splits=2", "trainer.epochs=1", "trainer.batch_size=8", "trainer.device=cpu"])
    with caplog.at_level("INFO", logger="textclf.commands.train"):
        train(cfg, run_dir=tmp_path / "run")
    assert re.search(r"tokenized 40 texts once into (\d+) windows", caplog.text)
    assert int(re.search(r"into (\d+) windows", caplog.text).group(1)) > 40  # the long texts were split
    oof = pd.read_csv(tmp_path / "run" / "oof.csv")
    assert oof["row"].tolist() == list(range(len(frame)))  # one prediction per text, in input order
    assert len(json.loads((tmp_path / "run" / "metrics.json").read_text())["folds"]) == 2
