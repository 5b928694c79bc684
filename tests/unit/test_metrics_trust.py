"""Metrics a user can trust: macro averages over the classes a fold has, NaN never the best, thresholds tuned
only where the data can tune them and scored out of sample, the binary positive class chosen and kept."""
from __future__ import annotations

import dataclasses
import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from textclf.engine.kfold import Fold, FoldOutputs, FoldResult
from textclf.errors import TextclfError
from textclf.data.metrics import better, compute_metrics, per_class_report
from textclf.data.tasks import LabelSpace, tune_class_thresholds, tuned_threshold_metrics, tune_thresholds


def one_hot(ids, k):
    return np.eye(k)[np.asarray(ids)]


# ----------------------------------------------------------------------------- 1. macro averages
def test_a_perfect_fold_missing_a_class_scores_macro_f1_one():
    space = LabelSpace("multiclass", ["a", "b", "c"])
    y = np.array([0, 1, 0, 1])
    m = compute_metrics(space, y, one_hot(y, 3))
    assert m["macro_f1"] == pytest.approx(1.0) and m["micro_f1"] == pytest.approx(1.0)
    report = per_class_report(space, y, one_hot(y, 3))
    assert {"a", "b", "c"} <= set(report) and report["c"]["support"] == 0  # every class still listed
    assert report["macro avg"]["f1-score"] == pytest.approx(1.0)  # the report's macro agrees with the metric


def test_a_class_predicted_but_absent_from_the_truth_counts_in_the_macro_mean():
    space = LabelSpace("multiclass", ["a", "b", "c", "d"])
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2])
    # sklearn's labels=None: the union of true and predicted classes {a, b, c}; d is neither
    expected = np.mean([1.0, 2 / 3, 0.0])
    assert compute_metrics(space, y, one_hot(pred, 4))["macro_f1"] == pytest.approx(expected)


def test_binary_fold_with_one_class_perfectly_predicted_scores_macro_f1_one():
    space = LabelSpace("binary", ["neg", "pos"])
    y = np.array([0, 0, 0])
    assert compute_metrics(space, y, one_hot(y, 2))["macro_f1"] == pytest.approx(1.0)


