"""`textclf report`: every job of a sweep folder in one table, best first, failures with their error."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from textclf.commands.report import collect
from textclf.commands.report import main as report_main


def write_job(sweep: Path, num: int, overrides: list[str], *, status: str = "ok", monitor: str = "macro_f1",
              folds: list[float] | None = None, error: str | None = None, wall_s: float = 12.0) -> Path:
    job = sweep / f"{num}_{','.join(overrides)}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    record = {"status": status, "job": num, "overrides": overrides, "wall_s": wall_s}
    if status == "ok":
        mean = sum(folds) / len(folds)
        (job / "metrics.json").write_text(json.dumps({
            "task": "multiclass", "monitor": monitor,
            "folds": [{"fold": i, monitor: v, "accuracy": 0.5} for i, v in enumerate(folds)],
            "mean": {monitor: mean}, "std": {monitor: 0.01}, "oof": {monitor: mean + 0.001}}))
        record.update(score=mean, metric=monitor)
    else:
        record.update(error=error, error_type="TextclfError")
    (job / "status.json").write_text(json.dumps(record))
    (job / "fold_0").mkdir()
    (job / "fold_0" / "history.csv").write_text("epoch\n1\n")  # a run's own subfolders are not runs
    return job


@pytest.fixture
def sweep(tmp_path) -> Path:
    sweep = tmp_path / "multirun" / "2026-11-22" / "10-00-00"
    write_job(sweep, 0, ["loss=ce", "pooling=mean", "trainer.epochs=1"], folds=[0.80, 0.82])
    write_job(sweep, 1, ["loss=mse", "pooling=mean", "trainer.epochs=1"], status="failed",
              error="loss=mse does not fit task 'multiclass' (it fits: regression)\nsecond line")
    write_job(sweep, 2, ["loss=focal", "pooling=mean", "trainer.epochs=1"], folds=[0.90, 0.88])
    write_job(sweep, 3, ["loss=ce", "pooling=attention", "trainer.epochs=1"], folds=[0.70, 0.74])
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def test_jobs_are_ranked_best_first_with_failures_last(sweep):
    jobs = collect(sweep)
    assert [j.num for j in jobs] == [2, 0, 3, 1]
    assert [j.rank for j in jobs] == [1, 2, 3, None]
    assert jobs[0].folds == [0.90, 0.88] and jobs[0].mean == pytest.approx(0.89)
    assert jobs[-1].status == "failed" and "does not fit task" in jobs[-1].error


def test_a_lower_is_better_metric_ranks_ascending(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, ["optimizer.lr=1e-4"], monitor="rmse", folds=[0.5, 0.5])
    write_job(sweep, 1, ["optimizer.lr=5e-5"], monitor="rmse", folds=[0.3, 0.3])
    assert [j.num for j in collect(sweep)] == [1, 0]


def test_report_prints_and_writes_csv_and_markdown(sweep, capsys):
    assert report_main([str(sweep)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "4 job(s), 3 ok, 1 failed" in out
    assert "every job: pooling=mean trainer.epochs=1" not in out  # pooling varies
    assert "every job: trainer.epochs=1" in out
    table = [line for line in lines if line[:1].isdigit() or line.startswith(" ")]
    assert table[0].split()[:3] == ["1", "2", "loss=focal"]
    failed = next(line for line in lines if "failed:" in line)
    assert "does not fit task 'multiclass'" in failed and "second line" not in out
    assert "0.8900 ± 0.0100" in out and "0.9000 0.8800" in out

    csv = pd.read_csv(sweep / "report.csv", keep_default_na=False)
    assert list(csv["job"]) == [2, 0, 3, 1] and list(csv["status"]) == ["ok", "ok", "ok", "failed"]
    assert csv.loc[3, "error"].startswith("loss=mse does not fit")
    md = (sweep / "report.md").read_text()
    assert md.count("\n| ") == 5 and "| 1 | 2 | loss=focal" in md


def test_report_of_a_single_run_folder_and_of_nothing(tmp_path, capsys):
    run = write_job(tmp_path / "runs", 0, ["pooling=cls"], folds=[0.6, 0.7])
    assert report_main([str(run)]) == 0
    assert "pooling=cls" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report_main([str(empty)]) == 2
    assert "no runs under" in capsys.readouterr().err


def test_a_job_whose_process_is_gone_reads_as_incomplete(tmp_path):
    job = tmp_path / "sweep" / "0_pooling=cls"
    job.mkdir(parents=True)
    (job / "status.json").write_text(json.dumps({"status": "running", "job": 0, "pid": 2 ** 22 + 12345}))
    (job_only,) = collect(tmp_path / "sweep")
    assert job_only.status == "incomplete" and job_only.overrides == ["pooling=cls"]


def png_size(path: Path) -> tuple[int, int]:
    import struct

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.filterwarnings("error::UserWarning")
def test_report_draws_every_ranked_job_best_first_and_marks_the_failed_one(sweep, capsys):
    from textclf.commands.report import report_figure

    assert report_main([str(sweep)]) == 0
    assert "report.png" in capsys.readouterr().out
    width, height = png_size(sweep / "report.png")
    assert 300 <= width <= 4000 and 300 <= height <= 4000
    assert not list(sweep.glob(".report.png.*"))  # written atomically
    fig = report_figure(collect(sweep))
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert [t.split()[0] for t in ticks] == ["#2", "#0", "#3", "#1"]  # best first, the failed job last
    assert ticks[0] == "#2 loss=focal pooling=mean" and "failed" in " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "macro_f1 (higher is better)" == fig.axes[0].get_xlabel()


def test_report_png_follows_a_lower_is_better_metric_and_skips_a_sweep_without_scores(tmp_path):
    from textclf.commands.report import report_figure

    sweep = tmp_path / "sweep"
    write_job(sweep, 0, ["optimizer.lr=1e-4"], monitor="rmse", folds=[0.5, 0.52])
    write_job(sweep, 1, ["optimizer.lr=5e-5"], monitor="rmse", folds=[0.3, 0.31])
    assert report_main([str(sweep)]) == 0 and png_size(sweep / "report.png")
    fig = report_figure(collect(sweep))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["#1 lr=5e-5", "#0 lr=1e-4"]  # key cut
    assert "lower is better" in fig.axes[0].get_xlabel()

    failed = tmp_path / "failed"
    write_job(failed, 0, ["loss=mse"], status="failed", error="boom")
    assert report_main([str(failed)]) == 0
    assert (failed / "report.csv").exists() and not (failed / "report.png").exists()
