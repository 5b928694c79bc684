"""scripts/gpu_check.sh, the one command that checks textclf's CUDA paths, in the mode CI can run: without a GPU it
says so, runs the CPU smoke of the same code (training steps in fp32 and bf16, predict, resume after a kill) and
exits 0 with one `ok` line per check."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import cli_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_its_cpu_smoke_without_a_gpu(tmp_path):
    env = cli_env(CUDA_VISIBLE_DEVICES="")  # no GPU, as on CI: the CPU mode
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--workdir", str(tmp_path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    shown = f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0, shown
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("no CUDA GPU here"), shown
    for check in ("train fp32", "train bf16", "predict cpu", "resume cpu"):
        assert any(line.startswith(f"ok {check}:") for line in lines), f"no ok line for {check}\n{shown}"
    assert any(line.startswith("ok train fp32:") and "samples/s" in line for line in lines), shown
    assert any(line.startswith("ok resume cpu:") and "largest metric difference" in line for line in lines), shown
    assert any(line.startswith("skip peer bf16: needs a GPU") for line in lines), shown
    assert lines[-1].startswith("all checks passed"), shown
    assert not any(line.startswith("FAIL") for line in lines), shown
