"""augment=eda | mlm: reproducible by seed, label-preserving, each operation doing what it says, synonyms from the
backbone's own embeddings, a masked-LM folder without its head refused clearly."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import VOCAB, make_frame
from omegaconf import OmegaConf
from tiny_models import build_tiny_masked_lm

from textclf.data.augment import (EDA, MaskedLM, build_augmenter, delete_words, insert_words, nearest_words,
                             swap_words, whole_words)
from textclf.data.tables import Split
from textclf.errors import TextclfError
from textclf.commands.train import tokenize_run

TEXTS = list(make_frame(30, seed=3)["text"])
WORDS = "the big team scored a goal in the match today".split()


def eda(tiny_bert, texts=TEXTS, seed=0, **options):
    from textclf.models.backbone import load_tokenizer

    return EDA(**options).augment(texts, seed=seed, tokenizer=load_tokenizer(str(tiny_bert)),
                                  name_or_path=str(tiny_bert))


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    return build_tiny_masked_lm(tmp_path_factory.mktemp("tiny_mlm"))


def test_eda_is_reproducible_by_seed_and_differs_by_seed(tiny_bert):
    a, b = eda(tiny_bert, seed=1, copies=2, p=0.3), eda(tiny_bert, seed=1, copies=2, p=0.3)
    assert a.texts == b.texts and np.array_equal(a.source, b.source)
    assert eda(tiny_bert, seed=2, copies=2, p=0.3).texts != a.texts
    assert len(a.texts) == 2 * len(TEXTS) and a.source.tolist() == list(range(len(TEXTS))) * 2
    assert sum(t != TEXTS[s] for t, s in zip(a.texts, a.source)) > len(a.texts) // 2  # the copies do change


def test_delete_never_empties_a_text_and_swap_keeps_the_words():
    rng = np.random.default_rng(0)
    for n in range(1, 12):
        words = WORDS[:n]
        for _ in range(20):
            kept = delete_words(words, n, rng)  # asked to delete every word
            assert 1 <= len(kept) and Counter(kept) <= Counter(words)
            swapped = swap_words(words, 3, rng)
            assert Counter(swapped) == Counter(words)
    assert delete_words(["alone"], 1, rng) == ["alone"]
    grown = insert_words(["goal,", "match"], 2, rng)
    assert len(grown) == 4 and set(grown) <= {"goal,", "match", "goal"}  # its own words, without the punctuation


def test_each_eda_operation_alone(tiny_bert):
    text = "the team scored a goal in the match after the vote"
    for op, check in [("swap", lambda out: Counter(out.split()) == Counter(text.split()) and out != text),
                      ("delete", lambda out: len(out.split()) == len(text.split()) - 3),
                      ("insert", lambda out: len(out.split()) == len(text.split()) + 3)]:
        out = eda(tiny_bert, texts=[text], ops=[op], p=0.3, seed=5).texts[0]
        assert check(out), (op, out)


def test_synonyms_are_the_nearest_whole_words_of_the_embedding_matrix():
    vocab = {"goal": 0, "match": 1, "market": 2, "vote": 3}
    emb = np.array([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    near = nearest_words(["goal", "vote"], vocab, emb, k=2, chunk=1)
    assert near["goal"] == ["match", "market"]  # nearest first, never the word itself
    assert near["vote"][0] in {"goal", "match", "market"} and "vote" not in near["vote"]


def test_whole_words_skip_pieces_letters_and_special_tokens(tiny_tokenizer):
    words = whole_words(tiny_tokenizer)
    assert "goal" in words and words["goal"] == VOCAB.index("goal")
    assert not [w for w in words if w.startswith("##") or len(w) < 2 or w.startswith("[")]


def test_eda_synonyms_come_from_the_backbones_embeddings(tiny_bert, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "bert"
    shutil.copytree(tiny_bert, folder)
    weights = load_file(str(folder / "model.safetensors"))
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[key][VOCAB.index("market")] = weights[key][VOCAB.index("goal")] * 1.5  # same direction: cosine 1
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    out = eda(folder, texts=["Goal, xyz!", "market"], ops=["synonym"], p=1.0, top_k=1).texts
    assert out == ["Market, xyz!", "goal"]  # capitals and punctuation kept; xyz is no vocabulary word: it stays


def test_augmented_rows_keep_their_rows_labels_exactly(tiny_tokenizer):
    texts = ["goal match team", "market stock bank", "vote party minister", "the score"]
    pairs = ["a", "b", "c", "d"]
    multilabel = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
    regression = np.array([[0.5, -1.0], [2.0, 3.0], [1.5, 0.0], [7.0, 8.0]], dtype=np.float32)
    for y in (multilabel, regression):
        for truncation in ("head", "window"):
            model = {"max_length": 8, "truncation": truncation, "window_aggregate": "mean"}
            checked = SimpleNamespace(
                cfg=OmegaConf.create({"model": model}), tokenizer=tiny_tokenizer, y=y, y_valid=None,
                splits={"train": Split("train", "t.csv", texts, pairs if truncation == "head" else None, None)})
            # delete changes every text of two words or more, so no copy is left out as identical
            augmented = EDA(copies=2, p=0.5, ops=["delete"]).augment(texts, seed=0)
            data = tokenize_run(checked, augmented)
            assert data.n_rows == 4 and len(data.y) == 12
            assert np.array_equal(data.y[4:], y[augmented.source])  # the label array row, copied
            rows = data.with_copies(np.array([1, 3]))
            assert rows.tolist() == [1, 3, 5, 7, 9, 11]  # originals, then exactly their copies
            assert data.encoded.n_docs == 12 and len(data.encoded.seq_rows(rows)) >= 6
            if truncation == "head":  # text pairs: the second text of every copy is its row's
                for k, s in enumerate(augmented.source):
                    ids = data.encoded.ids[data.encoded.offsets[4 + k]:data.encoded.offsets[5 + k]]
                    assert tiny_tokenizer.decode(ids).split()[-2] == pairs[s]


def test_masked_lm_is_reproducible_by_seed(tiny_mlm):
    mlm = MaskedLM(str(tiny_mlm), copies=2, p=0.3, top_k=3, batch_size=4)
    a, b = mlm.augment(TEXTS, seed=1), mlm.augment(TEXTS, seed=1)
    assert a.texts == b.texts and a.source.tolist() == list(range(len(TEXTS))) * 2
    assert mlm.augment(TEXTS, seed=2).texts != a.texts
    known = set(VOCAB)
    changed = 0
    for text, s in zip(a.texts, a.source):
        old, new = TEXTS[s].split(), text.split()
        assert len(old) == len(new)  # one word in, one whole word out
        diff = [(o, n) for o, n in zip(old, new) if o != n]
        assert all(n in known and not n.startswith("##") and len(n) >= 2 for _, n in diff)
        assert len(diff) <= max(1, round(0.3 * len(old)))
        changed += bool(diff)
    assert changed > len(a.texts) // 2


def test_a_folder_without_a_masked_lm_head_is_refused_clearly(tiny_bert, tmp_path):
    with pytest.raises(TextclfError, match=r"has no masked-LM head.*BertModel"):
        MaskedLM(str(tiny_bert))
    # config.json that does not say: the weights tell (the head would start random)
    folder = tmp_path / "bare"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("architectures", None)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TextclfError, match=r"has no masked-LM head \(the weights lack cls\.predictions"):
        MaskedLM(str(folder)).augment(["goal match"], seed=0)


@pytest.mark.parametrize("options, message", [
    ({"copies": 0}, r"augment\.copies must be a whole number >= 1"),
    ({"copies": 1.5}, r"augment\.copies must be a whole number >= 1"),
    ({"p": 0}, r"augment\.p must be a number in \(0, 1\]"),
    ({"p": 1.5}, r"augment\.p must be a number in \(0, 1\]"),
    ({"ops": ["swap", "shuffle"]}, r"augment\.ops: unknown operation\(s\) 'shuffle'; choose from synonym"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(TextclfError, match=message):
        build_augmenter(OmegaConf.create({"_target_": "textclf.data.augment.EDA", **options}))


def test_masked_lm_needs_its_folder(tmp_path):
    with pytest.raises(TextclfError, match=r"augment\.mlm_model 'nowhere' is not a folder"):
        build_augmenter(OmegaConf.create({"_target_": "textclf.data.augment.MaskedLM", "mlm_model": "nowhere"}))
    from hydra import compose, initialize_config_module

    from textclf.config.schema import validate

    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["augment=mlm"])
    with pytest.raises(TextclfError, match=r"augment\.mlm_model: required \(a local folder holding a masked-language"):
        validate(cfg)
    assert build_augmenter(OmegaConf.create({})) is None  # augment=none builds nothing


def test_copies_identical_to_their_text_are_left_out_and_counted(caplog):
    texts = ["goal", "goal match team", "bank", "vote party minister"]
    with caplog.at_level("WARNING"):
        out = EDA(copies=3, p=0.3, ops=["swap", "delete", "insert"]).augment(texts, seed=0)
    # a one-word text has nothing to swap, delete or insert beside; each operation changes the three-word texts
    assert out.source.tolist() == [1, 3] * 3
    assert all(t != texts[s] for t, s in zip(out.texts, out.source))
    assert "augment=eda: 6 of 12 copies are identical to their original text" in caplog.text
    assert "6 copies train" in caplog.text


def test_chinese_and_japanese_are_cut_into_characters():
    from textclf.data.augment import join_words, segment

    assert segment("我爱北京。") == ["我", "爱", "北", "京。"]
    assert segment("NLP模型 ok") == ["NLP", "模", "型", "ok"]
    assert join_words(segment("東京タワーに行きました")) == "東京タワーに行きました"
    out = EDA(copies=2, p=0.3, ops=["delete"]).augment(["我爱北京天安门", "今日は良い天気です"], seed=0)
    assert len(out.texts) == 4 and not any(" " in t for t in out.texts)  # no spaces between characters added
    assert [len(t) for t in out.texts] == [5, 6, 5, 6]  # round(0.3 * 7) = 2 and round(0.3 * 9) = 3 deleted


def test_augmentation_that_changes_nothing_is_refused():
    with pytest.raises(TextclfError, match=r"augment=eda: none of the 4 copies differs from its original text.*"
                                           r"such as Thai.*drop augment"):
        EDA(copies=2, ops=["swap"]).augment(["ฉันรักกรุงเทพ", "goal"], seed=0)
