"""trainer.compile=true: the model is compiled once with dynamic shapes, so batches of new padded widths (dynamic
padding) do not each trigger a recompilation; the saved weights load into the eager model that predict uses."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module

from textclf.data.tables import Collator
from textclf.commands.predict import predict
from textclf.commands.train import train

pytestmark = pytest.mark.slow


def test_compile_does_not_recompile_per_width(tiny_bert, tmp_path):
    from torch._dynamo.utils import counters

    from conftest import make_frame, write_frame

    table = write_frame(make_frame(48, seed=5), tmp_path / "train.csv")
    overrides = ["data=csv", f"data.train_file={table}", f"model.name_or_path={tiny_bert}", "model.max_length=32",
                 "trainer.epochs=2", "trainer.batch_size=4", "trainer.device=cpu", "kfold=none", "trainer.compile=true"]
    widths: set[int] = set()
    collate = Collator.__call__

    def spy(self, rows):  # the padded widths of the batches (the collator runs outside the compiled model)
        batch = collate(self, rows)
        widths.add(int(batch["input_ids"].shape[1]))
        return batch

    torch._dynamo.reset()
    counters.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Collator, "__call__", spy)
        with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
        train(cfg, run_dir=tmp_path / "run")

    graphs = counters["stats"]["unique_graphs"]
    assert len(widths) >= 5, f"the data should give many padded widths, got {sorted(widths)}"
    # one graph for training and one for evaluation (dropout differs), and a spare; static shapes compile once per
    # width until dynamo's recompile limit (8 graphs here, at 20 s a batch on this tiny model)
    assert 0 < graphs <= 3, f"{graphs} graphs compiled for widths {sorted(widths)}"

    # the compiled model was compiled in place: its saved weights keep their names and load for predict (eager);
    # predict's probabilities on the validation rows equal the compiled model's out-of-fold ones
    oof = pd.read_csv(tmp_path / "run" / "oof.csv")
    assert "row" in oof, f"oof.csv columns: {list(oof.columns)}"
    pd.read_csv(table).iloc[oof["row"]].to_csv(tmp_path / "valid.csv", index=False)
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        pcfg = compose(config_name="predict", overrides=[f"run_dir={tmp_path / 'run'}", f"input={tmp_path / 'valid.csv'}",
                                                         f"output={tmp_path / 'preds.csv'}", "device=cpu"])
    predict(pcfg)
    preds = pd.read_csv(tmp_path / "preds.csv")
    prob_cols = [c for c in oof.columns if c.startswith("prob_")]
    assert prob_cols and set(prob_cols) <= set(preds.columns), (list(oof.columns), list(preds.columns))
    assert preds[prob_cols].to_numpy() == pytest.approx(oof[prob_cols].to_numpy(), abs=1e-4)
