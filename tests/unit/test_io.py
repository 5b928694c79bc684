"""Atomic writes: a finished file or the old one, never half a file, never a stray temporary."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pandas as pd
import pytest
import torch

from textclf.io import atomic_path, save_weights, write_csv, write_json, write_text


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith("."))


def test_write_text_json_csv_and_no_temp_file_left(tmp_path):
    write_text(tmp_path / "a.txt", "héllo\n")
    write_json(tmp_path / "m.json", {"acc": np.float32(0.5), "n": np.int64(3), "v": np.arange(2)})
    write_csv(tmp_path / "t.csv", pd.DataFrame({"row": [0, 1], "pred": ["a", "b"]}))
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "m.json").read_text()) == {"acc": 0.5, "n": 3, "v": [0, 1]}
    assert pd.read_csv(tmp_path / "t.csv")["pred"].tolist() == ["a", "b"]
    assert leftovers(tmp_path) == []


def test_write_creates_missing_folders(tmp_path):
    write_text(tmp_path / "x" / "y" / "z.txt", "ok")
    assert (tmp_path / "x" / "y" / "z.txt").read_text() == "ok"


def test_overwrite_replaces_the_old_content(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"v": 1})
    write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    assert leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_intact_and_no_temp(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old weights")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old weights"
    assert leftovers(tmp_path) == []


def test_an_interrupted_write_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"v": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            tmp.write_text("{")
            raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"v": 1}
    assert leftovers(tmp_path) == []


def test_failed_save_weights_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "fold_0" / "model.safetensors"
    save_weights(path, {"w": torch.ones(2)})
    with pytest.raises(Exception):
        save_weights(path, {"w": torch.zeros(2), "bad": "not a tensor"})
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(path))["w"], torch.ones(2))
    assert leftovers(path.parent) == []


def test_the_temporary_file_is_in_the_target_folder(tmp_path):
    # os.replace is atomic only within one file system: the temporary must sit beside the target
    with atomic_path(tmp_path / "sub" / "f.txt") as tmp:
        assert tmp.parent == tmp_path / "sub"
        tmp.write_text("x")


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    write_text(tmp_path / "a.txt", "x")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask


def test_a_killed_writers_temporary_file_is_removed_and_a_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from textclf.io import atomic_path, remove_stale_temps

    out = tmp_path / "preds.csv"
    # a writer that is killed outright: its temporary file stays, named with its pid
    code = ("import os, sys\nfrom textclf.io import atomic_path\n"
            f"with atomic_path({str(out)!r}) as tmp:\n    tmp.write_text('partial')\n    os._exit(9)\n")
    subprocess.run([sys.executable, "-c", code], check=False)
    stale = list(tmp_path.glob(".preds.csv.*.tmp"))
    assert len(stale) == 1 and not out.exists()
    with atomic_path(out) as mine:  # this process's own file, in flight, is not touched
        mine.write_text("x")
        assert remove_stale_temps(out) == stale
        assert mine.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv"]
