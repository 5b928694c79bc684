"""Tiny random backbones (2 layers, hidden 32) of every architecture textclf ships a preset for, each written
with its own tokenizer into a folder and loaded back through AutoTokenizer / AutoModel `from_pretrained`,
the path textclf itself takes. Each builder checks its tokenizer by vocabulary size and a sample
tokenization: transformers 5 can silently build a tokenizer that holds only its special tokens.

| arch         | model_type | tokenizer files written                                   | pads  | summary token |
|--------------|------------|-----------------------------------------------------------|-------|---------------|
| bert         | bert       | WordPiece vocab (conftest.VOCAB), tokenizer.json          | right | first [CLS]   |
| roberta      | roberta    | byte-level BPE vocab.json + merges.txt (tokenizers lib)    | right | first <s>     |
| deberta      | deberta-v2 | SentencePiece unigram spm.model (as microsoft/deberta-v3) | right | first [CLS]   |
| electra      | electra    | WordPiece vocab.txt trained by the tokenizers library     | right | first [CLS]   |
| xlnet        | xlnet      | SentencePiece unigram spiece.model (as xlnet-base-cased)  | left  | last <cls>    |
| bert_chinese | bert       | character-level WordPiece vocab of CJK characters         | right | first [CLS]   |

The SentencePiece folders hold only the .model file, like the hub checkpoints: loading them converts the
model on the fly, which needs the `sentencepiece` and `protobuf` packages.
"""
from __future__ import annotations

import random
from pathlib import Path

from conftest import FILLER, SPECIAL_TOKENS, TINY, TOPICS, VOCAB, build_tiny_bert, make_frame, torch_seed

ARCHS = ("bert", "roberta", "deberta", "electra", "xlnet", "bert_chinese")
#: the textclf preset (conf/model/<preset>.yaml) each tiny architecture stands in for
PRESETS = {arch: arch for arch in ARCHS}
#: architectures whose AutoModel has a pooler (pooling=pooler works)
HAS_POOLER = {"bert", "roberta", "bert_chinese"}
#: where each architecture keeps its layers and embeddings (parameter-name prefixes inside the backbone)
LAYER_PREFIX = {arch: "encoder.layer.{}." for arch in ARCHS} | {"xlnet": "layer.{}."}
EMBEDDING_PREFIXES = {arch: ("embeddings.",) for arch in ARCHS} | {"electra": ("embeddings.", "embeddings_project."),
                                                                   "xlnet": ("word_embedding.",)}
LAYERS = TINY["num_hidden_layers"]
#: a text every tiny tokenizer knows word for word
SAMPLE = "goal match election"


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    """Texts to train the tokenizers on: the conftest table's texts plus every topic and filler word."""
    return list(make_frame(n, seed)["text"]) + [w for ws in TOPICS.values() for w in ws] + FILLER


def _tokens(tokenizer, text: str, **kwargs) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(text, **kwargs)["input_ids"])


def _load_tokenizer(folder: Path, expected_size: int):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert tokenizer.is_fast, f"{folder.name}: not a fast tokenizer"
    assert len(tokenizer) == expected_size, \
        f"{folder.name}: the tokenizer has {len(tokenizer)} tokens, the trained vocabulary {expected_size}"
    return tokenizer


def _save_and_check(model, folder: Path, size: int, *, pad_id: int, tokens: list[str], text: str = SAMPLE,
                    side: str = "right"):
    """Save the model beside its tokenizer files, load the tokenizer the way users do and check its padding and
    what it makes of `text`."""
    model.save_pretrained(str(folder))
    tokenizer = _load_tokenizer(folder, size)
    assert tokenizer.pad_token_id == pad_id and tokenizer.padding_side == side
    assert _tokens(tokenizer, text) == tokens
    return tokenizer