def test_multilabel_macro_f1_leaves_out_labels_never_true_nor_predicted():
    space = LabelSpace("multilabel", ["a", "b", "c"])
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float32)
    m = compute_metrics(space, y, y * 0.9 + 0.05)
    assert m["macro_f1"] == pytest.approx(1.0)
    assert per_class_report(space, y, y * 0.9)["macro avg"]["f1-score"] == pytest.approx(1.0)
    wrong = y.copy()
    wrong[0, 2] = 1  # c predicted once but never true: it is present, with F1 0
    assert compute_metrics(space, y, wrong * 0.9)["macro_f1"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- 2. NaN is never the best
@pytest.mark.parametrize("metric, finite", [("pearson", -0.5), ("roc_auc", 0.1), ("rmse", 9.0)])
def test_a_finite_value_beats_a_nan_best(metric, finite):
    nan = float("nan")
    assert better(metric, finite, nan)
    assert not better(metric, nan, finite)
    assert not better(metric, nan, nan)
    assert better(metric, nan, None)  # the first evaluation is kept until a finite one comes


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(100, 4), nn.Linear(4, 3)

    def forward(self, input_ids, attention_mask, **_):
        return self.out(self.emb(input_ids).mean(1))


def test_the_trainer_replaces_a_nan_first_evaluation_by_a_later_finite_one():
    from test_hooks import fit, tiny_loaders  # tests/unit is on sys.path (pytest's rootdir-relative import)

    from textclf.engine.trainer import FitSettings, Trainer

    torch.manual_seed(0)
    model = Bag()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    settings = FitSettings(torch.device("cpu"), 3, "pearson", max_grad_norm=1.0, log_every_steps=10)
    trainer = Trainer(model, nn.CrossEntropyLoss(), optimizer, scheduler, settings, None)
    train, valid = tiny_loaders()
    scores, saved = iter([float("nan"), 0.2, 0.1]), []
    result = fit(trainer, train, valid, lambda rows, logits: {"pearson": next(scores)}, saved)
    assert result.best_metrics["pearson"] == 0.2 and result.best_epoch == 2
    assert len(saved) == 2  # the NaN evaluation's weights were overwritten by the finite one's (epoch 2)


# ----------------------------------------------------------------------------- 3. untunable classes
def test_a_class_without_positives_keeps_the_default_threshold(caplog):
    rng = np.random.default_rng(0)
    y = (rng.random((100, 3)) < 0.4).astype(np.float32)
    y[:, 1] = 0  # no positive rows
    probs = y * 0.2 + rng.random((100, 3)) * 0.3  # positives higher, all below 0.5
    probs[:, 2] = 0.01  # every threshold gives the same F1: a flat curve
    thresholds, untuned = tune_class_thresholds(y, probs, default=0.5)
    assert thresholds[1] == 0.5 and thresholds[2] == 0.5 and thresholds[0] != 0.5
    assert untuned == [1, 2]
    assert tune_thresholds(y, probs) == thresholds  # the list-only form agrees

    space = LabelSpace("multilabel", ["a", "b", "c"])
    with caplog.at_level(logging.WARNING):
        out, _ = tuned_threshold_metrics(space, y, probs, np.zeros(100, dtype=int), default=0.5)
    assert out["untuned_classes"] == ["b", "c"] and out["threshold"][1:] == [0.5, 0.5]
    assert "b, c" in caplog.text and "kept threshold 0.5" in caplog.text


# ----------------------------------------------------------------------------- 4. out-of-sample evaluation
def noisy_multilabel(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < 0.3).astype(np.float32)
    return y, np.clip(y * 0.25 + rng.random((n, 3)) * 0.6, 0, 1)


def test_tuned_metrics_are_scored_on_rows_that_did_not_choose_the_thresholds():
    y, probs = noisy_multilabel()
    groups = np.arange(len(y)) % 3
    space = LabelSpace("multilabel", ["a", "b", "c"])
    out, _ = tuned_threshold_metrics(space, y, probs, groups, default=0.5)
    assert out["evaluation"] == "out_of_sample"
    decided = np.zeros_like(y, dtype=np.int64)
    for g in range(3):
        t = tune_thresholds(y[groups != g], probs[groups != g])
        decided[groups == g] = probs[groups == g] >= np.asarray(t)
    by_hand = compute_metrics(space, y, probs, decided=decided)
    assert out["macro_f1"] == pytest.approx(by_hand["macro_f1"])
    assert out["threshold"] == tune_thresholds(y, probs)  # what predict uses: chosen on every OOF row
    in_sample = compute_metrics(LabelSpace("multilabel", ["a", "b", "c"], threshold=out["threshold"]), y, probs)
    assert out["in_sample"]["macro_f1"] == pytest.approx(in_sample["macro_f1"])
    assert in_sample["macro_f1"] >= out["macro_f1"]  # the rows that chose them flatter the thresholds
    assert space.threshold == 0.5  # the caller's space is left alone


def test_one_holdout_fold_is_labelled_in_sample():
    y, probs = noisy_multilabel()
    out, _ = tuned_threshold_metrics(LabelSpace("multilabel", ["a", "b", "c"]), y, probs, np.zeros(len(y), int), 0.5)
    assert out["evaluation"] == "in_sample" and "in_sample" not in out


def fake_run(labels, y, groups, probs, tune=True, main=False, run_dir=None):
    """A TrainRun after its folds: what assemble reads, without training anything."""
    from textclf.commands.train import TrainRun

    run = TrainRun.__new__(TrainRun)
    run.cfg = OmegaConf.create({"tune_threshold": tune, "threshold": 0.5, "calibrate": "none"})
    run.labels, run.monitor, run.main, run.run_dir = labels, "macro_f1", main, run_dir
    run.data = SimpleNamespace(y=y)
    outputs = FoldOutputs(len(y), probs.shape[1])
    run.folds = []
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        run.folds.append(Fold(int(g), np.flatnonzero(groups != g), rows))
        outputs.add(FoldResult(int(g), {"fold": int(g), "macro_f1": 0.5}, rows, probs[rows]))
    return run, outputs


def test_assemble_writes_out_of_sample_tuned_metrics_and_keeps_the_final_thresholds(caplog, tmp_path):
    y, probs = noisy_multilabel()
    labels = LabelSpace("multilabel", ["a", "b", "c"])
    run, outputs = fake_run(labels, y, np.arange(len(y)) % 3, probs, main=True, run_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        summary, oof = run.assemble(outputs)
    tuned = summary["oof_tuned_threshold"]
    assert tuned["evaluation"] == "out_of_sample" and tuned["untuned_classes"] == []
    assert run.labels.threshold == tuned["threshold"] == tune_thresholds(y, probs)
    assert labels.threshold == 0.5, "the space built from the data is left as it is"
    assert "out-of-sample" in caplog.text
    assert not (tmp_path / "labels.json").exists(), "labels.json is written once, by write(), from run.labels"
    saved = LabelSpace.from_dict(json.loads(json.dumps(run.labels.to_dict())))
    assert saved.threshold == tuned["threshold"]  # what predict decides by
    # oof.csv's pred column (the saved thresholds) agrees with the labelled in-sample numbers
    table = run.labels.table(oof, y_true=y)
    from_table = np.array([[n in p.split("|") for n in labels.names] for p in table["pred"]], dtype=np.int64)
    assert compute_metrics(run.labels, y, oof, decided=from_table)["macro_f1"] == pytest.approx(
        tuned["in_sample"]["macro_f1"])
    # the per-class report is of the out-of-sample decisions, as the tuned metrics are
    assert summary["oof_report"]["macro avg"]["f1-score"] == pytest.approx(tuned["macro_f1"])
    assert summary["oof"]["macro_f1"] == pytest.approx(compute_metrics(LabelSpace("multilabel", ["a", "b", "c"]),
                                                                       y, probs)["macro_f1"])  # untuned: 0.5
    json.dumps(summary)  # metrics.json can hold it


def test_assemble_tunes_binary_with_the_chosen_positive_class(tmp_path):
    rng = np.random.default_rng(3)
    y = (rng.random(200) < 0.7).astype(np.int64)  # "neg" (0) is the rare class, and the positive one
    p0 = (1 - y) * 0.2 + rng.random(200) * 0.3
    probs = np.stack([p0, 1 - p0], axis=1)
    labels = LabelSpace("binary", ["neg", "pos"]).with_positive("neg")
    run, outputs = fake_run(labels, y, np.arange(200) % 4, probs, main=True, run_dir=tmp_path)
    summary, oof = run.assemble(outputs)
    tuned = summary["oof_tuned_threshold"]
    assert tuned["evaluation"] == "out_of_sample" and tuned["threshold"] < 0.5
    assert tuned["f1"] > summary["oof"]["f1"]
    saved = json.loads(json.dumps(run.labels.to_dict()))  # what write() puts in labels.json
    assert saved["positive_label"] == "neg" and saved["threshold"] == tuned["threshold"]
    table = LabelSpace.from_dict(saved).table(oof, y_true=y)
    assert (table["pred"] == np.where(p0 >= tuned["threshold"], "neg", "pos")).all()


def test_assemble_on_one_holdout_fold_says_in_sample(caplog):
    y, probs = noisy_multilabel()
    run, outputs = fake_run(LabelSpace("multilabel", ["a", "b", "c"]), y, np.zeros(len(y), int), probs)
    with caplog.at_level(logging.INFO):
        summary, _ = run.assemble(outputs)
    assert summary["oof_tuned_threshold"]["evaluation"] == "in_sample"
    assert "in-sample" in caplog.text and "optimistic" in caplog.text


# ----------------------------------------------------------------------------- 5. binary: positive class, threshold
def test_positive_label_picks_the_class_binary_f1_is_about():
    y = np.array([0, 0, 0, 1])
    probs = one_hot([0, 0, 1, 1], 2)
    space = LabelSpace("binary", ["neg", "pos"])
    assert compute_metrics(space, y, probs)["f1"] == pytest.approx(2 / 3)  # default: the second class
    space = space.with_positive("neg")
    assert compute_metrics(space, y, probs)["f1"] == pytest.approx(0.8)
    again = LabelSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again.positive == 0 and again.to_dict()["positive_label"] == "neg"


def test_positive_label_matches_integer_classes_and_refuses_unknown_ones():
    space = LabelSpace.fit([0, 1, 1, 0])
    assert space.with_positive("0").positive == 0
    with pytest.raises(TextclfError, match=r"positive_label='yes'.*0, 1"):
        space.with_positive("yes")
    with pytest.raises(TextclfError, match="binary"):
        LabelSpace("multiclass", ["a", "b", "c"]).with_positive("a")


def test_binary_threshold_on_the_positive_class_is_tuned_saved_and_decided_by():
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.3).astype(np.int64)
    p = y * 0.2 + rng.random(300) * 0.3  # positives higher, all below 0.5
    probs = np.stack([1 - p, p], axis=1)
    space = LabelSpace("binary", ["neg", "pos"])
    before = compute_metrics(space, y, probs)["f1"]
    out, _ = tuned_threshold_metrics(space, y, probs, np.arange(300) % 5, default=0.5)
    assert isinstance(out["threshold"], float) and out["threshold"] < 0.5
    assert out["evaluation"] == "out_of_sample" and out["f1"] > before
    space = dataclasses.replace(space, threshold=out["threshold"])
    saved = LabelSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert saved.decide(probs).tolist() == (p >= out["threshold"]).astype(int).tolist()
    table = saved.table(probs, y_true=y)
    assert (table["pred"] == np.where(p >= out["threshold"], "pos", "neg")).all()


def test_binary_threshold_with_the_first_class_positive():
    space = LabelSpace("binary", ["a", "b"], threshold=0.3).with_positive("a")
    probs = np.array([[0.35, 0.65], [0.2, 0.8]])
    assert space.decide(probs).tolist() == [0, 1]


def test_binary_without_positive_rows_keeps_the_default(caplog):
    y = np.zeros(20, dtype=np.int64)
    probs = np.stack([np.full(20, 0.7), np.full(20, 0.3)], axis=1)
    with caplog.at_level(logging.WARNING):
        out, _ = tuned_threshold_metrics(LabelSpace("binary", ["neg", "pos"]), y, probs, np.arange(20) % 2, 0.5)
    assert out["threshold"] == 0.5 and out["untuned_classes"] == ["pos"]


@pytest.mark.parametrize("value, ok", [("pos", True), (1, True), ("null", True), ("[a,b]", False)])
def test_positive_label_is_a_checked_config_key(value, ok):
    from hydra import compose, initialize_config_module

    import textclf.cli  # noqa: F401  (the resolvers the presets use)
    from textclf.config.schema import validate

    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"positive_label={value}"])
    if ok:
        validate(cfg)
    else:
        with pytest.raises(TextclfError, match="positive_label"):
            validate(cfg)


