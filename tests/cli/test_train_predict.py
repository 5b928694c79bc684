"""End to end through the installed command: `textclf train` with k-fold and a test file, then `textclf predict`."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import VOCAB, cli_env, describe, make_frame, run_textclf, tiny_overrides, write_frame

pytestmark = pytest.mark.slow

CLASSES = ["business", "politics", "sport"]  # sorted string labels = logit order
PROB_COLS = [f"prob_{c}" for c in CLASSES]


def test_run_folder_has_everything_predict_and_the_user_need(kfold_run):
    run = kfold_run.run_dir
    for name in ("config.yaml", "train.log", "labels.json", "folds.csv", "oof.csv", "metrics.json",
                 "test_predictions.csv", "backbone/config.json", "fold_0/model.safetensors",
                 "fold_1/model.safetensors"):
        assert (run / name).is_file(), f"{name} missing from the run folder"
    assert not (run / "fold_2").exists(), "kfold.n_splits=2 must train exactly two folds"
    assert "fold 1" in (run / "train.log").read_text(encoding="utf-8"), "train.log does not record the folds"
    assert json.loads((run / "labels.json").read_text())["classes"] == CLASSES

    # the tokenizer travels with the run, and it is the tiny one (not some default vocabulary)
    from transformers import AutoTokenizer

    assert (run / "backbone" / "tokenizer.json").is_file() or (run / "backbone" / "vocab.txt").is_file()
    assert len(AutoTokenizer.from_pretrained(str(run / "backbone"))) == len(VOCAB)


def test_resolved_config_records_the_overrides(kfold_run):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(kfold_run.run_dir / "config.yaml")
    assert cfg.kfold.n_splits == 2
    assert cfg.kfold.seed == cfg.trainer.seed  # interpolations are resolved
    assert cfg.model.max_length == 32
    assert cfg.data.train_file == "train.csv"


def test_safetensors_weights_load_without_pickle(kfold_run):
    from safetensors.torch import load_file

    state = load_file(str(kfold_run.run_dir / "fold_0" / "model.safetensors"))
    assert any(k.startswith("backbone.") for k in state) and any(k.startswith("head.") for k in state)


def test_folds_csv_puts_every_training_row_in_exactly_one_fold(kfold_run):
    folds = pd.read_csv(kfold_run.run_dir / "folds.csv")
    n = len(kfold_run.train)
    assert list(folds["row"]) == list(range(n))
    assert set(folds["fold"]) == {0, 1}
    # stratified: every class is split evenly between the two folds
    counts = pd.crosstab(kfold_run.train["label"], folds["fold"])
    assert (counts.max(axis=1) - counts.min(axis=1)).max() <= 1, counts


def test_oof_has_one_row_per_training_row_and_probabilities(kfold_run):
    oof = pd.read_csv(kfold_run.run_dir / "oof.csv")
    train = kfold_run.train
    assert len(oof) == len(train)
    assert sorted(oof["row"]) == list(range(len(train)))
    by_row = oof.set_index("row").sort_index()
    assert list(by_row["label"]) == list(train["label"]), "oof labels are not aligned with the training rows"
    probs = by_row[PROB_COLS].to_numpy()
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert list(by_row["pred"]) == [CLASSES[i] for i in probs.argmax(axis=1)]


def test_metrics_json_has_every_fold_and_mean_std(kfold_run):
    metrics = json.loads((kfold_run.run_dir / "metrics.json").read_text())
    assert [f["fold"] for f in metrics["folds"]] == [0, 1]
    for part in ("mean", "std"):
        for key in ("accuracy", "macro_f1", "loss"):
            assert np.isfinite(metrics[part][key]), (part, key)
    for key in ("accuracy", "macro_f1", "loss"):
        values = [f[key] for f in metrics["folds"]]
        assert metrics["mean"][key] == pytest.approx(np.mean(values))
        assert metrics["std"][key] == pytest.approx(np.std(values))
    assert all(0.0 <= f["accuracy"] <= 1.0 for f in metrics["folds"])

    # the oof accuracy in metrics.json is the accuracy of oof.csv
    oof = pd.read_csv(kfold_run.run_dir / "oof.csv")
    assert metrics["oof"]["accuracy"] == pytest.approx((oof["pred"] == oof["label"]).mean())


def test_test_predictions_one_row_per_test_row(kfold_run):
    preds = pd.read_csv(kfold_run.run_dir / "test_predictions.csv")
    assert len(preds) == len(kfold_run.test)
    probs = preds[PROB_COLS].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert list(preds["pred"]) == [CLASSES[i] for i in probs.argmax(axis=1)]


def test_predict_unlabelled_file_keeps_input_order(kfold_run, cli, tmp_path):
    # the test texts in a shuffled order, without the label column: predictions must follow the input order
    order = np.random.default_rng(0).permutation(len(kfold_run.test))
    write_frame(kfold_run.test.iloc[order][["text"]].reset_index(drop=True), tmp_path / "new.csv")
    result = cli("predict", f"run_dir={kfold_run.run_dir}", "input=new.csv", "output=out/preds.csv", "device=cpu")
    assert result[0] == 0, describe(result)

    out = pd.read_csv(tmp_path / "out" / "preds.csv")
    assert list(out.columns) == ["row", "pred", *PROB_COLS]
    assert list(out["row"]) == list(range(len(order)))
    expected = pd.read_csv(kfold_run.run_dir / "test_predictions.csv").iloc[order]
    np.testing.assert_allclose(out[PROB_COLS].to_numpy(), expected[PROB_COLS].to_numpy(), atol=1e-5)
    assert list(out["pred"]) == list(expected["pred"])
    assert "accuracy" not in result[1], "no labels, so no metrics"


def test_predict_labelled_file_prints_metrics_and_matches_test_predictions(kfold_run, cli, tmp_path):
    result = cli("predict", f"run_dir={kfold_run.run_dir}", f"input={kfold_run.data_dir / 'test.csv'}",
                 "output=preds.csv", "device=cpu", "batch_size=5")
    assert result[0] == 0, describe(result)
    out = pd.read_csv(tmp_path / "preds.csv")
    assert list(out["row"]) == list(range(len(kfold_run.test)))
    # both folds averaged, as in the training run (which used another batch size)
    expected = pd.read_csv(kfold_run.run_dir / "test_predictions.csv")
    np.testing.assert_allclose(out[PROB_COLS].to_numpy(), expected[PROB_COLS].to_numpy(), atol=1e-5)

    assert "accuracy" in result[1]
    metrics = json.loads(result[1])
    assert metrics["accuracy"] == pytest.approx((out["pred"] == kfold_run.test["label"]).mean())


def test_predict_names_a_missing_text_column(kfold_run, cli, tmp_path):
    write_frame(kfold_run.test.rename(columns={"text": "body"}), tmp_path / "new.csv")
    rc, out, err = cli("predict", f"run_dir={kfold_run.run_dir}", "input=new.csv", "device=cpu")
    assert rc != 0 and "Traceback" not in out + err, describe((rc, out, err))
    assert "new.csv" in err and "'text'" in err and "body" in err
    assert not (tmp_path / "predictions.csv").exists()


def test_predict_a_subset_of_folds(kfold_run, cli, tmp_path):
    result = cli("predict", f"run_dir={kfold_run.run_dir}", f"input={kfold_run.data_dir / 'test.csv'}",
                 "output=f0.csv", "device=cpu", "folds=[0]")
    assert result[0] == 0, describe(result)
    one = pd.read_csv(tmp_path / "f0.csv")[PROB_COLS].to_numpy()
    both = pd.read_csv(kfold_run.run_dir / "test_predictions.csv")[PROB_COLS].to_numpy()
    assert one.shape == both.shape and not np.allclose(one, both, atol=1e-6)


@pytest.mark.parametrize("override, key", [("device=gpu", "device"), ("precision=fp64", "precision")])
def test_predict_bad_option_is_a_clear_error(kfold_run, cli, override, key):
    rc, out, err = cli("predict", f"run_dir={kfold_run.run_dir}", f"input={kfold_run.data_dir / 'test.csv'}",
                       "output=p.csv", override)
    assert rc != 0
    assert "Traceback" not in out + err, describe((rc, out, err))
    assert key in err


def test_tqdm_disable_turns_every_progress_bar_off(kfold_run):
    # the tests run textclf with TQDM_DISABLE=1: no bar may override it (training, evaluation, tokenizing)
    _, out, err = kfold_run.result
    assert "batch/s" not in err + out and "chunk/s" not in err + out, err[-2000:]


def test_progress_bars_written_to_a_log_file_hold_no_cursor_movements(tmp_path, tiny_bert, cli_env_bars_on):
    """Output captured to a file (nohup, CI, a SLURM job's log): an evaluation inside an epoch would draw its bar one
    line down and climb back with '\\x1b[A', which a file keeps as litter. The bars still appear."""
    write_frame(make_frame(60), tmp_path / "train.csv")
    rc, out, err = run_textclf(["train", "data=csv", "data.train_file=train.csv", "trainer.evals_per_epoch=2",
                                *tiny_overrides(tiny_bert, tmp_path / "run")], cwd=tmp_path, env=cli_env_bars_on)
    assert rc == 0, describe((rc, out, err))
    assert "fold 0 eval" in err and "batch" in err  # the evaluation bar was drawn, mid-epoch
    assert "\x1b[A" not in err + out, repr(err[-1500:])


@pytest.fixture
def cli_env_bars_on():
    return cli_env(TQDM_DISABLE=None)
