"""Multilabel with tuned thresholds: every evaluation is also scored at per-label thresholds tuned on its rows,
and the fold's best evaluation is the one best at them (what the run's tuned decisions will score)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module

from textclf.data.metrics import compute_metrics
from textclf.data.tasks import LabelSpace
from textclf.commands.train import train
from textclf.engine.evaluate import score_logits

pytestmark = pytest.mark.slow


def test_tuned_scores_what_a_briefly_trained_model_ranks():
    # rare labels' positives sit at probability 0.3, their negatives at 0.1: at 0.5 only label 0 is ever predicted
    space = LabelSpace("multilabel", ["a", "b", "c"])
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]])
    probs = np.where(y == 1, 0.3, 0.1)
    probs[:, 0] = np.where(y[:, 0] == 1, 0.8, 0.2)
    logits = np.log(probs / (1 - probs))
    plain = score_logits(space, y, logits)
    tuned = score_logits(space, y, logits, tuned=True)
    assert "tuned_macro_f1" not in plain
    assert plain["macro_f1"] == pytest.approx(compute_metrics(space, y, probs)["macro_f1"])
    assert plain["macro_f1"] < 0.5 and tuned["tuned_macro_f1"] == pytest.approx(1.0)
    assert tuned["macro_f1"] == plain["macro_f1"]  # the 0.5 figures stay as they were


def small_multilabel(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    words = {"red": ["apple", "fire", "rose"], "blue": ["sky", "sea", "ice"], "green": ["leaf", "grass", "frog"]}
    rows = []
    for i in range(n):
        tags = sorted(set(rng.choice(list(words), size=1 + i % 2, replace=False)))
        text = " ".join(w for t in tags for w in rng.choice(words[t], size=2))
        rows.append({"text": text, "label": "|".join(tags)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("tune", ["auto", "false"])
def test_best_evaluation_is_chosen_at_tuned_thresholds(tune, tiny_bert, tmp_path, monkeypatch):
    """Scripted scores (a tiny model's barely move): at 0.5 the first evaluation is best, at tuned thresholds the
    third; the fold keeps the third only when thresholds are tuned."""
    import textclf.engine.evaluate as evaluate_module

    monkeypatch.chdir(tmp_path)
    real, calls = evaluate_module.score_logits, []

    def scripted(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        out["macro_f1"] = 0.5 - 0.01 * len(calls)
        if "tuned_macro_f1" in out:
            out["tuned_macro_f1"] = 0.9 if len(calls) == 3 else 0.6
        return out

    monkeypatch.setattr(evaluate_module, "score_logits", scripted)
    small_multilabel().to_csv(tmp_path / "train.csv", index=False)
    overrides = ["data=csv", "data.train_file=train.csv", f"model.name_or_path={tiny_bert}", "model.max_length=16",
                 "trainer.epochs=2", "trainer.evals_per_epoch=3", "trainer.batch_size=8", "trainer.device=cpu",
                 "plots=false", f"tune_threshold={tune}"]
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    train(cfg, run_dir=tmp_path / "run")
    history = pd.read_csv(tmp_path / "run" / "fold_0" / "history.csv")
    fold = json.loads((tmp_path / "run" / "metrics.json").read_text())["folds"][0]
    assert len(history) >= 4
    key = "tuned_macro_f1" if tune == "auto" else "macro_f1"
    assert ("tuned_macro_f1" in history) == (tune == "auto")
    chosen = history.iloc[2 if tune == "auto" else 0]
    assert history[key].idxmax() == chosen.name
    assert fold["best_step"] == int(chosen["step"]) and fold[key] == pytest.approx(chosen[key])
    assert fold["macro_f1"] == pytest.approx(chosen["macro_f1"])  # the fold reports the chosen evaluation's scores
