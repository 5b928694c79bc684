"""`textclf validate` runs exactly the checks `textclf train` runs before weights load: every config refusal
that needs the data or the backbone (loss against the task, monitor against the task, precision against the
device, max_length against the backbone, folds against the classes) is refused by both with the same
message, and what validate accepts, train accepts. (Every refusal of the hostile-input corpus is checked the
same way in test_hostile_inputs.py, beside the train run it already makes.)"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import describe, make_frame, run_textclf, write_frame
from test_hostile_inputs import error_line as _error_line

pytestmark = pytest.mark.slow


def demo_table(d):
    write_frame(make_frame(30, seed=7), d / "train.csv")


#: refusals that only the data or the backbone can reveal; name -> (make the files, overrides, pattern)
CONFIG_REFUSED = {
    "loss_mse_on_classes": (demo_table, ["loss=mse"], r"loss=mse does not fit task 'multiclass'"),
    "monitor_not_of_task": (demo_table, ["trainer.monitor=rmse"], r"trainer.monitor=rmse is not computed for task"),
    "fp16_on_cpu": (demo_table, ["trainer.precision=fp16"], r"fp16 needs a CUDA device"),
    "max_length_over_positions": (demo_table, ["model.max_length=100000"], r"model.max_length=100000 is longer than"),
    "folds_more_than_class_rows": (demo_table, ["kfold=stratified", "kfold.n_splits=20"], r"n_splits|fewer"),
}


def _both(name, root, tiny_bert):
    setup, extra, _ = CONFIG_REFUSED[name]
    args = ["data=csv", "data.train_file=train.csv", f"model.name_or_path={tiny_bert}", "trainer.device=cpu",
            "hydra.run.dir=run", *extra]
    cwd = root / name
    cwd.mkdir()
    if setup:
        setup(cwd)
    return run_textclf(["validate", *args], cwd, timeout=300), run_textclf(["train", *args], cwd, timeout=300)


@pytest.fixture(scope="module")
def outcomes(tiny_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    names = list(CONFIG_REFUSED)
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        futures = {n: pool.submit(_both, n, root, tiny_bert) for n in names}
        return {n: f.result() for n, f in futures.items()}


@pytest.mark.parametrize("case", list(CONFIG_REFUSED))
def test_validate_refuses_what_train_refuses_with_the_same_message(outcomes, case):
    validated, trained = outcomes[case]
    assert trained[0] == 2, describe(trained)
    assert validated[0] == 2, f"validate accepted what train refuses:\n{describe(validated)}"
    assert _error_line(validated[2]) == _error_line(trained[2]) != "", (describe(validated), describe(trained))
    assert re.search(CONFIG_REFUSED[case][2], _error_line(trained[2])), describe(trained)


def test_what_validate_accepts_train_accepts(tiny_bert, tmp_path):
    write_frame(make_frame(30, seed=7), tmp_path / "train.csv")
    args = ["data=csv", "data.train_file=train.csv", f"model.name_or_path={tiny_bert}", "trainer.device=cpu",
            "model.max_length=32", "trainer.epochs=1", "hydra.run.dir=run"]
    validated = run_textclf(["validate", *args], tmp_path)
    assert validated[0] == 0 and "ok: textclf train would accept" in validated[1], describe(validated)
    assert "loss ce, monitor macro_f1, 1 fold(s)" in validated[1], describe(validated)
    trained = run_textclf(["train", *args], tmp_path)
    assert trained[0] == 0 and (tmp_path / "run" / "run.json").exists(), describe(trained)
