"""Every model preset end to end through the installed command, against its tiny local folder: `textclf train
model=<preset> model.name_or_path=<folder>` with 2 stratified folds, then `textclf predict` on the run.
XLNet trains with pooling=cls (its summary token is the last one); Chinese BERT trains on a Chinese table."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import describe, make_frame, tiny_overrides, write_frame
from tiny_models import ARCHS, PRESETS, make_chinese_frame

pytestmark = pytest.mark.slow

EXTRA = {"xlnet": ["pooling=cls"]}


@pytest.mark.parametrize("arch", ARCHS)
def test_preset_trains_and_predicts_from_a_local_folder(arch, tiny_backbones, cli, tmp_path):
    from transformers import AutoTokenizer

    folder = tiny_backbones(arch)
    frames = make_chinese_frame if arch == "bert_chinese" else make_frame
    train, test = frames(60, seed=0), frames(15, seed=1)
    write_frame(train, tmp_path / "train.csv")
    write_frame(test, tmp_path / "test.csv")
    run = tmp_path / "run"
    result = cli("train", f"model={PRESETS[arch]}", "data=csv", "data.train_file=train.csv",
                 "data.test_file=test.csv", "kfold=stratified", "kfold.n_splits=2", *tiny_overrides(folder, run),
                 *EXTRA.get(arch, []))
    assert result[0] == 0, describe(result)

    for name in ("config.yaml", "labels.json", "folds.csv", "oof.csv", "metrics.json", "test_predictions.csv",
                 "fold_0/model.safetensors", "fold_1/model.safetensors", "backbone/config.json"):
        assert (run / name).is_file(), f"{arch}: {name} missing from the run folder"
    from omegaconf import OmegaConf

    saved = OmegaConf.load(run / "config.yaml")
    assert saved.model.name_or_path == str(folder) and saved.model.max_length == 32
    if arch == "xlnet":
        assert saved.pooling._target_.endswith("ClsPooling")
    classes = sorted(train["label"].unique())
    assert json.loads((run / "labels.json").read_text(encoding="utf-8"))["classes"] == classes
    # the run carries the tiny tokenizer itself, not some default vocabulary
    original = AutoTokenizer.from_pretrained(str(folder))
    carried = AutoTokenizer.from_pretrained(str(run / "backbone"))
    assert len(carried) == len(original) and carried.padding_side == original.padding_side
    assert carried(test["text"][0])["input_ids"] == original(test["text"][0])["input_ids"]
    oof = pd.read_csv(run / "oof.csv")
    assert sorted(oof["row"]) == list(range(len(train)))
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["oof"]["accuracy"])

    # predict: one row per input row, in input order (the test texts shuffled, without labels)
    order = np.random.default_rng(0).permutation(len(test))
    write_frame(test.iloc[order][["text"]].reset_index(drop=True), tmp_path / "new.csv")
    result = cli("predict", f"run_dir={run}", "input=new.csv", "output=preds.csv", "device=cpu")
    assert result[0] == 0, describe(result)
    prob_cols = [f"prob_{c}" for c in classes]
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert list(preds.columns) == ["row", "pred", *prob_cols]
    assert list(preds["row"]) == list(range(len(test)))
    expected = pd.read_csv(run / "test_predictions.csv").iloc[order]
    np.testing.assert_allclose(preds[prob_cols].to_numpy(), expected[prob_cols].to_numpy(), atol=1e-5)
    assert list(preds["pred"]) == list(expected["pred"])
