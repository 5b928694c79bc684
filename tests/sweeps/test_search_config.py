"""The hparams_search=optuna and launcher=joblib presets compose; Optuna's direction follows trainer.monitor;
conditional dimensions (FGM's epsilon, EMA's decay) appear only in trials that chose their option."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import textclf.cli  # noqa: F401  (registers the textclf_* resolvers the presets use)
from textclf.config.schema import validate
from textclf.commands.sweep import conditional_params
from textclf.data.metrics import direction_of

optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def compose_with_hydra(overrides):
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("monitor, direction", [("auto", "maximize"), ("macro_f1", "maximize"),
                                                ("rmse", "minimize"), ("loss", "minimize")])
def test_optuna_preset_direction_follows_the_monitor(monitor, direction):
    cfg = compose_with_hydra(["hparams_search=optuna", f"trainer.monitor={monitor}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == direction
    assert {"optimizer.lr", "pooling", "loss", "ema", "adversarial"} <= set(sweeper.params)
    assert sweeper.custom_search_space == "textclf.commands.sweep.conditional_params"


def test_presets_leave_the_training_config_valid():
    for preset in (["hparams_search=optuna"], ["launcher=joblib"]):
        cfg = compose_with_hydra(preset)
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        validate(job)
    assert compose_with_hydra(["launcher=joblib"]).hydra.launcher._target_.endswith("JoblibLauncher")


def test_direction_of_metrics():
    assert direction_of("macro_f1") == "maximize" and direction_of("rmse") == "minimize"
    assert direction_of("nope") is None


def trial_with(choices: dict):
    study = optuna.create_study()
    trial = study.ask()
    for name, value in choices.items():
        trial.suggest_categorical(name, [value])
    return trial


@pytest.mark.parametrize("choices, expected", [
    ({"adversarial": "fgm", "ema": "none"}, {"adversarial.epsilon"}),
    ({"adversarial": "none", "ema": "default"}, {"ema.decay"}),
    ({"adversarial": "none", "ema": "none"}, set()),
])
def test_conditional_dimensions_only_where_their_option_is_chosen(choices, expected):
    cfg = compose_with_hydra(["hparams_search=optuna"])
    trial = trial_with(choices)
    conditional_params(cfg, trial)
    assert set(trial.params) - set(choices) == expected
    if "adversarial.epsilon" in trial.params:
        assert 0.1 <= trial.params["adversarial.epsilon"] <= 2.0


def test_a_group_fixed_on_the_command_line_counts_as_chosen():
    cfg = compose_with_hydra(["hparams_search=optuna", "ema=default"])
    trial = trial_with({"adversarial": "none"})
    conditional_params(cfg, trial)
    assert "ema.decay" in trial.params


def test_a_missing_sweeper_plugin_is_named_with_its_install_command(monkeypatch, capsys):
    import importlib.util

    from textclf.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "hydra_plugins.hydra_optuna_sweeper" else real(name, *a))
    assert main(["train", "-m", "hparams_search=optuna"]) == 2
    assert "pip install 'textclf[sweep]'" in capsys.readouterr().err
