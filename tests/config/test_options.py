"""chosen(group): the option a component came from, as the user types it, from Hydra's record of the composition
(the running job's, a config's hydra node, a run folder's .hydra/hydra.yaml), and from the node's _target_ only
where that record is missing or does not describe the node."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import textclf.cli  # noqa: F401  (registers the textclf_* resolvers the presets use)
from textclf.commands.validate import resolved_copy
from textclf.config.options import chosen
from textclf.models.losses import default_loss_for
from textclf.run import folder


def composed(overrides=(), hydra_node=False):
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra_node)


def test_hydras_record_names_options_that_build_the_same_class():
    cfg = composed(["head=mlp", "loss=focal", "adversarial=fgm"], hydra_node=True)
    assert (chosen("head", cfg), chosen("loss", cfg), chosen("adversarial", cfg)) == ("mlp", "focal", "fgm")
    assert chosen("ema", cfg) == "none" and chosen("launcher", cfg) is None


def test_loss_auto_made_concrete_is_named_by_the_loss_it_became():
    cfg = composed(["loss=auto"], hydra_node=True)
    assert chosen("loss", cfg) == "auto"
    for task, option in (("multilabel", "bce"), ("multiclass", "ce"), ("regression", "mse")):
        concrete = OmegaConf.merge(cfg, {"loss": None}, {"loss": default_loss_for(task)})
        assert chosen("loss", concrete) == option


def test_without_hydras_record_the_option_is_the_one_whose_yaml_builds_the_target():
    cfg = composed(["pooling=attention", "augment=eda"])
    assert chosen("pooling", cfg) == "attention" and chosen("augment", cfg) == "eda"
    assert chosen("loss", resolved_copy(cfg, loss=default_loss_for("binary"))) == "ce"
    custom = OmegaConf.merge(cfg, {"pooling": {"_target_": "my.own.GatedPooling"}})
    assert chosen("pooling", custom) == "GatedPooling"


@pytest.mark.parametrize("recorded", [True, False], ids=["hydra.yaml", "output_subdir=null"])
def test_a_run_folder_answers_from_its_record_or_its_config(tmp_path, recorded):
    cfg = composed(["pooling=weighted_layer", "head=multi_sample"], hydra_node=True)
    if recorded:
        (tmp_path / ".hydra").mkdir()
        (tmp_path / ".hydra" / "hydra.yaml").write_text(OmegaConf.to_yaml({"hydra": cfg.hydra}), encoding="utf-8")
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(job), encoding="utf-8")
    run_cfg, record = OmegaConf.load(tmp_path / folder.CONFIG), folder.read_choices(tmp_path)
    assert chosen("pooling", run_cfg, choices=record) == "weighted_layer"
    # three head options build ClassificationHead: only Hydra's record tells them apart
    assert chosen("head", run_cfg, choices=record) == ("multi_sample" if recorded else "default")


def test_a_running_jobs_record_that_does_not_describe_the_node_is_not_trusted():
    """Hydra's record of another composition (a job run earlier in this process) does not name this config's
    option: augment=none builds nothing, so it cannot be where an EDA node came from."""
    from hydra.core.hydra_config import HydraConfig

    earlier, now = composed(["augment=none"], hydra_node=True), composed(["augment=eda", "loss=focal"])
    before = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(earlier)
    try:
        assert chosen("augment", now) == "eda" and chosen("loss", now) == "focal"
    finally:
        HydraConfig.instance().cfg = before


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_warns_that_fp32_is_faster(monkeypatch, caplog, native):
    from textclf.commands import validate

    monkeypatch.setattr(validate, "cpu_has_bf16", lambda: native)
    with caplog.at_level("WARNING", logger="textclf.commands.validate"):
        assert validate.check_device(OmegaConf.create({"device": "cpu", "precision": "bf16"})).type == "cpu"
        validate.check_device(OmegaConf.create({"device": "cpu", "precision": "fp32"}))
    warned = [r.getMessage() for r in caplog.records if "bf16" in r.getMessage()]
    assert len(warned) == (0 if native else 1)
    assert native or "trainer.precision=fp32 is the fast choice" in warned[0]
