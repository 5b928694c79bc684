"""The config schema (textclf.config.schema): every key, type, range and option it declares is enforced with one
message naming the key and the nearest valid name (test_defaults.py: the schema holds no defaults, the YAML does)."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
import textclf.cli  # noqa: F401  (registers the textclf_* resolvers the presets use)
from textclf.config.schema import check_command_line, validate, validate_predict
from textclf.errors import TextclfError


def compose_cfg(overrides=(), name="train"):
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def refusal(overrides=(), check=validate, name="train") -> str:
    with pytest.raises(TextclfError) as info:
        check(compose_cfg(overrides, name))
    return str(info.value)


def command_line_refusal(overrides, **kwargs) -> str:
    with pytest.raises(TextclfError) as info:
        check_command_line(kwargs.pop("name", "train"), list(overrides), **kwargs)
    return str(info.value)


# ----------------------------------------------------------------------------- unknown keys
@pytest.mark.parametrize("override, message", [
    ("+trainer.epochz=1", "trainer.epochz: unknown key; did you mean trainer.epochs?"),
    ("+data.text_column=review", "data.text_column: unknown key; did you mean data.text_col?"),
    ("+trainr.epochs=3", "trainr: unknown key; did you mean trainer?"),
    ("+optimizer.weight_decy=0.1", "optimizer.weight_decy: unknown key for textclf.engine.optim.adamw; did you mean "
                                   "optimizer.weight_decay?"),
])
def test_an_unknown_key_names_the_nearest_one(override, message):
    assert message in refusal([override])


def test_an_unknown_key_far_from_every_name_lists_the_known_ones():
    message = refusal(["+trainer.zzz=1"])
    assert "trainer.zzz: unknown key (known: average, average_soup, average_start, average_top_k, batch_size, " in message


def test_a_typo_inside_a_yaml_file_is_named(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.yaml").write_text("defaults:\n  - csv\n  - _self_\ntrain_file: x.csv\n"
                                                 "text_colum: review\n")
    message = command_line_refusal(["data=mine"], config_dir=str(tmp_path))
    assert "data.text_colum: unknown key; did you mean data.text_col?" in message
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("defaults:\n  - minilmm\n  - _self_\n")
    message = command_line_refusal(["model=mine"], config_dir=str(tmp_path))
    assert "model=minilmm: no such option (in the defaults of model/mine); did you mean model=minilm?" in message


def test_a_runtime_argument_cannot_come_from_the_config():
    assert "pooling.hidden_size: set by textclf when it builds" in refusal(["+pooling.hidden_size=3"])


# ----------------------------------------------------------------------------- types and ranges
@pytest.mark.parametrize("overrides, message", [
    (["optimizer.lr=fast"], "optimizer.lr: must be a number, got 'fast'"),
    (["trainer.epochs=two"], "trainer.epochs: must be an integer >= 1, got 'two'"),
    (["trainer.epochs=0"], "trainer.epochs: must be an integer >= 1, got 0"),
    (["trainer.epochs=1.5"], "trainer.epochs: must be an integer >= 1, got 1.5"),
    (["trainer.max_grad_norm=nan"], "trainer.max_grad_norm: must be null or a number > 0, got nan"),
    (["model.hidden_dropout=1.0"], "model.hidden_dropout: must be null or a number in [0, 1), got 1.0"),
    (["data.encoding=utf9"], "data.encoding: must be a text encoding Python knows"),
    (["task=regresion"], "task: must be one of auto, binary, multiclass, multilabel, regression, got 'regresion'; "
                         "did you mean regression?"),
    (["adversarial=pgd", "adversarial.steps=2.5"], "adversarial.steps: must be an integer, got 2.5"),
    (["ema=default", "ema.warmup=yes please"], "ema.warmup: must be true or false, got 'yes please'"),
    (["head.hidden_dim=big"], "head.hidden_dim: must be null or an integer, got 'big'"),
    (["optimizer=sgd", "~optimizer.lr"], "optimizer.lr: required by textclf.engine.optim.sgd"),
    (["logger=tensorboard", "logger.tensorboard.flush_secs=soon"],
     "logger.tensorboard.flush_secs: must be an integer, got 'soon'"),
])
def test_a_wrong_type_or_range_is_one_clear_line(overrides, message):
    assert message in refusal(overrides)


def test_interpolations_resolve_before_they_are_checked():
    validate(compose_cfg(["kfold=stratified", "trainer.seed=7"]))  # kfold.seed: ${trainer.seed}
    message = refusal(["kfold=stratified", "trainer.seed=abc"])
    assert "kfold.seed: must be an integer, got 'abc'" in message and "trainer.seed:" in message
    assert "data.train_file: cannot resolve ${trainer.sed}" in refusal(["data.train_file=${trainer.sed}"])


def test_class_weights_may_be_balanced_or_a_list():
    validate(compose_cfg(["loss=ce", "loss.class_weights=balanced"]))
    validate(compose_cfg(["loss=focal", "loss.class_weights=[1,2,3]", "loss.alpha=[0.2,0.3,0.5]"]))


# ----------------------------------------------------------------------------- the keys added with the loggers
GOOD = [
    "plots=false", "plots=true", "resume=true", "logger=none", "logger=[]", "logger=[csv,tensorboard,mlflow]",
    "trainer.eval_every_steps=null", "trainer.eval_every_steps=1", "trainer.eval_every_steps=500",
    "trainer.limit_train_batches=null", "trainer.limit_train_batches=0.25", "trainer.limit_train_batches=1.0",
    "trainer.limit_train_batches=10", "trainer.limit_eval_batches=1", "trainer.limit_eval_batches=0.5",
    "trainer.log_every_steps=0", "trainer.log_every_steps=50", "debug=fast",
]
BAD = [
    ("plots=maybe", "plots: must be true or false, got 'maybe'"),
    ("resume=2", "resume: must be true or false (resume=<run folder> also works on the command line), got 2"),
    ("+logger.csv.every=2", "logger.csv.every: unknown key for textclf.observe.loggers.CSVLogger"),
    ("trainer.eval_every_steps=0", "trainer.eval_every_steps: must be null or an integer >= 1, got 0"),
    ("trainer.eval_every_steps=often", "trainer.eval_every_steps: must be null or an integer >= 1, got 'often'"),
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches: must be null, a fraction in (0, 1] or a number "
                                      "of batches >= 1, got 0"),
    ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches: must be null, a fraction"),
    ("trainer.limit_eval_batches=-0.5", "trainer.limit_eval_batches: must be null, a fraction"),
    ("trainer.limit_eval_batches=true", "trainer.limit_eval_batches: must be null, a fraction"),
    ("trainer.log_every_steps=-1", "trainer.log_every_steps: must be an integer >= 0, got -1"),
]


@pytest.mark.parametrize("override", GOOD)
def test_each_new_key_accepts_its_values(override):
    validate(compose_cfg([override]))


@pytest.mark.parametrize("override, message", BAD, ids=[b[0] for b in BAD])
def test_each_new_key_refuses_a_bad_value(override, message):
    assert message in refusal([override])


def test_logger_targets_are_checked_but_a_missing_optional_package_is_not_a_config_error(tmp_path, monkeypatch):
    (tmp_path / "textclf_test_fake_logger.py").write_text(
        "import textclf_test_package_that_is_not_installed\n\nclass FakeLogger:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    validate(compose_cfg(["+logger.fake._target_=textclf_test_fake_logger.FakeLogger"]))
    message = refusal(["+logger.mine._target_=textclf.observe.loggers.CSVLoger"])
    assert ("logger.mine._target_: cannot import 'textclf.observe.loggers.CSVLoger' (textclf.observe.loggers has no 'CSVLoger'; "
            "did you mean textclf.observe.loggers.CSVLogger?)") in message
    assert "logger.x: must be a mapping with a _target_" in refusal(["+logger.x=3"])


# ----------------------------------------------------------------------------- the command line, composed
@pytest.mark.parametrize("overrides, message", [
    (["loss=focall"], "loss=focall: no such option; did you mean loss=focal? (options: auto, bce, bce_focal, ce, "),
    (["logger=[csv,tensorbord]"], "logger=tensorbord: no such option; did you mean logger=tensorboard?"),
    (["trainer.epochz=1"], "trainer.epochz: unknown key; did you mean trainer.epochs?"),
    (["polling=cls"], "polling: unknown key; did you mean pooling?"),
    (["~trainer.sed"], "trainer.sed: unknown key; did you mean trainer.seed?"),
    (["+trainer.epochs=3"], "trainer.epochs: already set; drop the +"),
    (["hydra.job.nam=x"], "hydra.job.nam: unknown key; did you mean hydra.job.name?"),
    (["trainer.epochs=[1"], "trainer.epochs=[1: cannot parse this override"),
])
def test_composition_errors_become_our_message(overrides, message):
    assert message in command_line_refusal(overrides)


def test_every_problem_of_a_command_line_at_once():
    message = command_line_refusal(["loss=focall", "loss.gamma=3", "trainer.epochz=2", "optimizer.lr=fast",
                                    "+trainer.foo=1", "trainer.epochs=0"])
    assert message.startswith("invalid configuration:\n  - ")
    for part in ("loss=focall", "trainer.epochz", "optimizer.lr", "trainer.foo", "trainer.epochs"):
        assert part in message, message
    assert "loss.gamma" not in message  # it belongs to the option that was refused, not to the default loss
    assert len(message.splitlines()) == 6


def test_values_are_left_alone_when_only_the_composition_is_checked():
    check_command_line("train", ["optimizer.lr=fast"], values=False)  # --cfg job prints it as it is
    assert "trainer.epochz" in command_line_refusal(["trainer.epochz=1"], values=False)


@pytest.mark.parametrize("overrides, multirun", [
    (["loss=ce,focal"], True), (["optimizer.lr=1e-5,2e-5"], True), (["pooling=choice(mean,cls)"], True),
    (["trainer.epochs=range(1,4)"], True), (["trainer.epochs=0,1"], True), (["loss=glob(*)"], True),
    (["optimizer.lr=tag(log,interval(1e-5,1e-3))"], True), (["loss=focal,bce_focal", "loss.gamma=3"], True),
    (["hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.params.trainer.epochs=choice(2,3)"], True),
    (["launcher=joblib", "pooling=mean,cls"], True),
    (["loss=ce,focal"], False),  # no -m: Hydra itself says to add it
    (["resume=true", "hydra.run.dir=outputs/x"], False), (["debug=fast", "kfold=stratified"], False),
    (["data=csv", "data.train_file=a.csv", "data.label_col=[a,b]"], False),
    (["data.train_file=${hydra:runtime.cwd}/a.csv"], False),
    (["hydra.job.chdir=false", "hydra/job_logging=stdout"], False),
    (["model=bert"], False), (["kfold.folds=[0]"], False), (["logger=[]"], False),
])
def test_valid_command_lines_are_never_refused(overrides, multirun):
    check_command_line("train", overrides, multirun=multirun)


def test_a_swept_option_is_checked_by_name():
    assert "loss=focall: no such option" in command_line_refusal(["loss=ce,focall"], multirun=True)
    assert "optimizer.lrr: unknown key" in command_line_refusal(["optimizer.lrr=interval(1e-5,1e-3)"], multirun=True)


def test_predict_options():
    message = command_line_refusal(["run_dir=r", "input=i", "devic=cpu", "batch_size=0", "folds=1"], name="predict")
    assert message.startswith("invalid options:")
    for part in ("devic: unknown key; did you mean device?", "batch_size: must be an integer >= 1, got 0",
                 "folds: must be null or a list of integers (fold numbers like [0,2]), got 1"):
        assert part in message, message
    assert "run_dir: required" in refusal(name="predict", check=validate_predict)
    validate_predict(compose_cfg(["run_dir=r", "input=i", "folds=[0,2]", "device=cuda:1"], name="predict"))
