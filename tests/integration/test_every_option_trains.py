"""Every option of every group trains on the tiny model, on each task it fits (in-process `train`)."""
from __future__ import annotations

import json
import math
import random
import shutil
from importlib import resources

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import get_class

from textclf.commands.train import train

pytestmark = pytest.mark.slow

CONF = resources.files("textclf.conf")
# data/model options are covered by the CLI tests; hparams_search and launcher act only in a multirun
# (tests/sweeps)
SKIP_GROUPS = {"data", "model", "hparams_search", "launcher"}
TRAINED = [(g.name, f.name[:-5]) for g in sorted(CONF.iterdir(), key=lambda p: p.name)
           if g.is_dir() and not g.name.startswith("__") and g.name not in SKIP_GROUPS
           for f in sorted(g.iterdir(), key=lambda p: p.name) if f.name.endswith(".yaml")]
WORDS = {"sport": ["goal", "match", "team"], "business": ["market", "stock", "bank"],
         "politics": ["vote", "party", "minister"]}


def task_frame(task: str, n: int = 48):
    import pandas as pd

    rng = random.Random(1)
    topics = list(WORDS) if task != "binary" else ["sport", "business"]
    rows = []
    for i in range(n):
        t = topics[i % len(topics)]
        other = topics[(i + 1) % len(topics)]
        words = rng.choices(WORDS[t], k=3) + (rng.choices(WORDS[other], k=2) if task == "multilabel" and i % 2 else [])
        label = {"multilabel": f"{t}|{other}" if i % 2 else t, "regression": float(i % 3) + 0.25}.get(task, t)
        rows.append({"text": " ".join(words + ["the", "a"][: rng.randint(0, 2)]), "label": label})
    return pd.DataFrame(rows)


def tasks_for(group: str, option: str) -> list[str]:
    if group == "loss":
        if option == "auto":
            return ["binary", "multiclass", "multilabel", "regression"]
        node = __import__("omegaconf").OmegaConf.load(CONF.joinpath("loss", f"{option}.yaml"))
        return list(get_class(node._target_).tasks)
    return ["multiclass"]


CASES = [(g, o, t) for g, o in TRAINED for t in tasks_for(g, o)]


@pytest.fixture(scope="module")
def tiny_bert4(tiny_bert, tmp_path_factory):
    """The tiny BERT with 4 layers (poolings over the last 4 layers need them); new layers start random."""
    folder = tmp_path_factory.mktemp("tiny_bert4")
    for f in tiny_bert.iterdir():
        shutil.copy(f, folder / f.name)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 4
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_every_group_is_exercised():
    groups = {g for g, _, _ in CASES}
    assert {"pooling", "head", "loss", "optimizer", "scheduler", "kfold"} <= groups
    assert {t for _, _, t in CASES} == {"binary", "multiclass", "multilabel", "regression"}


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    from tiny_models import build_tiny_masked_lm

    return build_tiny_masked_lm(tmp_path_factory.mktemp("tiny_mlm"))