# ----------------------------------------------------------------------------- end to end: train, then predict
@pytest.mark.slow
def test_binary_run_tunes_its_threshold_and_predict_decides_by_it(cli, tmp_path, tiny_bert):
    import pandas as pd
    from conftest import describe, tiny_overrides

    words = {"spam": "win prize free cash", "ham": "meeting lunch report team"}
    rows = [{"text": f"{words['spam' if i % 3 == 0 else 'ham']} the", "label": "spam" if i % 3 == 0 else "ham"}
            for i in range(48)]
    pd.DataFrame(rows).to_csv(tmp_path / "mail.csv", index=False)
    args = ["train", "data=csv", "data.train_file=mail.csv", "kfold=stratified", "kfold.n_splits=2",
            "tune_threshold=true", "positive_label=spam", *tiny_overrides(tiny_bert, tmp_path / "run")]
    result = cli(*args)
    assert result[0] == 0, describe(result)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    tuned = metrics["oof_tuned_threshold"]
    assert tuned["evaluation"] == "out_of_sample" and isinstance(tuned["threshold"], float)
    assert "out-of-sample" in (run / "train.log").read_text()
    labels = json.loads((run / "labels.json").read_text())
    assert labels["positive_label"] == "spam" and labels["threshold"] == tuned["threshold"]
    oof = pd.read_csv(run / "oof.csv")
    decided = np.where(oof["prob_spam"] >= tuned["threshold"], "spam", "ham")
    assert (oof["pred"] == decided).all()  # the OOF table decides as predict will
    assert compute_metrics(LabelSpace.from_dict(labels), (oof["label"] == "spam").to_numpy(int),
                           oof[["prob_ham", "prob_spam"]].to_numpy())["f1"] == pytest.approx(tuned["in_sample"]["f1"])
    result = cli("predict", f"run_dir={run}", "input=mail.csv", "output=p.csv", "device=cpu")
    assert result[0] == 0, describe(result)
    preds = pd.read_csv(tmp_path / "p.csv")
    assert (preds["pred"] == np.where(preds["prob_spam"] >= tuned["threshold"], "spam", "ham")).all()


@pytest.mark.slow
def test_an_unknown_positive_label_is_one_clear_error_before_the_model_loads(cli, tmp_path):
    import pandas as pd

    pd.DataFrame({"text": ["a b", "c d"] * 6, "label": ["yes", "no"] * 6}).to_csv(tmp_path / "t.csv", index=False)
    rc, out, err = cli("train", "data=csv", "data.train_file=t.csv", "positive_label=maybe",
                       "model.name_or_path=/nonexistent/m", f"hydra.run.dir={tmp_path / 'run'}")
    assert rc != 0 and "Traceback" not in out + err
    assert "positive_label='maybe'" in err and "no, yes" in err
