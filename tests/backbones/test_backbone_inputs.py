"""What textclf feeds a backbone (tokenize once, then the Collator's dynamic padding) is what the backbone's
own tokenizer would feed it: the same ids and mask on the tokenizer's padding side, and the same segment ids
wherever they are not all zero (XLNet gives its summary token <cls> segment 2), hence the same hidden states."""
from __future__ import annotations

import pytest
import torch
from tiny_models import ARCHS

from textclf.data.tables import Collator, tokenize
from textclf.models.backbone import load_tokenizer

MAX_LENGTH = 12
#: lengths vary (so rows pad) and the last is cut at MAX_LENGTH
TEXTS = ["goal", "the market price of stock is big today", "vote for the party",
         "team score goal match " * 6]
CHINESE = ["进球", "今天市场的股票价格大", "我们投票", "球队比赛比分冠军" * 4]

@pytest.mark.parametrize("arch", ARCHS)
def test_textclf_batches_match_the_tokenizers_own_encoding(arch, tiny_backbones):
    from transformers import AutoModel

    folder = tiny_backbones(arch)
    tokenizer = load_tokenizer(str(folder))
    texts = CHINESE if arch == "bert_chinese" else TEXTS
    want = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_token_type_ids=True,
                     return_tensors="pt")
    encoded = tokenize(tokenizer, texts, None, MAX_LENGTH)
    got = Collator.for_tokenizer(tokenizer, encoded)(list(range(len(texts))))

    assert torch.equal(got["attention_mask"], want["attention_mask"]), f"{arch}: padding differs"
    real = want["attention_mask"].bool()
    assert torch.equal(got["input_ids"][real], want["input_ids"][real]), f"{arch}: token ids differ"
    if want["token_type_ids"][real].any():
        assert "token_type_ids" in got, f"{arch}: the tokenizer gives non-zero segment ids, textclf passes none"
        assert torch.equal(got["token_type_ids"][real], want["token_type_ids"][real])

    backbone = AutoModel.from_pretrained(str(folder)).eval()
    inputs = {k: v for k, v in got.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        ours = backbone(**inputs).last_hidden_state[real]
        theirs = backbone(**{k: want[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
                          ).last_hidden_state[real]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
