"""Nothing lost, nothing trusted blindly: the run folder, export, merge and predict under faults and tampering.

Each case is one a user (or a hostile input) hits: a folder holding the user's files, a run file swapped or
truncated after training, an interrupted export, jobs merged over edited data, a tokenizer of another model, a path
that is a file. Each gets one clear line naming the file and the way out, no traceback, and every earlier file
stays as it was (CPU, the tiny model)."""
from __future__ import annotations

import errno
import json
import shutil

import pytest
from conftest import cli_env, describe, file_hashes, make_frame, run_textclf, tiny_overrides, write_frame

pytestmark = pytest.mark.slow



def one_clear_line(rc: int, out: str, err: str, *patterns: str) -> None:
    assert rc == 2, describe((rc, out, err))
    assert "Traceback" not in out + err, describe((rc, out, err))
    assert err.count("textclf: error:") == 1, describe((rc, out, err))
    for pattern in patterns:
        assert pattern in err, f"{pattern!r} not in:\n{err}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tamper_data")
    write_frame(make_frame(90, seed=0), d / "train.csv")
    write_frame(make_frame(20, seed=1), d / "test.csv")
    return d


def quick(tiny_bert, run_dir, *more):
    return ["train", "data=csv", "data.train_file=train.csv", "plots=false", *tiny_overrides(tiny_bert, run_dir),
            *more]


