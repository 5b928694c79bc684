"""`textclf ensemble`: blend runs by their out-of-fold and test probabilities, refuse runs that do not match."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from textclf.commands.ensemble import main as ensemble_main
from textclf.data.tasks import LabelSpace
from textclf.run.manifest import write_manifest


def fake_run(folder: Path, probs: np.ndarray, y: np.ndarray, *, classes=("neg", "neu", "pos"), task="multiclass",
             folds: np.ndarray | None = None, test: np.ndarray | None = None) -> Path:
    """A finished run folder as `textclf train` writes it (labels.json, folds.csv, oof.csv, metrics.json)."""
    labels = LabelSpace(task, list(classes))
    folder.mkdir(parents=True)
    (folder / "labels.json").write_text(json.dumps(labels.to_dict()))
    n = len(y)
    folds = np.arange(n) % 2 if folds is None else folds
    pd.DataFrame({"row": np.arange(n), "fold": folds}).to_csv(folder / "folds.csv", index=False)
    table = labels.table(probs, y_true=y, extra={"source": ["train"] * n, "row": np.arange(n)})
    table.to_csv(folder / "oof.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"task": task, "monitor": "macro_f1"}))
    if test is not None:
        labels.table(test).to_csv(folder / "test_predictions.csv", index=False)
    write_manifest(folder)  # run.json last, as train writes it: ensemble verifies every table it reads
    return folder


def probabilities(rng, n, k=3):
    p = rng.random((n, k)) + 0.05
    return p / p.sum(axis=1, keepdims=True)


def test_the_blend_averages_oof_and_test_probabilities_and_beats_its_members(tmp_path, capsys):
    y = np.tile([0, 1, 2], 10)
    # each run is right on a different two thirds of the classes; their mean is right everywhere
    a = np.full((30, 3), 0.1)
    b = np.full((30, 3), 0.1)
    for i, c in enumerate(y):
        a[i, c if c != 2 else 0] += 0.7
        b[i, c if c != 0 else 1] += 0.7
        a[i, c] += 0.15
        b[i, c] += 0.15
    a, b = a / a.sum(1, keepdims=True), b / b.sum(1, keepdims=True)
    rng = np.random.default_rng(0)
    ta, tb = probabilities(rng, 8), probabilities(rng, 8)
    run_a = fake_run(tmp_path / "a", a, y, test=ta)
    run_b = fake_run(tmp_path / "b", b, y, test=tb)
    out = tmp_path / "blend"
    assert ensemble_main([str(run_a), str(run_b), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ensemble of 2 runs on 30 out-of-fold rows (macro_f1, higher is better)" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    members = [m["macro_f1"] for m in metrics["members"].values()]
    assert metrics["oof"]["macro_f1"] == pytest.approx(1.0) and max(members) < 0.7
    oof = pd.read_csv(out / "oof.csv")
    np.testing.assert_allclose(oof[["prob_neg", "prob_neu", "prob_pos"]].to_numpy(), (a + b) / 2, atol=1e-9)
    test = pd.read_csv(out / "test_predictions.csv")
    np.testing.assert_allclose(test[["prob_neg", "prob_neu", "prob_pos"]].to_numpy(), (ta + tb) / 2, atol=1e-9)
    assert (out / "folds.csv").read_text() == (run_a / "folds.csv").read_text()


def test_weights_tilt_the_blend(tmp_path, capsys):
    rng = np.random.default_rng(1)
    y = np.tile([0, 1, 2], 4)
    a, b = probabilities(rng, 12), probabilities(rng, 12)
    out = tmp_path / "blend"
    args = [str(fake_run(tmp_path / "a", a, y)), str(fake_run(tmp_path / "b", b, y)), "--weights", "3", "1"]
    assert ensemble_main([*args, "--output", str(out)]) == 0
    blended = pd.read_csv(out / "oof.csv")[["prob_neg", "prob_neu", "prob_pos"]].to_numpy()
    np.testing.assert_allclose(blended, 0.75 * a + 0.25 * b, atol=1e-9)
    assert not (out / "test_predictions.csv").exists()


def test_multilabel_and_regression_runs_blend(tmp_path, capsys):
    rng = np.random.default_rng(2)
    y = (rng.random((20, 3)) < 0.4).astype(np.float64)
    a, b = rng.random((20, 3)), rng.random((20, 3))
    runs = [fake_run(tmp_path / n, p, y, classes=("x", "y", "z"), task="multilabel") for n, p in (("a", a), ("b", b))]
    assert ensemble_main([str(r) for r in runs]) == 0
    y = rng.normal(size=(20, 1))
    runs = [fake_run(tmp_path / f"r{n}", y + rng.normal(size=(20, 1)), y, classes=("score",), task="regression")
            for n in range(2)]
    assert ensemble_main([str(r) for r in runs]) == 0
    assert "rmse, lower is better" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    (dict(folds=np.arange(30) % 3), "split differently"),
    (dict(classes=("a", "b", "c")), "different tasks or classes"),
    (dict(y=np.tile([1, 0, 2], 10)), "different true labels"),
])
def test_runs_that_do_not_match_are_refused(tmp_path, capsys, change, message):
    rng = np.random.default_rng(3)
    y = np.tile([0, 1, 2], 10)
    run_a = fake_run(tmp_path / "a", probabilities(rng, 30), y)
    run_b = fake_run(tmp_path / "b", probabilities(rng, 30), change.pop("y", y), **change)
    assert ensemble_main([str(run_a), str(run_b)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textclf: error:") and message in err


def test_a_folder_that_is_no_run_is_refused(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert ensemble_main([str(tmp_path / "x"), str(tmp_path / "x")]) == 2
    assert "no labels.json, oof.csv, folds.csv" in capsys.readouterr().err
