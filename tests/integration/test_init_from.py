"""model.init_from through the installed command: a run's weights start another run. A 3-class run (conftest's
kfold_run) initialises a 2-class run: the backbone loads, the head (another number of classes) is mismatched and
kept as built, init_report.json says so with both shapes, and the run finishes. A fold folder and a .safetensors
file work too; a path that does not exist is refused by validate and train alike, before anything loads."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import describe, make_frame, run_textclf, tiny_overrides, write_frame
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("textclf: error:")]
    return lines[0] if lines else ""


def train(cwd, tiny_bert, run_dir, *extra):
    args = ["train", "data=csv", "data.train_file=train.csv", *tiny_overrides(tiny_bert, run_dir), *extra]
    result = run_textclf(args, cwd)
    assert result[0] == 0, describe(result)
    assert (run_dir / "run.json").is_file(), describe(result)
    return json.loads((run_dir / "init_report.json").read_text(encoding="utf-8"))


def test_a_three_class_run_starts_a_two_class_run(kfold_run, tiny_bert, tmp_path):
    frame = make_frame(90, seed=3)
    write_frame(frame[frame["label"] != "politics"].reset_index(drop=True), tmp_path / "train.csv")
    run_dir = tmp_path / "two"
    # frozen embeddings stay exactly as init_from loaded them: proof of where they came from
    report = train(tmp_path, tiny_bert, run_dir, f"model.init_from={kfold_run.run_dir}", "kfold=stratified",
                   "kfold.n_splits=2", "model.freeze_embeddings=true")

    source = load_file(str(kfold_run.run_dir / "fold_0" / "model.safetensors"))
    assert report["source"] == str(kfold_run.run_dir / "fold_0" / "model.safetensors")
    backbone = sorted(k for k in source if k.startswith("backbone."))
    assert [k for k in report["loaded"] if k.startswith("backbone.")] == backbone
    hidden = source["head.out.weight"].shape[1]
    assert report["mismatched"] == [
        {"name": "head.out.bias", "model_shape": [2], "file_shape": [3]},
        {"name": "head.out.weight", "model_shape": [2, hidden], "file_shape": [3, hidden]}], report["mismatched"]
    assert report["missing"] == [] and report["unexpected"] == [] and report["mapped"] == []

    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert log.count("init_from ") == 1 and "mismatched in shape and re-initialised" in log, log[-3000:]
    assert json.loads((run_dir / "labels.json").read_text())["classes"] == ["business", "sport"]
    word = "backbone.embeddings.word_embeddings.weight"
    original = load_file(str(tiny_bert / "model.safetensors"))["embeddings.word_embeddings.weight"]
    for fold in ("fold_0", "fold_1"):  # every fold starts from the same init_from weights
        trained = load_file(str(run_dir / fold / "model.safetensors"))
        assert trained["head.out.weight"].shape[0] == 2
        assert trained[word].equal(source[word]) and not trained[word].equal(original)


@pytest.mark.parametrize("what", ["fold_folder", "safetensors_file"])
def test_a_fold_folder_or_a_weights_file_loads_completely(kfold_run, tiny_bert, tmp_path, what):
    write_frame(make_frame(60, seed=4), tmp_path / "train.csv")
    if what == "fold_folder":
        given, weights = kfold_run.run_dir / "fold_1", kfold_run.run_dir / "fold_1" / "model.safetensors"
    else:
        given = weights = tmp_path / "weights" / "start.safetensors"
        weights.parent.mkdir()
        shutil.copy(kfold_run.run_dir / "fold_0" / "model.safetensors", weights)
    report = train(tmp_path, tiny_bert, tmp_path / "run", f"model.init_from={given}")
    assert report["source"] == str(weights) and report["init_from"] == str(given)
    assert report["loaded"] == sorted(load_file(str(weights)))
    assert report["missing"] == report["unexpected"] == report["mismatched"] == []


def test_a_relative_path_resolves_against_the_launch_folder(kfold_run, tiny_bert, tmp_path):
    write_frame(make_frame(60, seed=5), tmp_path / "train.csv")
    shutil.copy(kfold_run.run_dir / "fold_0" / "model.safetensors", tmp_path / "start.safetensors")
    report = train(tmp_path, tiny_bert, tmp_path / "run", "model.init_from=start.safetensors")
    assert report["source"] == str(tmp_path / "start.safetensors")


def test_a_path_that_does_not_exist_is_refused_by_validate_and_train_alike(tiny_bert, tmp_path):
    write_frame(make_frame(30, seed=6), tmp_path / "train.csv")
    args = ["data=csv", "data.train_file=train.csv", *tiny_overrides(tiny_bert, tmp_path / "run"),
            "model.init_from=no/such/run"]
    validated = run_textclf(["validate", *args], tmp_path)
    trained = run_textclf(["train", *args], tmp_path)
    for rc, out, err in (validated, trained):
        assert rc == 2 and "Traceback" not in out + err, describe((rc, out, err))
    line = error_line(trained[2])
    assert line == error_line(validated[2]) != "", (describe(validated), describe(trained))
    assert "model.init_from='no/such/run' does not exist" in line and str(tmp_path / "no" / "such" / "run") in line
    assert not (tmp_path / "run" / "fold_0").exists(), "train refused only after starting a fold"