@pytest.mark.parametrize("group, option, task", CASES, ids=[f"{g}={o}-{t}" for g, o, t in CASES])
def test_option_trains_on_the_tiny_model(group, option, task, tiny_bert4, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    frame = task_frame(task)
    overrides = ["data=csv", "data.train_file=train.csv", f"model.name_or_path={tiny_bert4}", "model.max_length=16",
                 "trainer.epochs=1", "trainer.batch_size=16", "trainer.eval_batch_size=32", "trainer.device=cpu",
                 f"{group}={option}"]
    if group == "kfold" and option != "none":
        overrides.append("kfold.n_splits=2")
    if group == "augment" and option == "mlm":
        overrides.append(f"augment.mlm_model={request.getfixturevalue('tiny_mlm')}")
    if group == "kfold" and "group" in option:  # rows of one author stay in one fold
        frame["author"] = [f"a{i // 2}" for i in range(len(frame))]
        overrides.append("data.group_col=author")
    frame.to_csv(tmp_path / "train.csv", index=False)
    if group in ("distill", "pseudo_label") and option != "none":  # they learn from a finished run: a 2-fold teacher first
        with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
            teacher = compose(config_name="train", overrides=[*overrides[:-1], "kfold=stratified", "kfold.n_splits=2"])
        train(teacher, run_dir=tmp_path / "teacher")
        frame[["text"]].to_csv(tmp_path / "unlabeled.csv", index=False)
        overrides += [f"{group}.teacher={tmp_path / 'teacher'}", "data.unlabeled_file=unlabeled.csv"]
        if group == "pseudo_label":
            overrides.append("pseudo_label.threshold=0.01")
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    score = train(cfg, run_dir=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == task
    assert math.isfinite(score) and math.isfinite(metrics["mean"]["train_loss"])
    assert (tmp_path / "run" / "fold_0" / "model.safetensors").exists()


def test_a_subset_of_folds_still_records_every_rows_fold(tiny_bert, tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    task_frame("multiclass", n=30).to_csv(tmp_path / "train.csv", index=False)
    overrides = ["data=csv", "data.train_file=train.csv", f"model.name_or_path={tiny_bert}", "model.max_length=16",
                 "trainer.epochs=1", "trainer.device=cpu", "kfold=stratified", "kfold.n_splits=3", "kfold.folds=[1]"]
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    train(cfg, run_dir=tmp_path / "run")
    folds = pd.read_csv(tmp_path / "run" / "folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1, 2] and len(folds) == 30
    assert [p.name for p in (tmp_path / "run").glob("fold_*")] == ["fold_1"]
    oof = pd.read_csv(tmp_path / "run" / "oof.csv")
    assert sorted(oof["row"]) == sorted(folds.loc[folds["fold"] == 1, "row"])  # out-of-fold only where it ran


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_balanced_sampler_trains_an_imbalanced_table(task, tiny_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frame = task_frame(task, n=60)
    frame = frame.iloc[[i for i in range(60) if i % 3 != 2 or i < 12]]  # the third topic rare
    frame.to_csv(tmp_path / "train.csv", index=False)
    overrides = ["data=csv", "data.train_file=train.csv", f"model.name_or_path={tiny_bert}", "model.max_length=16",
                 "trainer.epochs=1", "trainer.batch_size=8", "trainer.device=cpu", "trainer.sampler=balanced"]
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    score = train(cfg, run_dir=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == task and math.isfinite(score)


def test_the_log_states_the_learning_rates_and_r_drop_of_preset_competition(tiny_bert, tmp_path, monkeypatch, caplog):
    """preset=competition's layer-wise rates and R-Drop change every step but show nowhere else in the run's log:
    each is stated once a run, not once a fold, with the rates the optimizer was built with (before warmup)."""
    import logging

    monkeypatch.chdir(tmp_path)
    task_frame("multiclass", n=30).to_csv(tmp_path / "train.csv", index=False)
    overrides = ["data=csv", "data.train_file=train.csv", f"model.name_or_path={tiny_bert}", "model.max_length=16",
                 "trainer.device=cpu", "kfold=stratified", "kfold.n_splits=2", "preset=competition",
                 "trainer.epochs=1", "trainer.evals_per_epoch=1", "augment=none", "optimizer.head_lr=0.002"]
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with caplog.at_level(logging.INFO, logger="textclf"):
        train(cfg, run_dir=tmp_path / "run")
    rates = [r.getMessage() for r in caplog.records if "learning rate by parameter group" in r.getMessage()]
    assert rates == ["optimizer: learning rate by parameter group: layer_1 0.0001, layer_0 9e-05, embeddings 8.1e-05, "
                     "backbone_other 0.0001, head 0.002"]
    rdrop = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rdrop:")]
    assert len(rdrop) == 1 and "alpha=1:" in rdrop[0] and "symmetric KL" in rdrop[0]
    assert (tmp_path / "run" / "fold_1" / "model.safetensors").exists()  # both folds ran; the lines came once


def test_plain_training_states_no_learning_rates_or_r_drop(tiny_bert, tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.chdir(tmp_path)
    task_frame("multiclass", n=30).to_csv(tmp_path / "train.csv", index=False)
    overrides = ["data=csv", "data.train_file=train.csv", f"model.name_or_path={tiny_bert}", "model.max_length=16",
                 "trainer.device=cpu", "trainer.epochs=1"]
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with caplog.at_level(logging.INFO, logger="textclf"):
        train(cfg, run_dir=tmp_path / "run")
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("done:") for m in messages)
    assert not any("learning rate by parameter group" in m or m.startswith("rdrop:") for m in messages)
