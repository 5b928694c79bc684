"""textclf export, then predict backend=onnx (fp32 and int8), on a copy of the session's tiny 2-fold run; streaming
predict (chunk_rows) against one chunk on every table format; an interrupted or killed predict leaves no output
that looks complete; the refusals name what to do."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module

from conftest import describe, make_frame, textclf_executable, write_frame
from textclf.errors import TextclfError
from textclf.commands.predict import predict

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(kfold_run, tmp_path_factory):
    """A copy of the tiny run, exported by the CLI in fp32 (default folder, fused), int8 (export_int8/) and fp32
    unfused (export_plain/)."""
    from conftest import run_textclf

    run_dir = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(kfold_run.run_dir, run_dir)
    for extra in ([], ["quantize=int8", f"output={run_dir / 'export_int8'}"],
                  ["optimize=false", f"output={run_dir / 'export_plain'}"]):
        result = run_textclf(["export", f"run_dir={run_dir}", *extra], run_dir.parent)
        assert result[0] == 0, describe(result)
    return run_dir


def predict_cfg(run_dir: Path, table: Path, out: Path, *overrides: str):
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        return compose(config_name="predict", overrides=[f"run_dir={run_dir}", f"input={table}", f"output={out}",
                                                         "device=cpu", *overrides])


def run_predict(run_dir, table, out, *overrides) -> pd.DataFrame:
    predict(predict_cfg(run_dir, table, out, *overrides))
    return pd.read_csv(out)


def probs(frame: pd.DataFrame) -> np.ndarray:
    return frame.filter(like="prob_").to_numpy()


def test_export_folder_serves_with_onnx_runtime_alone(exported):
    folder = exported / "export"
    manifest = json.loads((folder / "export.json").read_text())
    assert [f["fold"] for f in manifest["folds"]] == ["fold_0", "fold_1"]
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and manifest["quantize"] is None
    assert all(f["max_abs_diff"] <= manifest["tolerance"] for f in manifest["folds"])
    assert {"README.md", "labels.json", "tokenizer", "fold_0.onnx", "fold_1.onnx"} <= {p.name for p in folder.iterdir()}
    int8 = json.loads((exported / "export_int8" / "export.json").read_text())
    assert int8["quantize"] == "int8" and [f["file"] for f in int8["folds"]] == ["fold_0.int8.onnx", "fold_1.int8.onnx"]
    assert not list((exported / "export_int8").glob("fold_?.onnx")), "an int8 export holds the int8 models only"


def graph_ops(path: Path) -> dict:
    import onnx

    return {(node.domain or "ai.onnx", node.op_type) for node in onnx.load(str(path)).graph.node}


def test_export_fuses_the_graph_by_default_and_optimize_false_keeps_standard_ops(exported):
    for name in ("export", "export_int8"):
        manifest = json.loads((exported / name / "export.json").read_text())
        assert manifest["optimize"] is True
        for fold in manifest["folds"]:  # the tiny BERT has 2 layers
            assert fold["optimized"]["Attention"] == 2 and fold["optimized"]["SkipLayerNormalization"] == 4
        ops = graph_ops(exported / name / manifest["folds"][0]["file"])
        fused = "QAttention" if name == "export_int8" else "Attention"
        assert ("com.microsoft", fused) in ops and ("ai.onnx", "Softmax") not in ops
    assert "fused by ONNX Runtime's transformer optimizer" in (exported / "export" / "README.md").read_text()
    plain = json.loads((exported / "export_plain" / "export.json").read_text())
    assert plain["optimize"] is False and not any(f["optimized"] for f in plain["folds"])
    assert {domain for domain, _ in graph_ops(exported / "export_plain" / "fold_0.onnx")} == {"ai.onnx"}
    assert "fused" not in (exported / "export_plain" / "README.md").read_text()


def test_fused_and_plain_graphs_predict_the_same(exported, tmp_path):
    table = write_frame(make_frame(40, seed=6), tmp_path / "new.csv")
    fused = run_predict(exported, table, tmp_path / "fused.csv", "backend=onnx")
    plain = run_predict(exported, table, tmp_path / "plain.csv", "backend=onnx",
                        f"export_dir={exported / 'export_plain'}")
    assert (fused["pred"] == plain["pred"]).all()
    assert probs(fused) == pytest.approx(probs(plain), abs=1e-5)


def test_readme_snippet_reproduces_predict(exported, kfold_run, tmp_path, monkeypatch):
    preds = run_predict(exported, kfold_run.data_dir / "test.csv", tmp_path / "torch.csv")
    code = re.search(r"```python\n(.*?)```", (exported / "export" / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(exported / "export")
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - the README's own snippet, as a user would paste it
    decided, p = scope["predict"](list(kfold_run.test["text"]))
    assert list(decided) == list(preds["pred"])
    assert p == pytest.approx(probs(preds), abs=1e-5)


def test_onnx_fp32_predict_equals_torch_on_every_row(exported, kfold_run, tmp_path, cli):
    table = write_frame(make_frame(60, seed=7), tmp_path / "new.csv")
    rc_t = cli("predict", f"run_dir={exported}", f"input={table}", "output=torch.csv", "device=cpu")
    rc_o = cli("predict", f"run_dir={exported}", f"input={table}", "output=onnx.csv", "backend=onnx")
    assert rc_t[0] == 0 and rc_o[0] == 0, describe(rc_o)
    torch_, onnx_ = pd.read_csv(tmp_path / "torch.csv"), pd.read_csv(tmp_path / "onnx.csv")
    assert list(onnx_.columns) == list(torch_.columns) and (onnx_["row"] == torch_["row"]).all()
    assert (onnx_["pred"] == torch_["pred"]).all()
    assert probs(onnx_) == pytest.approx(probs(torch_), abs=1e-5)
    assert json.loads(rc_o[1]) == pytest.approx(json.loads(rc_t[1]))  # labelled table: the same metrics


def test_int8_predict_agrees_with_fp32_on_most_rows(exported, tmp_path):
    table = write_frame(make_frame(60, seed=8), tmp_path / "new.csv")
    fp32 = run_predict(exported, table, tmp_path / "fp32.csv", "backend=onnx")
    int8 = run_predict(exported, table, tmp_path / "int8.csv", "backend=onnx", f"export_dir={exported / 'export_int8'}")
    assert (int8["row"] == fp32["row"]).all()
    assert (int8["pred"] == fp32["pred"]).mean() >= 0.8
    assert np.abs(probs(int8) - probs(fp32)).max() < 0.1


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_streaming_equals_one_chunk_row_for_row(exported, tmp_path, suffix):
    table = write_frame(make_frame(50, seed=9, labels=False), tmp_path / f"new{suffix}")
    whole = run_predict(exported, table, tmp_path / "whole.csv")
    streamed = run_predict(exported, table, tmp_path / "streamed.csv", "chunk_rows=7", "backend=onnx")
    assert len(streamed) == 50 and (streamed["row"] == np.arange(50)).all()
    assert (streamed["pred"] == whole["pred"]).all()
    assert probs(streamed) == pytest.approx(probs(whole), abs=1e-5)
    torch_streamed = run_predict(exported, table, tmp_path / "torch_streamed.csv", "chunk_rows=7")
    assert probs(torch_streamed) == pytest.approx(probs(whole), abs=1e-6)


def test_streaming_messages_name_the_row_in_the_file(exported, tmp_path):
    frame = make_frame(30, seed=3)
    frame.loc[22, "text"] = " "
    table = write_frame(frame, tmp_path / "bad.csv")
    with pytest.raises(TextclfError, match=r"1 empty or missing text cell\(s\), at data row\(s\) 23 "):
        run_predict(exported, table, tmp_path / "out.csv", "chunk_rows=5")
    assert not (tmp_path / "out.csv").exists()


def test_interrupted_predict_removes_its_partial_output(exported, tmp_path, monkeypatch):
    import textclf.commands.predict as predict_module

    table = write_frame(make_frame(40, seed=4, labels=False), tmp_path / "new.csv")
    calls = []
    real = predict_module.ensemble

    def interrupt_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_module, "ensemble", interrupt_second_chunk)
    with pytest.raises(SystemExit) as stopped:
        run_predict(exported, table, tmp_path / "out.csv", "chunk_rows=10")
    assert stopped.value.code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.csv"], "no output and no temporary file left"


def test_killed_predict_leaves_no_complete_looking_output(exported, tmp_path):
    table = write_frame(make_frame(20000, seed=5, labels=False), tmp_path / "big.csv")
    out = tmp_path / "preds.csv"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    proc = subprocess.Popen([textclf_executable(), "predict", f"run_dir={exported}", f"input={table}",
                             f"output={out}", "chunk_rows=500", "device=cpu"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    partial = []
    while time.monotonic() < deadline and proc.poll() is None:
        partial = [p for p in tmp_path.glob(".preds.csv.*.tmp") if p.stat().st_size > 0]
        if partial:
            break
        time.sleep(0.2)
    assert partial, f"predict never started writing (exit {proc.poll()}): {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not out.exists(), "a killed predict must not leave the output file"
    assert all(p.name.startswith(".") for p in tmp_path.iterdir() if p.name not in ("big.csv",))


def test_missing_export_names_the_command_that_makes_it(kfold_run, tmp_path):
    with pytest.raises(TextclfError, match=r"export_dir .* does not exist .*textclf export run_dir="):
        run_predict(kfold_run.run_dir, kfold_run.data_dir / "test.csv", tmp_path / "out.csv", "backend=onnx")
    with pytest.raises(TextclfError, match=r"precision=bf16 applies to backend=torch"):
        run_predict(kfold_run.run_dir, kfold_run.data_dir / "test.csv", tmp_path / "out.csv", "backend=onnx",
                    "precision=bf16")


def test_export_of_other_weights_is_refused(exported, tmp_path):
    manifest_path = exported / "export_int8" / "export.json"
    other = tmp_path / "other_export"
    shutil.copytree(exported / "export_int8", other)
    manifest = json.loads(manifest_path.read_text())
    manifest["folds"][0]["weights_sha256"] = "0" * 64
    (other / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(TextclfError, match=r"fold_0 was exported from other weights .*export again"):
        run_predict(exported, write_frame(make_frame(5), tmp_path / "t.csv"), tmp_path / "out.csv", "backend=onnx",
                    f"export_dir={other}")


def test_export_options_are_checked_before_anything_loads(cli, tmp_path):
    rc, out, err = cli("export", f"run_dir={tmp_path}", "quantise=int8")
    assert rc == 2 and "quantize" in err and "Traceback" not in out + err, describe((rc, out, err))
    rc, out, err = cli("export", f"run_dir={tmp_path}", "quantize=int4")
    assert rc == 2 and "int8" in err and "Traceback" not in out + err, describe((rc, out, err))


def test_export_prints_its_own_lines_only(exported, tmp_path):
    from conftest import run_textclf

    rc, out, err = run_textclf(["export", f"run_dir={exported}", f"output={tmp_path / 'again'}"], tmp_path)
    assert rc == 0, describe((rc, out, err))
    assert out.strip() == str(tmp_path / "again")
    assert "Optimized operators" not in err and "Model saved" not in err and "Sort graphs" not in err, err
    assert "fused: 2 Attention" in err
