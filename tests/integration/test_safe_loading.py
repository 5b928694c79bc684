"""Run folders are loaded safely: weights only from safetensors, other state with weights_only, and predict
refuses an unfinished run or files swapped after training. A planted pickle is never executed."""
from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from conftest import describe, write_frame

pytestmark = pytest.mark.slow


class Planted:
    """Unpickling this creates a marker file: proof that the pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def run_copy(kfold_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(kfold_run.run_dir, dst)
    return dst


def predict(cli, run_dir, kfold_run, tmp_path):
    inp = write_frame(kfold_run.test[["text"]], tmp_path / "in.csv")
    return cli("predict", f"run_dir={run_dir}", f"input={inp}", f"output={tmp_path / 'out.csv'}")


def test_planted_pickles_are_never_executed(cli, kfold_run, run_copy, tmp_path):
    marker = tmp_path / "PWNED"
    for name in ("fold_0/pytorch_model.bin", "fold_0/model.pt", "fold_1/optimizer.pt"):
        with open(run_copy / name, "wb") as f:
            pickle.dump(Planted(marker), f)
    result = predict(cli, run_copy, kfold_run, tmp_path)
    assert result[0] == 0, describe(result)
    assert not marker.exists(), "predict executed a pickle found in the run folder"
    # backbone/ is loaded as a folder (the tokenizer reads what it finds there): a file textclf did not write there is
    # refused by name, and still never run
    for name in ("backbone/pytorch_model.bin", "backbone/training_args.bin"):
        with open(run_copy / name, "wb") as f:
            pickle.dump(Planted(marker), f)
    rc, out, err = predict(cli, run_copy, kfold_run, tmp_path)
    assert rc == 2 and "backbone/" in err and "not listed in run.json" in err, describe((rc, out, err))
    assert not marker.exists(), "predict executed a pickle found in the run folder"


def test_a_pickle_in_place_of_the_weights_is_refused_not_run(cli, kfold_run, run_copy, tmp_path):
    marker = tmp_path / "PWNED"
    with open(run_copy / "fold_0" / "model.safetensors", "wb") as f:
        pickle.dump(Planted(marker), f)
    rc, out, err = predict(cli, run_copy, kfold_run, tmp_path)
    assert rc == 2 and "changed after textclf wrote it" in err and "Traceback" not in err, err
    assert not marker.exists()


def test_an_unfinished_run_is_refused(cli, kfold_run, run_copy, tmp_path):
    (run_copy / "run.json").unlink()
    rc, out, err = predict(cli, run_copy, kfold_run, tmp_path)
    assert rc == 2 and "not a finished textclf run" in err and "resume" in err, err


def test_weights_from_another_run_are_refused(cli, kfold_run, run_copy, tmp_path):
    shutil.copy(run_copy / "fold_1" / "model.safetensors", run_copy / "fold_0" / "model.safetensors")
    rc, out, err = predict(cli, run_copy, kfold_run, tmp_path)
    assert rc == 2 and "fold_0/model.safetensors" in err and "SHA-256" in err, err


def test_a_pickle_planted_as_a_checkpoint_is_refused_on_resume(tmp_path):
    from textclf.run.checkpoint import FoldCheckpoint
    from textclf.errors import TextclfError

    marker = tmp_path / "PWNED"
    ckpt = FoldCheckpoint(tmp_path / "checkpoint", every_steps=1)
    ckpt.save(torch.nn.Linear(2, 2), {"global_step": 3, "epoch": 0, "batch_index": 3})
    state = next((tmp_path / "checkpoint").glob("*.pt"))
    with open(state, "wb") as f:
        pickle.dump(Planted(marker), f)
    with pytest.raises(TextclfError, match="unreadable"):
        ckpt.load()
    assert not marker.exists()
