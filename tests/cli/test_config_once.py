"""One `textclf train` composes its config once, validates it once and locks its run folder once, in the process
that runs it: the run is driven in-process through `textclf.cli.main` (as the console script runs it), with Hydra's
composition, the schema check and the run-folder lock counted.

Hydra's `@hydra.main` composes the config itself; in Hydra 1.3 it first composes a throwaway copy in multirun
mode only to read `hydra.mode` (`Hydra.get_mode`), then the config the run uses. That probe is Hydra's, made on
every run of every Hydra app: it is counted apart, so the test says what textclf controls."""
from __future__ import annotations

from collections import Counter

import pytest
from conftest import make_frame, tiny_overrides, write_frame
from hydra._internal.hydra import Hydra  # only to count compositions: textclf itself uses Hydra's public API
from hydra.types import RunMode

from textclf.config import schema
from textclf.run.lock import RunLock


@pytest.fixture
def counted(monkeypatch):
    """Counts of compositions (by run mode), schema checks and lock acquisitions while the test runs."""
    counts: Counter = Counter()

    def counting(name, fn, key=None):
        def wrapper(*args, **kwargs):
            counts[key(*args, **kwargs) if key else name] += 1
            return fn(*args, **kwargs)
        return wrapper

    def mode(self, config_name=None, overrides=None, run_mode=RunMode.RUN, *args, **kwargs):
        return f"compose:{kwargs.get('validate_sweep_overrides', True) and run_mode.name or 'mode probe'}"

    monkeypatch.setattr(Hydra, "compose_config", counting("compose", Hydra.compose_config, mode))
    monkeypatch.setattr(schema, "problems", counting("validate", schema.problems))
    monkeypatch.setattr(RunLock, "acquire", counting("lock", RunLock.acquire))
    return counts


def test_one_train_composes_validates_and_locks_once(tiny_bert, tmp_path, counted, in_process_cli):
    write_frame(make_frame(30, seed=0), tmp_path / "train.csv")
    run_dir = tmp_path / "run"
    rc = in_process_cli(["train", "data=csv", "data.train_file=train.csv", "debug=fast",
                         *tiny_overrides(tiny_bert, run_dir)])
    assert rc == 0 and (run_dir / "run.json").exists()
    assert counted["compose:RUN"] == 1, dict(counted)  # Hydra's run; nothing composes it again
    assert counted["compose:mode probe"] <= 1, dict(counted)  # Hydra's own get_mode (see the module docstring)
    assert counted["validate"] == 1, dict(counted)
    assert counted["lock"] == 1, dict(counted)


def test_a_refused_config_is_composed_and_validated_once(tmp_path, counted, in_process_cli, capsys):
    assert in_process_cli(["validate", "trainer.epochs=0"]) == 2
    assert "trainer.epochs: must be an integer >= 1, got 0" in capsys.readouterr().err
    assert counted["compose:RUN"] == 1 and counted["validate"] == 1, dict(counted)
    assert list(tmp_path.iterdir()) == []
