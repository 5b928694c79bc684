"""Multilabel and regression end to end through the installed CLI: train, then predict on the run."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import describe, tiny_overrides

pytestmark = pytest.mark.slow

WORDS = {"sport": "goal match team", "business": "market stock bank", "politics": "vote party minister"}


def test_multilabel_run_and_predict(cli, tmp_path, tiny_bert):
    names = list(WORDS)
    rows = []
    for i in range(60):
        a, b = names[i % 3], names[(i + 1) % 3]
        rows.append({"text": f"{WORDS[a]} {WORDS[b] if i % 2 else ''} the", "tags": f"{a};{b}" if i % 2 else a})
    pd.DataFrame(rows).to_csv(tmp_path / "tags.csv", index=False)
    pd.DataFrame(rows)[["text"]].head(7).to_csv(tmp_path / "new.csv", index=False)
    result = cli("train", "data=csv", "data.train_file=tags.csv", "data.label_col=tags", "data.label_sep=';'",
                 "tune_threshold=true", *tiny_overrides(tiny_bert, tmp_path / "run"))
    assert result[0] == 0, describe(result)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "multilabel" and metrics["monitor"] == "macro_f1"
    assert {"micro_f1", "macro_f1", "subset_accuracy", "roc_auc", "loss"} <= set(metrics["folds"][0])
    labels = json.loads((run / "labels.json").read_text())
    assert labels["classes"] == sorted(WORDS) and len(labels["threshold"]) == 3  # tuned per class
    assert "BCEWithLogitsLoss" in (run / "config.yaml").read_text()  # loss=auto picked bce
    oof = pd.read_csv(run / "oof.csv", keep_default_na=False)
    assert {"label", "pred", "prob_sport", "prob_business", "prob_politics"} <= set(oof.columns)
    result = cli("predict", f"run_dir={run}", "input=new.csv", "output=p.csv", "device=cpu")
    assert result[0] == 0, describe(result)
    preds = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert preds["row"].tolist() == list(range(7))
    assert all(set(p.split(";")) <= set(WORDS) for p in preds["pred"] if p)


def test_regression_run_and_predict(cli, tmp_path, tiny_bert):
    rows = [{"text": f"{WORDS['sport']} " * (1 + i % 3) + "the", "score": 0.5 + (i % 3) * 1.25} for i in range(45)]
    pd.DataFrame(rows).to_csv(tmp_path / "scores.csv", index=False)
    result = cli("train", "data=csv", "data.train_file=scores.csv", "data.label_col=score",
                 *tiny_overrides(tiny_bert, tmp_path / "run"))
    assert result[0] == 0, describe(result)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "regression" and metrics["monitor"] == "rmse"
    assert {"rmse", "mae", "pearson", "spearman"} <= set(metrics["mean"])
    result = cli("predict", f"run_dir={tmp_path / 'run'}", "input=scores.csv", "output=p.csv", "device=cpu")
    assert result[0] == 0, describe(result)
    assert "rmse" in result[1]
    preds = pd.read_csv(tmp_path / "p.csv")
    assert list(preds.columns) == ["row", "pred_score"] and len(preds) == 45


def test_a_loss_that_does_not_fit_the_task_fails_before_the_model_loads(cli, tmp_path):
    pd.DataFrame({"text": ["a b", "c d", "e f", "g h"] * 3, "label": ["x", "y", "z", "x"] * 3}).to_csv(
        tmp_path / "t.csv", index=False)
    rc, out, err = cli("train", "data=csv", "data.train_file=t.csv", "loss=mse", "model.name_or_path=/nonexistent/m",
                       f"hydra.run.dir={tmp_path / 'run'}")
    assert rc != 0 and "Traceback" not in out + err
    assert "loss=mse does not fit task 'multiclass'" in err


def test_info_prints_parameters_and_flops(cli, tmp_path, tiny_bert):
    rc, out, err = cli("info", f"model.name_or_path={tiny_bert}", "model.max_length=32", "pooling=attention")
    assert rc == 0, describe((rc, out, err))
    assert "parameters" in out and "trainable" in out and "GFLOPs" in out
    assert not (tmp_path / "outputs").exists()  # info writes nothing