def _train_sentencepiece(prefix: Path, texts: list[str], vocab_size: int, **special) -> int:
    """A unigram SentencePiece model at <prefix>.model (the .vocab listing is removed); its size."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram",
        hard_vocab_limit=False, character_coverage=1.0, num_threads=1, minloglevel=2, **special)
    prefix.with_suffix(".vocab").unlink()
    return spm.SentencePieceProcessor(model_file=str(prefix.with_suffix(".model"))).get_piece_size()


# ----------------------------------------------------------------------------- builders
def build_tiny_roberta(folder: Path) -> Path:
    """RoBERTa with a byte-level BPE trained on the test texts (<s>=0, <pad>=1, </s>=2, as roberta-base)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    # 256 byte symbols + specials; the rest are merges, enough for every word of the corpus to be one token
    bpe.train_from_iterator(corpus(), vocab_size=500, min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))  # vocab.json + merges.txt
    size = bpe.get_vocab_size()
    torch_seed(0)
    # RoBERTa positions start after padding_idx: 128 usable positions need 130 embeddings
    config = RobertaConfig(vocab_size=size, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                           **(TINY | {"max_position_embeddings": TINY["max_position_embeddings"] + 2}))
    _save_and_check(RobertaModel(config), folder, size, pad_id=1, tokens=["<s>", "goal", "Ġmatch", "Ġelection", "</s>"])
    return folder


def build_tiny_deberta(folder: Path) -> Path:
    """DeBERTa-v3 layout (model_type deberta-v2, relative attention, no absolute positions, no token types)
    with a SentencePiece unigram spm.model: [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, as microsoft/deberta-v3-base."""
    from transformers import DebertaV2Config, DebertaV2Model

    folder.mkdir(parents=True, exist_ok=True)
    size = _train_sentencepiece(folder / "spm", corpus(), 80, pad_id=0, pad_piece="[PAD]", bos_id=1,
                                bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]", unk_id=3, unk_piece="[UNK]",
                                user_defined_symbols=["[MASK]"])
    torch_seed(0)
    config = DebertaV2Config(vocab_size=size, pad_token_id=0, relative_attention=True, position_buckets=32,
                             max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True,
                             pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0, **TINY)
    _save_and_check(DebertaV2Model(config), folder, size, pad_id=0,
                    tokens=["[CLS]", "▁goal", "▁match", "▁election", "[SEP]"])
    return folder


