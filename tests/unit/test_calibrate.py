"""Temperature scaling (calibrate=temperature): it fixes an over-confident model's probabilities without changing
its argmax decisions, round-trips through labels.json, and refuses what it cannot calibrate."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from omegaconf import OmegaConf

from textclf.engine.calibrate import (apply_temperature, expected_calibration_error, fit_temperature, logits_from_outputs,
                               negative_log_likelihood, temperature_scaling)
from textclf.errors import TextclfError
from textclf.data.tasks import LabelSpace, softmax


def overconfident(n=2000, k=4, seed=0):
    """Labels drawn from softmax(z) (calibrated logits z), and the model's logits 5 * z: far too sure."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 1.5
    y = np.array([rng.choice(k, p=p) for p in softmax(z)])
    return 5.0 * z, y


def test_temperature_scaling_fixes_an_overconfident_softmax_and_keeps_its_decisions():
    logits, y = overconfident()
    t = fit_temperature(logits, y, "softmax")
    assert 4.0 < t < 6.0  # the over-confidence factor, recovered
    calibrated = softmax(apply_temperature(logits, t))
    before = expected_calibration_error(softmax(logits), y, "multiclass")
    after = expected_calibration_error(calibrated, y, "multiclass")
    assert after < before / 3 and after < 0.05
    assert negative_log_likelihood(logits / t, y, "softmax") < negative_log_likelihood(logits, y, "softmax")
    assert (calibrated.argmax(axis=1) == logits.argmax(axis=1)).all()
    assert fit_temperature(logits, y, "softmax") == t  # deterministic


def test_multilabel_sigmoid_temperature_and_pooled_ece():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(1500, 3)) * 2.0
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.int64)
    space = LabelSpace("multilabel", ["a", "b", "c"])
    t, calibrated, record = temperature_scaling(space, y, space.outputs(4.0 * z))
    assert t > 2.5 and record["temperature"] == t
    assert record["ece_after"] < record["ece_before"] and record["nll_after"] < record["nll_before"]
    assert record["fitted_on"] == "out-of-fold logits (1500 rows)"
    np.testing.assert_allclose(calibrated, space.outputs(4.0 * z / t), atol=1e-9)
    assert ((calibrated >= 0.5) == (z >= 0)).all()  # a 0.5 threshold decides as before
    json.dumps(record)


def test_single_logit_binary_recovers_its_one_logit():
    space = LabelSpace("binary", ["neg", "pos"], single_logit=True)
    z = np.linspace(-30, 30, 41)[:, None]
    np.testing.assert_allclose(logits_from_outputs(space, space.outputs(z)), z, rtol=1e-4)  # float64's 1 - p
    rng = np.random.default_rng(2)
    zs = rng.normal(size=(1000, 1)) * 2
    y = (rng.random(1000) < 1 / (1 + np.exp(-zs[:, 0]))).astype(np.int64)
    t, calibrated, _ = temperature_scaling(space, y, space.outputs(3.0 * zs))
    assert 2.0 < t < 4.0 and calibrated.shape == (1000, 2)
    assert (calibrated.argmax(axis=1) == (zs[:, 0] > 0)).all()


def test_softmax_outputs_give_back_logits_up_to_a_row_shift():
    space = LabelSpace("multiclass", ["a", "b", "c"])
    logits, _ = overconfident(50, 3)
    back = logits_from_outputs(space, space.outputs(logits))
    np.testing.assert_allclose(softmax(back / 1.7), softmax(logits / 1.7), atol=1e-12)


def test_temperature_round_trips_through_labels_json_and_old_files_load():
    space = LabelSpace("multiclass", ["a", "b", "c"], temperature=1.83)
    again = LabelSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again.temperature == 1.83
    logits = np.array([[2.0, 0.0, -1.0]])
    np.testing.assert_allclose(again.outputs(logits), softmax(logits / 1.83))
    old = {k: v for k, v in space.to_dict().items() if k != "temperature"}
    assert LabelSpace.from_dict(old).temperature is None
    np.testing.assert_allclose(LabelSpace.from_dict(old).outputs(logits), softmax(logits))


def test_assemble_calibrates_before_tuning_and_saves_the_temperature(tmp_path, caplog):
    from types import SimpleNamespace

    from textclf.engine.kfold import FoldOutputs, FoldResult
    from textclf.commands.train import TrainRun

    logits, y = overconfident(600, 3)
    labels = LabelSpace("multiclass", ["a", "b", "c"])
    run = TrainRun.__new__(TrainRun)
    run.cfg = OmegaConf.create({"tune_threshold": False, "threshold": 0.5, "calibrate": "temperature"})
    run.labels, run.monitor, run.main, run.run_dir = labels, "macro_f1", True, tmp_path
    run.data = SimpleNamespace(y=y)
    outputs = FoldOutputs(len(y), 3)
    for g in range(2):
        rows = np.flatnonzero(np.arange(len(y)) % 2 == g)
        outputs.add(FoldResult(g, {"fold": g, "macro_f1": 0.5}, rows, labels.outputs(logits[rows])))
    with caplog.at_level(logging.INFO):
        summary, oof = run.assemble(outputs)
    cal = summary["calibration"]
    assert cal["temperature"] > 1 and run.labels.temperature == cal["temperature"]
    assert summary["oof"]["ece"] == pytest.approx(cal["ece_after"]) and cal["ece_after"] < cal["ece_before"]
    assert (oof.argmax(axis=1) == logits.argmax(axis=1)).all()
    assert run.labels.to_dict()["temperature"] == cal["temperature"]  # what write() puts in labels.json
    assert "calibration: temperature T=" in caplog.text and "fitted on 600 out-of-fold rows; ECE" in caplog.text


def test_bad_inputs_are_refused_with_a_message():
    logits, y = overconfident(20, 3)
    with pytest.raises(TextclfError, match="not finite"):
        fit_temperature(np.where(np.arange(60).reshape(20, 3) == 4, np.nan, logits), y, "softmax")
    with pytest.raises(TextclfError, match="class ids"):
        fit_temperature(logits, y + 3, "softmax")
    with pytest.raises(TextclfError, match="0/1"):
        fit_temperature(logits, y, "sigmoid")
    with pytest.raises(TextclfError, match="kind"):
        fit_temperature(logits, y, "tanh")
    with pytest.raises(TextclfError, match="> 0"):
        apply_temperature(logits, 0.0)
    with pytest.raises(TextclfError, match="regression"):
        expected_calibration_error(logits, y, "regression")
    with pytest.raises(TextclfError, match="regression"):
        temperature_scaling(LabelSpace("regression", ["target"]), np.zeros((3, 1)), np.zeros((3, 1)))


@pytest.mark.parametrize("value, task, ok", [("none", "regression", True), ("temperature", "multiclass", True),
                                             ("temperature", "regression", False), ("platt", "multiclass", False)])
def test_calibrate_is_a_checked_config_key(value, task, ok):
    from hydra import compose, initialize_config_module

    import textclf.cli  # noqa: F401  (the resolvers the presets use)
    from textclf.commands.validate import check_calibration
    from textclf.config.schema import validate

    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"calibrate={value}"])
    labels = LabelSpace(task, ["target"] if task == "regression" else ["a", "b", "c"])
    if ok:
        validate(cfg)
        check_calibration(cfg, labels)
    elif value == "platt":
        with pytest.raises(TextclfError, match=r"calibrate.*temperature"):
            validate(cfg)
    else:
        validate(cfg)
        with pytest.raises(TextclfError, match="calibrate=temperature applies to .*this task is regression"):
            check_calibration(cfg, labels)
