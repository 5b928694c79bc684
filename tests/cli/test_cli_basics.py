"""The installed `textclf` command: dispatch, Hydra's own flags, and a multirun sweep."""
from __future__ import annotations

import json

import pytest
from conftest import describe, make_frame, tiny_overrides, write_frame


def test_top_level_help_lists_the_commands(cli):
    rc, out, err = cli("--help")
    assert rc == 0, describe((rc, out, err))
    assert "train" in out and "predict" in out


def test_no_command_prints_usage_and_fails(cli):
    rc, out, err = cli()
    assert rc != 0
    assert "usage" in (out + err).lower()


def test_unknown_command_fails_with_a_message(cli):
    rc, out, err = cli("nope")
    assert rc != 0
    assert "nope" in err and "unknown command" in err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("command", ["train", "predict"])
def test_command_help_works(cli, command):
    rc, out, err = cli(command, "--help")
    assert rc == 0, describe((rc, out, err))
    assert "Traceback" not in out + err
    if command == "train":  # every config group and its options
        for group in ("data", "model", "pooling", "kfold", "loss", "optimizer", "scheduler"):
            assert f"{group}:" in out
        assert "cls" in out and "mean" in out
    else:
        assert "run_dir" in out and "input" in out


def test_cfg_job_prints_the_config_without_training(cli, tmp_path):
    rc, out, err = cli("train", "--cfg", "job", "pooling=cls", "trainer.epochs=7")
    assert rc == 0, describe((rc, out, err))
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(out)
    assert cfg.trainer.epochs == 7
    assert cfg.pooling._target_.endswith("ClsPooling")
    assert "hydra" not in cfg
    # nothing was trained or written
    assert not (tmp_path / "outputs").exists()
    assert list(tmp_path.iterdir()) == []


def test_version(cli):
    rc, out, _ = cli("--version")
    import textclf

    assert rc == 0 and textclf.__version__ in out


# ----------------------------------------------------------------------------- multirun
@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_bert):
    """`-m pooling=mean,cls` with tiny settings: two jobs, run once for the tests below."""
    from conftest import run_textclf

    data_dir = tmp_path_factory.mktemp("sweep_data")
    write_frame(make_frame(60, seed=3), data_dir / "train.csv")
    sweep_dir = tmp_path_factory.mktemp("sweep_out") / "sweep"
    args = ["train", "-m", "data=csv", "data.train_file=train.csv", "pooling=mean,cls",
            *[o for o in tiny_overrides(tiny_bert, sweep_dir) if not o.startswith("hydra.run.dir")],
            f"hydra.sweep.dir={sweep_dir}"]
    result = run_textclf(args, data_dir)
    return sweep_dir, result


@pytest.mark.slow
def test_multirun_trains_one_job_per_value(sweep):
    sweep_dir, result = sweep
    assert result[0] == 0, describe(result)
    metrics = sorted(sweep_dir.rglob("metrics.json"))
    assert len(metrics) == 2, [str(p.relative_to(sweep_dir)) for p in metrics]
    poolings = set()
    from omegaconf import OmegaConf

    for path in metrics:
        m = json.loads(path.read_text())
        assert len(m["folds"]) == 1 and "macro_f1" in m["mean"]
        poolings.add(OmegaConf.load(path.parent / "config.yaml").pooling._target_.rsplit(".", 1)[-1])
    assert poolings == {"MeanPooling", "ClsPooling"}


@pytest.mark.slow
def test_multirun_job_folders_are_direct_children_of_the_sweep_dir(sweep):
    sweep_dir, result = sweep
    assert result[0] == 0, describe(result)
    metrics = sorted(sweep_dir.rglob("metrics.json"))
    assert len(metrics) == 2
    assert all(p.parent.parent == sweep_dir for p in metrics), [str(p.relative_to(sweep_dir)) for p in metrics]