def build_tiny_electra(folder: Path) -> Path:
    """ELECTRA discriminator (embeddings 16 wide, projected up to hidden 32) with a WordPiece vocab.txt trained
    by the tokenizers library; AutoTokenizer reads it as a (lower-casing) BERT tokenizer."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import ElectraConfig, ElectraModel

    folder.mkdir(parents=True, exist_ok=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(corpus(), vocab_size=120, min_frequency=1, special_tokens=SPECIAL_TOKENS,
                                  show_progress=False)
    wordpiece.save_model(str(folder))  # vocab.txt
    size = wordpiece.get_vocab_size()
    torch_seed(0)
    _save_and_check(ElectraModel(ElectraConfig(vocab_size=size, embedding_size=16, **TINY)), folder, size, pad_id=0,
                    text="Goal MATCH election", tokens=["[CLS]", "goal", "match", "election", "[SEP]"])
    return folder


#: XLNet's special pieces after <unk> <s> </s>, at the ids xlnet-base-cased gives them (3..8)
XLNET_SPECIALS = ["<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]


def build_tiny_xlnet(folder: Path) -> Path:
    """XLNet with a SentencePiece unigram spiece.model trained on the test texts, loaded by XLNetTokenizer from
    the folder: it pads on the left and ends every text with `<sep> <cls>`."""
    from transformers import XLNetConfig, XLNetModel

    folder.mkdir(parents=True, exist_ok=True)
    # transformers 5: XLNetTokenizer(vocab_file=...) ignores the file; from_pretrained(folder) reads spiece.model
    size = _train_sentencepiece(folder / "spiece", corpus(), 80, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                user_defined_symbols=XLNET_SPECIALS)
    pad_id = 3 + XLNET_SPECIALS.index("<pad>")
    torch_seed(0)
    config = XLNetConfig(vocab_size=size, d_model=TINY["hidden_size"], n_layer=LAYERS,
                         n_head=TINY["num_attention_heads"], d_inner=TINY["intermediate_size"],
                         pad_token_id=pad_id, bos_token_id=1, eos_token_id=2)
    XLNetModel(config).save_pretrained(str(folder))

    tokenizer = _load_tokenizer(folder, size)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == pad_id
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id) == (3, 4)
    assert _tokens(tokenizer, SAMPLE) == ["▁goal", "▁match", "▁election", "<sep>", "<cls>"]
    batch = tokenizer(["goal", SAMPLE], padding=True)["input_ids"]
    assert batch[0][:2] == [pad_id, pad_id] and batch[0][-2:] == [4, 3], "XLNet must pad on the left"
    return folder


# ----------------------------------------------------------------------------- Chinese
CHINESE_TOPICS = {
    "体育": ["进球", "比赛", "球队", "比分", "冠军"],
    "财经": ["市场", "股票", "价格", "银行", "投资"],
    "政治": ["投票", "选举", "政党", "部长", "议会"],
}
CHINESE_FILLER = ["的", "了", "在", "是", "今天", "新", "大", "和", "我们", "这个", "，"]
CHINESE_PUNCT = list("，。！？、：；（）")
ASCII = list("abcdefghijklmnopqrstuvwxyz0123456789")
#: character-level WordPiece: one entry per CJK character (bert-base-chinese style), plus ASCII pieces
CHINESE_VOCAB = list(dict.fromkeys(
    SPECIAL_TOKENS + sorted({ch for ws in CHINESE_TOPICS.values() for w in ws for ch in w}
                            | {ch for w in CHINESE_FILLER for ch in w}) + CHINESE_PUNCT + ASCII
    + [f"##{c}" for c in ASCII]))


def make_chinese_frame(n: int = 90, seed: int = 0, *, labels: bool = True):
    """n Chinese texts (no spaces) cycling over three topics: 2-5 topic words among 1-8 filler words."""
    import pandas as pd

    rng = random.Random(seed)
    names = list(CHINESE_TOPICS)
    rows = []
    for i in range(n):
        label = names[i % len(names)]
        words = rng.choices(CHINESE_TOPICS[label], k=rng.randint(2, 5)) + rng.choices(CHINESE_FILLER,
                                                                                     k=rng.randint(1, 8))
        rng.shuffle(words)
        rows.append({"text": "".join(words) + "。", "label": label})
    frame = pd.DataFrame(rows)
    return frame if labels else frame[["text"]]


def build_tiny_bert_chinese(folder: Path) -> Path:
    """BERT with a character-level WordPiece vocabulary of CJK characters (tokenize_chinese_chars=True splits
    every CJK character into its own token, as bert-base-chinese does)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(CHINESE_VOCAB)}
    BertTokenizerFast(vocab=vocab, do_lower_case=True, tokenize_chinese_chars=True).save_pretrained(str(folder))
    torch_seed(0)
    BertModel(BertConfig(vocab_size=len(CHINESE_VOCAB), **TINY)).save_pretrained(str(folder))

    tokenizer = _load_tokenizer(folder, len(CHINESE_VOCAB))
    assert tokenizer.pad_token_id == 0 and tokenizer.padding_side == "right"
    assert _tokens(tokenizer, "今天球队进球了！ABC") == \
        ["[CLS]", "今", "天", "球", "队", "进", "球", "了", "！", "a", "##b", "##c", "[SEP]"]
    assert _tokens(tokenizer, "猫")[1] == "[UNK]"
    return folder


BUILDERS = {
    "bert": build_tiny_bert,
    "roberta": build_tiny_roberta,
    "deberta": build_tiny_deberta,
    "electra": build_tiny_electra,
    "xlnet": build_tiny_xlnet,
    "bert_chinese": build_tiny_bert_chinese,
}


def build_tiny(arch: str, folder: Path) -> Path:
    return BUILDERS[arch](Path(folder))


class TinyBackbones:
    """tiny(arch) -> the folder of that architecture's tiny model, built on first use, once per session."""

    def __init__(self, tmp_path_factory):
        self._factory, self._built = tmp_path_factory, {}

    def __call__(self, arch: str) -> Path:
        if arch not in self._built:
            self._built[arch] = build_tiny(arch, self._factory.mktemp(f"tiny_{arch}"))
        return self._built[arch]


def build_tiny_masked_lm(folder: Path) -> Path:
    """The tiny BERT's tokenizer with a BertForMaskedLM (random weights, its masked-LM head saved too): a
    stand-in for augment.mlm_model."""
    from transformers import BertConfig, BertForMaskedLM

    build_tiny_bert(folder)
    torch_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(VOCAB), **TINY)).save_pretrained(str(folder))
    return folder
