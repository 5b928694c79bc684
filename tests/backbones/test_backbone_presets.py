"""The model presets (bert, bert_chinese, roberta, deberta, electra, xlnet), what a hub id does on a machine
without network, the message for a SentencePiece tokenizer without its packages, and each tiny backbone's
tokenizer as textclf loads it."""
from __future__ import annotations

import sys

import pytest
from conftest import describe, make_frame, write_frame
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from tiny_models import ARCHS

from textclf.config.schema import validate
from textclf.errors import TextclfError
from textclf.models.backbone import load_backbone_config, load_tokenizer

HUB_IDS = {
    "bert": "bert-base-uncased",
    "bert_chinese": "bert-base-chinese",
    "roberta": "roberta-base",
    "deberta": "microsoft/deberta-v3-base",
    "electra": "google/electra-base-discriminator",
    "xlnet": "xlnet-base-cased",
}


def compose_train(overrides):
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


# ----------------------------------------------------------------------------- presets
@pytest.mark.parametrize("preset", sorted(HUB_IDS))
def test_preset_extends_the_shared_model_keys(preset):
    base = compose_train(["data=csv", "data.train_file=train.csv"]).model
    cfg = compose_train([f"model={preset}", "data=csv", "data.train_file=train.csv"])
    validate(cfg)
    assert list(cfg.model.keys()) == list(base.keys()), "a preset must carry every key of minilm.yaml"
    assert cfg.model.name_or_path == HUB_IDS[preset]
    assert cfg.model.max_length == 256
    unchanged = {k: v for k, v in OmegaConf.to_container(base).items() if k not in ("name_or_path", "max_length")}
    assert {k: cfg.model[k] for k in unchanged} == unchanged


def test_a_preset_takes_a_local_folder_and_other_overrides():
    cfg = compose_train(["model=xlnet", "model.name_or_path=/models/xlnet", "model.max_length=64",
                         "model.freeze_layers=2"])
    assert (cfg.model.name_or_path, cfg.model.max_length, cfg.model.freeze_layers) == ("/models/xlnet", 64, 2)


# ----------------------------------------------------------------------------- a hub id offline
@pytest.mark.parametrize("preset", sorted(HUB_IDS))
def test_hub_id_offline_says_how_to_use_a_local_copy(preset, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = HUB_IDS[preset]
    for load in (load_tokenizer, load_backbone_config):
        with pytest.raises(TextclfError) as info:
            load(hub_id)
        message = str(info.value)
        assert f"'{hub_id}'" in message and "offline" in message
        assert f"hf download {hub_id} --local-dir DIR" in message and "model.name_or_path=DIR" in message
        assert "\n" not in message


@pytest.mark.parametrize("preset", ["xlnet", "deberta"])
def test_train_with_a_hub_preset_offline_is_one_error_line(preset, tmp_path, cli):
    write_frame(make_frame(30, seed=3), tmp_path / "train.csv")
    result = cli("train", f"model={preset}", "data=csv", "data.train_file=train.csv", "trainer.device=cpu",
                 "hydra.run.dir=run")
    rc, out, err = result
    assert rc == 2, describe(result)
    assert "Traceback" not in out + err, describe(result)
    errors = [line for line in (out + err).splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("textclf: error: "), describe(result)
    line = errors[0]
    hub_id = HUB_IDS[preset]
    assert f"'{hub_id}'" in line and "offline" in line, line
    assert f"hf download {hub_id}" in line and "model.name_or_path=DIR" in line, line


def test_a_local_folder_transformers_cannot_read_is_named_as_a_folder(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')  # no tokenizer files at all
    with pytest.raises(TextclfError, match=r"could not load the tokenizer from the folder") as info:
        load_tokenizer(str(tmp_path))
    assert "hub" not in str(info.value)


# ----------------------------------------------------------------------------- SentencePiece needs its packages
@pytest.mark.parametrize("arch", ["xlnet", "deberta"])
@pytest.mark.parametrize("blocked, missing", [("sentencepiece", "sentencepiece is"),
                                              ("google.protobuf", "protobuf is"),
                                              (("sentencepiece", "google.protobuf"), "sentencepiece and protobuf are")])
def test_sentencepiece_tokenizer_without_its_packages_names_them(arch, blocked, missing, tiny_backbones,
                                                                monkeypatch):
    folder = tiny_backbones(arch)
    for module in (blocked,) if isinstance(blocked, str) else blocked:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if not installed
    with pytest.raises(TextclfError) as info:
        load_tokenizer(str(folder))
    message = str(info.value)
    assert "SentencePiece" in message and ("spiece.model" in message or "spm.model" in message)
    assert f"{missing} not installed" in message and "pip install sentencepiece protobuf" in message
    assert "tiktoken" not in message


# ----------------------------------------------------------------------------- the tiny backbones, as textclf loads them
@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_tokenizer_is_the_trained_one_through_textclf(arch, tiny_backbones):
    from transformers import AutoConfig

    folder = tiny_backbones(arch)
    tokenizer = load_tokenizer(str(folder))
    config = AutoConfig.from_pretrained(str(folder))
    assert len(tokenizer) == config.vocab_size, "the model's embeddings and the tokenizer disagree"
    assert tokenizer.padding_side == ("left" if arch == "xlnet" else "right")
    ids = tokenizer("goal")["input_ids"]
    summary = ids[-1] if arch == "xlnet" else ids[0]
    assert summary == tokenizer.cls_token_id
    assert tokenizer.unk_token_id not in tokenizer("goal match" if arch != "bert_chinese" else "进球比赛")["input_ids"]
