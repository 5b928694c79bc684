"""calibrate=temperature end to end, on one tiny 2-fold run with a test file: metrics.json records the fitted
temperature, labels.json keeps it, and the run's oof.csv, its test predictions and `textclf predict` all give
softmax(logits / T), each fold's logits divided before the folds are averaged."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import describe, make_frame, run_textclf, tiny_overrides, write_frame
from hydra import compose, initialize_config_module

from textclf.run.manifest import write_manifest
from textclf.commands.predict import predict
from textclf.data.tasks import softmax

pytestmark = pytest.mark.slow
PROBS = ["prob_business", "prob_politics", "prob_sport"]


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory, tiny_bert):
    data_dir = tmp_path_factory.mktemp("calibrate")
    write_frame(make_frame(60, seed=0), data_dir / "train.csv")
    write_frame(make_frame(16, seed=1), data_dir / "test.csv")
    run_dir = data_dir / "run"
    args = ["train", "data=csv", "data.train_file=train.csv", "data.test_file=test.csv", "kfold=stratified",
            "kfold.n_splits=2", "calibrate=temperature", "plots=false", "logger=none",
            *tiny_overrides(tiny_bert, run_dir)]
    result = run_textclf(args, data_dir)
    assert result[0] == 0, describe(result)
    return SimpleNamespace(run_dir=run_dir, data_dir=data_dir,
                           metrics=json.loads((run_dir / "metrics.json").read_text()),
                           labels=json.loads((run_dir / "labels.json").read_text()))


def run_predict(run_dir, table, out, *overrides) -> pd.DataFrame:
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="predict", overrides=[f"run_dir={run_dir}", f"input={table}", f"output={out}",
                                                        "device=cpu", *overrides])
    predict(cfg)
    return pd.read_csv(out)


def test_the_run_records_and_saves_its_temperature(calibrated_run):
    cal, t = calibrated_run.metrics["calibration"], calibrated_run.labels["temperature"]
    assert cal["method"] == "temperature" and cal["temperature"] == t and 0.05 < t < 20
    assert cal["fitted_on"] == "out-of-fold logits (60 rows)"
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9
    assert calibrated_run.metrics["oof"]["ece"] == pytest.approx(cal["ece_after"])
    assert f"calibration: temperature T={t:.2f} fitted on 60 out-of-fold rows; ECE" in (
        calibrated_run.run_dir / "train.log").read_text()


def test_oof_table_holds_the_folds_outputs_calibrated(calibrated_run):
    run, t = calibrated_run.run_dir, calibrated_run.labels["temperature"]
    raw = np.zeros((60, 3))
    for fold in ("fold_0", "fold_1"):
        saved = np.load(run / fold / "outputs.npz")
        raw[saved["oof_rows"]] = saved["oof"]  # probabilities before calibration
    oof = pd.read_csv(run / "oof.csv")
    np.testing.assert_allclose(oof[PROBS].to_numpy(), softmax(np.log(raw[oof["row"]]) / t), atol=1e-9)
    assert (oof[PROBS].to_numpy().argmax(axis=1) == raw[oof["row"]].argmax(axis=1)).all()


def test_predict_applies_the_temperature_as_the_run_did(calibrated_run, tmp_path):
    run, data, t = calibrated_run.run_dir, calibrated_run.data_dir, calibrated_run.labels["temperature"]
    got = run_predict(run, data / "test.csv", tmp_path / "p.csv")
    test = pd.read_csv(run / "test_predictions.csv")
    np.testing.assert_allclose(got[PROBS].to_numpy(), test[PROBS].to_numpy(), atol=1e-5)
    # the same folds without the temperature: each fold's logits / T, then averaged, is what came out
    plain = tmp_path / "plain"
    shutil.copytree(run, plain)
    labels = {**calibrated_run.labels, "temperature": None}
    (plain / "labels.json").write_text(json.dumps(labels))
    write_manifest(plain)  # run.json holds labels.json's SHA-256
    folds = [run_predict(plain, data / "test.csv", tmp_path / f"f{k}.csv", f"folds=[{k}]")[PROBS].to_numpy()
             for k in range(2)]
    want = np.mean([softmax(np.log(p) / t) for p in folds], axis=0)
    np.testing.assert_allclose(got[PROBS].to_numpy(), want, atol=1e-5)
