"""Limits of the backbone that a config can exceed: a clear error, not a crash in the middle of training."""
from __future__ import annotations

import pytest
from conftest import describe, make_frame, tiny_overrides, write_frame

pytestmark = pytest.mark.slow


def test_max_length_beyond_the_position_embeddings_is_a_clear_error(cli, tmp_path, tiny_bert):
    frame = make_frame(30, seed=5)
    frame["text"] = (frame["text"] + " ") * 20  # well over 128 tokens
    write_frame(frame, tmp_path / "long.csv")
    overrides = [o for o in tiny_overrides(tiny_bert, tmp_path / "run") if not o.startswith("model.max_length")]
    rc, out, err = cli("train", "data=csv", "data.train_file=long.csv", *overrides, "model.max_length=256")
    assert rc != 0
    assert "Traceback" not in out + err, describe((rc, out, err))
    assert "model.max_length" in err
    assert not (tmp_path / "run" / "fold_0" / "model.safetensors").exists()
