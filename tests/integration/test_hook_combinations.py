"""Every combination of adversarial x ema x rdrop x precision x accumulation trains on the tiny model."""
from __future__ import annotations

import itertools
import json
import math

import pytest
from hydra import compose, initialize_config_module

from textclf.commands.train import train

pytestmark = pytest.mark.slow

COMBOS = list(itertools.product(["none", "fgm", "pgd", "awp"], ["none", "default"], ["none", "default"],
                                ["fp32", "bf16"], [1, 2]))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    from conftest import make_frame, write_frame

    folder = tmp_path_factory.mktemp("combo_data")
    return write_frame(make_frame(40, seed=3), folder / "train.csv")


@pytest.mark.parametrize("adversarial, ema, rdrop, precision, accum", COMBOS,
                         ids=["-".join(map(str, c)) for c in COMBOS])
def test_tricks_compose(adversarial, ema, rdrop, precision, accum, table, tiny_bert, tmp_path):
    overrides = ["data=csv", f"data.train_file={table}", f"model.name_or_path={tiny_bert}", "model.max_length=16",
                 "trainer.epochs=2", "trainer.batch_size=8", "trainer.device=cpu", f"trainer.precision={precision}",
                 f"trainer.grad_accum_steps={accum}", f"adversarial={adversarial}", f"ema={ema}", f"rdrop={rdrop}"]
    if adversarial == "awp":
        overrides.append("adversarial.start_epoch=1")  # fires in the second epoch
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    score = train(cfg, run_dir=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert math.isfinite(score)
    assert all(math.isfinite(f["train_loss"]) for f in metrics["folds"])