@pytest.fixture
def run_copy(kfold_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(kfold_run.run_dir, dst)
    return dst


def predict(run_dir, kfold_run, tmp_path, *more):
    write_frame(kfold_run.test[["text"]], tmp_path / "in.csv")
    return run_textclf(["predict", f"run_dir={run_dir}", f"input={tmp_path / 'in.csv'}",
                        f"output={tmp_path / 'out.csv'}", *more], tmp_path)


# ----------------------------------------------------------------------------- the user's files
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_holding_the_users_files_where_a_run_writes_is_refused_untouched(tiny_bert, data_dir, tmp_path,
                                                                                   overwrite):
    mine = tmp_path / "mine"
    (mine / "backbone").mkdir(parents=True)
    (mine / "config.yaml").write_text("my: own config\n")
    (mine / "metrics.json").write_text('{"mine": 1}')
    (mine / "backbone" / "notes.txt").write_text("my notes")
    before = file_hashes(mine)
    rc, out, err = run_textclf(quick(tiny_bert, mine, *(["overwrite=true"] if overwrite else [])), data_dir)
    one_clear_line(rc, out, err, "holds files textclf did not write", "backbone/", "config.yaml", "metrics.json",
                   "hydra.run.dir=<new folder>")
    assert "overwrite=true" not in err, "overwrite is no way out for files where the run writes its own"

    assert file_hashes(mine) == before and sorted(p.name for p in mine.iterdir()) == ["backbone", "config.yaml",
                                                                                  "metrics.json"]


def test_other_files_of_the_user_are_refused_without_overwrite_and_kept_with_it(tiny_bert, data_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    rc, out, err = run_textclf(quick(tiny_bert, mine), data_dir)
    one_clear_line(rc, out, err, "notes.txt", "overwrite=true trains beside them")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    result = run_textclf(quick(tiny_bert, mine, "overwrite=true"), data_dir)
    assert result[0] == 0, describe(result)
    assert (mine / "notes.txt").read_text() == "my notes" and (mine / "run.json").exists()
    # from then on the folder is a run of textclf's with a file of the user's beside it: a rerun finds it finished
    result = run_textclf(quick(tiny_bert, mine), data_dir)
    assert result[0] == 0 and "already holds this run, finished" in result[1] + result[2], describe(result)


def test_a_run_folder_that_is_a_file_is_refused(tiny_bert, data_dir, tmp_path):
    path = tmp_path / "run"
    path.write_text("a file")
    rc, out, err = run_textclf(quick(tiny_bert, path), data_dir)
    one_clear_line(rc, out, err, "is a file, not a folder")
    assert path.read_text() == "a file"


def test_overwrite_never_removes_the_weights_init_from_names(tiny_bert, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run_textclf(quick(tiny_bert, run_dir), data_dir)
    assert result[0] == 0, describe(result)
    before = file_hashes(run_dir)
    rc, out, err = run_textclf(quick(tiny_bert, run_dir, "overwrite=true", f"model.init_from={run_dir}"), data_dir)
    one_clear_line(rc, out, err, "model.init_from=", "would remove those weights", "nothing was removed")
    after = file_hashes(run_dir)
    assert {k: v for k, v in after.items() if k.startswith("fold_")} == \
        {k: v for k, v in before.items() if k.startswith("fold_")}
    assert (run_dir / "run.json").exists()


# ----------------------------------------------------------------------------- files changed after training
def test_an_edited_tokenizer_file_is_refused_by_name(run_copy, kfold_run, tmp_path):
    tokenizer_file = next(p for p in sorted((run_copy / "backbone").iterdir()) if p.name != "config.json")
    with open(tokenizer_file, "a", encoding="utf-8") as f:
        f.write("\n")
    rc, out, err = predict(run_copy, kfold_run, tmp_path)
    one_clear_line(rc, out, err, f"backbone/{tokenizer_file.name}", "changed after textclf wrote it")
    assert not (tmp_path / "out.csv").exists()


def test_a_truncated_fold_is_refused_with_the_way_out(run_copy, kfold_run, tmp_path):
    weights = run_copy / "fold_1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    rc, out, err = predict(run_copy, kfold_run, tmp_path)
    one_clear_line(rc, out, err, "fold_1/model.safetensors", "train that fold again", "folds=[...]")
    result = predict(run_copy, kfold_run, tmp_path, "folds=[0]")  # the way out it names works
    assert result[0] == 0, describe(result)


def test_ensemble_refuses_an_edited_oof_table(run_copy, kfold_run, tmp_path):
    (run_copy / "oof.csv").write_text((run_copy / "oof.csv").read_text().replace(",0.", ",0.1", 1))
    rc, out, err = run_textclf(["ensemble", str(run_copy), str(kfold_run.run_dir), "--output", str(tmp_path / "e")],
                               tmp_path)
    one_clear_line(rc, out, err, "oof.csv", "changed after textclf wrote it")


def test_a_resume_refuses_a_kept_fold_whose_weights_were_truncated(tiny_bert, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = quick(tiny_bert, run_dir, "kfold=stratified", "kfold.n_splits=2")
    rc, _, _ = run_textclf(args, data_dir, env=cli_env(TEXTCLF_KILL_AT="fold:0"))
    assert rc != 0 and (run_dir / "fold_0" / "result.json").exists() and not (run_dir / "run.json").exists()
    weights = run_dir / "fold_0" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    rc, out, err = run_textclf([*args, "resume=true"], data_dir)
    one_clear_line(rc, out, err, "fold_0/model.safetensors changed after training wrote it", "delete")
    assert not (run_dir / "run.json").exists(), "no run.json is written over a bad fold"
    shutil.rmtree(run_dir / "fold_0")  # the way out it names
    result = run_textclf([*args, "resume=true"], data_dir)
    assert result[0] == 0 and (run_dir / "run.json").exists(), describe(result)


# ----------------------------------------------------------------------------- merge
def test_merge_refuses_swapped_weights_and_edited_data_and_never_trains(tiny_bert, tmp_path):
    write_frame(make_frame(90, seed=0), tmp_path / "train.csv")
    common = ["data=csv", "data.train_file=train.csv", *tiny_overrides(tiny_bert, tmp_path / "unused")[:-1],
              "kfold=stratified", "kfold.n_splits=2", "plots=false"]
    jobs = run_textclf(["train", "-m", *common, "kfold.folds=[0],[1]", f"hydra.sweep.dir={tmp_path / 'jobs'}",
                        "hydra.sweep.subdir=${hydra.job.num}"], tmp_path)
    assert jobs[0] == 0, describe(jobs)
    a, b = tmp_path / "jobs" / "0" / "fold_0" / "model.safetensors", tmp_path / "jobs" / "1" / "fold_1" / "model.safetensors"
    original = a.read_bytes()
    a.write_bytes(b.read_bytes())
    rc, out, err = run_textclf(["merge", str(tmp_path / "jobs"), "--output", str(tmp_path / "m1")], tmp_path)
    one_clear_line(rc, out, err, "fold_0/model.safetensors", "changed after textclf wrote it")
    assert not (tmp_path / "m1" / "run.json").exists()
    a.write_bytes(original)
    write_frame(make_frame(90, seed=5), tmp_path / "train.csv")  # the data edited after the jobs ran
    rc, out, err = run_textclf(["merge", str(tmp_path / "jobs"), "--output", str(tmp_path / "m2")], tmp_path)
    one_clear_line(rc, out, err, "cannot merge", "train.csv", "never trains")
    assert "fold 0:" not in out + err and not (tmp_path / "m2").exists()


# ----------------------------------------------------------------------------- export
@pytest.fixture
def exported(run_copy):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    result = run_textclf(["export", f"run_dir={run_copy}"], run_copy.parent)
    assert result[0] == 0, describe(result)
    return run_copy / "export"


def test_a_replaced_onnx_model_is_refused_and_an_interrupted_export_starts_over(exported, run_copy, kfold_run,
                                                                                tmp_path):
    (exported / "fold_0.onnx").write_bytes((exported / "fold_1.onnx").read_bytes())
    rc, out, err = predict(run_copy, kfold_run, tmp_path, "backend=onnx")
    one_clear_line(rc, out, err, "fold_0.onnx changed after textclf exported it", "export again")
    # Ctrl-C in the middle of an export: one line, exit 130, and the same command starts it over
    rc, out, err = run_textclf(["export", f"run_dir={run_copy}"], run_copy.parent,
                               env=cli_env(TEXTCLF_SIGNAL_AT="INT@export:fold_1"))
    assert rc == 130 and "interrupted (SIGINT)" in err and "Traceback" not in out + err, describe((rc, out, err))
    assert not (exported / "export.json").exists()
    result = run_textclf(["export", f"run_dir={run_copy}"], run_copy.parent)
    assert result[0] == 0, describe(result)
    result = predict(run_copy, kfold_run, tmp_path, "backend=onnx")
    assert result[0] == 0, describe(result)
    # a run folder's export is the run's own: a rerun of the run does not take it for a file of the user's
    assert "export/" in json.loads((run_copy / ".textclf-record.json").read_text())["paths"]


def test_an_export_or_predict_into_a_path_under_a_file_is_one_line(run_copy, kfold_run, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    rc, out, err = predict(run_copy, kfold_run, tmp_path, f"output={blocker / 'p.csv'}")
    one_clear_line(rc, out, err, "is a file, not a folder")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    rc, out, err = run_textclf(["export", f"run_dir={run_copy}", f"output={blocker / 'onnx'}"], tmp_path)
    one_clear_line(rc, out, err, "blocker")
    assert blocker.read_text() == "a file"


# ----------------------------------------------------------------------------- a tokenizer of another model
def test_a_tokenizer_larger_than_the_embeddings_is_refused_before_training(tiny_bert, data_dir, tmp_path):
    other = tmp_path / "other_bert"
    shutil.copytree(tiny_bert, other)
    config = json.loads((other / "config.json").read_text())
    config["vocab_size"] = 20
    (other / "config.json").write_text(json.dumps(config))
    rc, out, err = run_textclf(quick(tiny_bert, tmp_path / "run", f"model.name_or_path={other}"), data_dir)
    one_clear_line(rc, out, err, "the tokenizer has", "embeddings hold 20", "another model")


# ----------------------------------------------------------------------------- a refused sweep job
def test_a_refused_sweep_job_leaves_the_runs_hydra_record_as_it_was(tiny_bert, data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    common = ["train", "-m", "data=csv", "data.train_file=train.csv", "plots=false",
              *tiny_overrides(tiny_bert, tmp_path / "unused")[:-1], f"hydra.sweep.dir={sweep}",
              "hydra.sweep.subdir=${hydra.job.num}"]  # both sweeps' job 0 in one folder
    first = run_textclf([*common, "optimizer.lr=1e-4"], data_dir)
    assert first[0] == 0, describe(first)
    before = file_hashes(sweep / "0")
    second = run_textclf([*common, "optimizer.lr=3e-5"], data_dir)
    assert "job 0 failed" in second[2] and "holds a finished run" in second[2], describe(second)
    assert file_hashes(sweep / "0") == before, ".hydra/overrides.yaml, the log and every file of the run stay as they were"
    assert "optimizer.lr=0.0001" in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()


# ----------------------------------------------------------------------------- no space, read-only
@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                                         (errno.ENOTDIR, "is a file, not a folder")])
def test_a_file_fault_during_training_is_one_line_naming_the_file(code, words):
    from textclf.commands.sweep import error_message

    message = error_message(OSError(code, "os message", "/runs/a/fold_0/model.safetensors"))
    assert words in message and "/runs/a/fold_0/model.safetensors" in message and "intact" in message
    assert "\n" not in message


def test_a_full_disk_during_training_is_one_line_and_the_same_command_goes_on(tiny_bert, data_dir, tmp_path):
    """The file size limit (ulimit -f) makes the weights' write fail as a full disk does (EFBIG, ENOSPC): one line
    naming the file, the earlier files intact, and the same command then finishes the run."""
    import resource
    import subprocess

    from conftest import textclf_executable

    run_dir = tmp_path / "run"
    args = quick(tiny_bert, run_dir)

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # the tiny model's weights are ~110 kB

    proc = subprocess.run([textclf_executable(), *args], cwd=data_dir, env=cli_env(), capture_output=True, text=True,
                          preexec_fn=small_files, timeout=600)
    one_clear_line(proc.returncode, proc.stdout, proc.stderr, "fold_0/model.safetensors", "run the command again")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert (run_dir / "config.yaml").exists() and not list(run_dir.rglob("*.tmp")), "no half-written file is left"
    result = run_textclf(args, data_dir)
    assert result[0] == 0 and (run_dir / "run.json").exists(), describe(result)
