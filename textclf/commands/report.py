"""`textclf report <folder>`: one table of every run under a sweep (or run) folder, best first.

A run folder is one with status.json, metrics.json or config.yaml (its fold_<k>/, backbone/ and .hydra/
subfolders are not runs). Each row: the job's overrides (from .hydra/overrides.yaml), the monitored metric's
mean ± std over the folds, every fold's score, the out-of-fold score, wall time and status (a failed job
with its error's first line). Ranked by the metric's direction; printed and written as report.csv and
report.md into the folder, with report.png: every ranked job's mean ± std (and fold scores), best first.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from textclf.data.metrics import direction_of
from textclf.io import write_csv, write_text
from textclf.observe.html_report import duration
from textclf.observe.plots import new_figure, save_figure, short
from textclf.run import folder
from textclf.run.folder import read_status

RUN_MARKERS = (folder.STATUS, folder.METRICS, folder.CONFIG)
SKIP_DIRS = {folder.BACKBONE, folder.HYDRA_DIR, "__pycache__"}
ERROR_WIDTH = 100
PLOT_JOBS = 40        # report.png: the best this many jobs
PLOT_UNRANKED = 10    # report.png: failed / unscored jobs marked below them
PLOT_LABEL = 56       # report.png: characters of a job's label

log = logging.getLogger(__name__)


@dataclass
class Job:
    path: Path
    name: str
    num: int | None = None
    overrides: list[str] = field(default_factory=list)
    status: str = "incomplete"
    metric: str | None = None
    direction: str | None = None
    mean: float | None = None
    std: float | None = None
    folds: list[float] = field(default_factory=list)
    oof: float | None = None
    wall_s: float | None = None
    error: str | None = None
    warning: str | None = None
    rank: int | None = None

    def score(self, by: str = "mean") -> float | None:
        value = self.oof if by == "oof" else self.mean
        return value if value is not None and math.isfinite(value) else None


# ----------------------------------------------------------------------------- reading
def find_runs(root: Path) -> list[Path]:
    runs = []
    for dirpath, dirnames, filenames in os.walk(root):
        if any(m in filenames for m in RUN_MARKERS) or folder.HYDRA_DIR in dirnames:
            runs.append(Path(dirpath))
            dirnames[:] = []  # fold_<k>/, backbone/, .hydra/ belong to the run
        else:
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
    return runs


def read_job(root: Path, path: Path) -> Job:
    name = "." if path == root else path.relative_to(root).as_posix()
    m = re.match(r"^(\d+)_", path.name)
    job = Job(path=path, name=name, num=int(m.group(1)) if m else None)
    status = read_status(path) or {}
    metrics = _read_json(path / folder.METRICS)
    job.overrides = _overrides(path, status)
    if status.get("job") is not None:
        job.num = int(status["job"])
    job.status = status.get("status") or ("ok" if metrics else "incomplete")
    if job.status == "running" and not _alive(status.get("pid")):
        job.status = "incomplete"  # the process that ran it is gone: killed, or stopped with the machine
    job.metric = (metrics or {}).get("monitor") or status.get("metric")
    job.direction = status.get("direction") or direction_of(job.metric)
    job.wall_s = status.get("wall_s")
    job.error = status.get("error")
    job.warning = status.get("warning")
    if metrics and job.metric:
        job.mean = _num((metrics.get("mean") or {}).get(job.metric))
        job.std = _num((metrics.get("std") or {}).get(job.metric))
        job.oof = _num((metrics.get("oof") or {}).get(job.metric))
        job.folds = [_num(f.get(job.metric)) for f in metrics.get("folds") or []]
    elif status.get("score") is not None:
        job.mean = _num(status.get("score"))
    return job


def collect(root: Path, by: str = "mean") -> list[Job]:
    """Every run under root, ranked: best first by the most common metric, then the rest."""
    root = Path(root)
    jobs = [read_job(root, p) for p in find_runs(root)]
    return rank(jobs, by)


def rank(jobs: list[Job], by: str = "mean") -> list[Job]:
    scored = [j for j in jobs if j.status == "ok" and j.score(by) is not None]
    metrics = [j.metric for j in scored]
    primary = max(set(metrics), key=metrics.count) if metrics else None

    def key(j: Job):
        if j in scored and j.metric == primary:
            s = j.score(by)
            return (0, -s if j.direction != "minimize" else s, _order(j))
        return (1 if j in scored else 2 if j.status == "ok" else 3, 0.0, _order(j))

    ranked = sorted(jobs, key=key)
    n = 0
    for j in ranked:
        if j in scored and j.metric == primary:
            n += 1
            j.rank = n
    return ranked


def _order(j: Job):
    return (j.num if j.num is not None else 10 ** 9, j.name)


def _overrides(path: Path, status: dict) -> list[str]:
    file = path / folder.HYDRA_DIR / "overrides.yaml"
    if file.exists():
        try:
            return [str(o) for o in OmegaConf.load(file)]
        except Exception:  # noqa: BLE001 - unreadable: fall back to the status file or folder name
            pass
    if status.get("overrides") is not None:
        return [str(o) for o in status["overrides"]]
    name = re.sub(r"^\d+_", "", path.name)
    return [] if name in ("default", ".") else [name]


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: trust the status
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _num(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- tables
def common_overrides(jobs: list[Job]) -> list[str]:
    """Overrides every job shares (shown once above the table instead of on every row)."""
    if len(jobs) < 2:
        return []
    first = jobs[0].overrides
    return [o for o in first if all(o in j.overrides for j in jobs[1:])]


def rows(jobs: list[Job]) -> list[dict]:
    common = set(common_overrides(jobs))
    out = []
    for j in jobs:
        metric = j.metric or ""
        out.append({
            "rank": j.rank if j.rank is not None else "",
            "job": j.num if j.num is not None else j.name,
            "overrides": " ".join(o for o in j.overrides if o not in common) or "-",
            "status": j.status,
            "metric": metric,
            "direction": j.direction or "",
            "mean": j.mean, "std": j.std,
            "folds": " ".join(_fmt(f) for f in j.folds),
            "oof": j.oof,
            "wall_s": round(j.wall_s, 1) if j.wall_s is not None else None,
            "error": j.error or "",
            "all_overrides": " ".join(j.overrides),
            "folder": j.name,
        })
    return out


def write_report(root: Path, jobs: list[Job], by: str = "mean") -> tuple[Path, Path]:
    table = pd.DataFrame(rows(jobs))
    csv_path, md_path = Path(root) / "report.csv", Path(root) / "report.md"
    write_csv(csv_path, table)
    write_text(md_path, markdown(root, jobs, by))
    write_plot(Path(root) / "report.png", jobs, by)
    return csv_path, md_path


def write_plot(path: Path, jobs: list[Job], by: str = "mean") -> Path | None:
    """report.png; a picture never fails the report (a warning says why it is missing)."""
    try:
        fig = report_figure(jobs, by)
        if fig is None:
            Path(path).unlink(missing_ok=True)  # an earlier picture would show scores this report does not have
            return None
        return save_figure(fig, path)
    except Exception as e:  # noqa: BLE001 - matplotlib missing or broken: report.csv and report.md still stand
        log.warning("report.png not written: %s: %s", type(e).__name__, e)
        return None


def plot_labels(jobs: list[Job]) -> dict[int, str]:
    """Each job's differing overrides with keys cut to their last part where that stays unambiguous
    (optimizer.lr=3e-5 -> lr=3e-5), so the values still show in a short label."""
    common = set(common_overrides(jobs))
    keys = {o.split("=", 1)[0].lstrip("+~") for j in jobs for o in j.overrides if o not in common and "=" in o}
    tails: dict[str, set[str]] = {}
    for k in keys:
        tails.setdefault(k.rsplit(".", 1)[-1], set()).add(k)

    def cut(o: str) -> str:
        key, eq, value = o.partition("=")
        tail = key.lstrip("+~").rsplit(".", 1)[-1]
        return f"{tail}={value}" if eq and len(tails.get(tail, ())) == 1 else o

    return {id(j): " ".join(cut(o) for o in j.overrides if o not in common) or "-" for j in jobs}


def report_figure(jobs: list[Job], by: str = "mean"):
    """Each ranked job's mean ± std over folds (error bar), its fold scores (dots) and out-of-fold score
    (diamond), best on top; failed or unscored jobs marked below. None when no job has a score."""
    ranked = [j for j in jobs if j.rank is not None]
    if not ranked:
        log.info("report.png not written: no job has a score")
        return None
    shown, unranked = ranked[:PLOT_JOBS], [j for j in jobs if j.rank is None]
    marked = unranked[:PLOT_UNRANKED]
    metric, direction = ranked[0].metric, ranked[0].direction
    labels = plot_labels(jobs)
    n = len(shown) + len(marked)
    fig = new_figure(10.5, float(np.clip(0.34 * n + 2.0, 3.2, 17.0)))
    ax = fig.subplots()
    lo, hi = _value_range(shown)
    span = hi - lo if hi > lo else max(abs(hi) * 0.05, 0.01)
    _draw_ranked(ax, shown, by, hi, span)
    _draw_unranked(ax, marked, len(shown), metric, lo, span)
    ax.set_xlim(lo - 0.1 * span, hi + 0.3 * span)
    ax.set_ylim(n - 0.5, -0.6)
    ax.set_yticks(range(n), [short(f"#{j.num if j.num is not None else j.name} {labels[id(j)]}", PLOT_LABEL)
                             for j in shown + marked], fontsize=8.5)
    for tick, j in zip(ax.get_yticklabels(), shown + marked):
        if j.rank is None:
            tick.set_color("tab:red")
    better = "lower" if direction == "minimize" else "higher"
    ax.set_xlabel(f"{metric} ({better} is better)", fontsize=9.5)
    ax.tick_params(axis="x", labelsize=8.5)
    ax.grid(alpha=0.3, axis="x")
    fig.legend(loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(_figure_title(jobs, ranked, shown, unranked, marked, by), fontsize=10.5)
    return fig


def _value_range(shown: list[Job]) -> tuple[float, float]:
    values = []
    for j in shown:
        values += [v for v in (j.mean, j.oof, *j.folds) if v is not None]
        if j.mean is not None and j.std is not None and len(j.folds) >= 2:
            values += [j.mean - j.std, j.mean + j.std]
    return min(values), max(values)


def _draw_ranked(ax, shown: list[Job], by: str, hi: float, span: float) -> None:
    """One row per ranked job: fold dots, mean ± std, out-of-fold diamond, the value as text."""
    legend: set[str] = set()

    def once(label: str) -> str | None:  # each kind of mark in the legend once
        if label in legend:
            return None
        legend.add(label)
        return label

    for y, j in enumerate(shown):
        colour = "tab:green" if j.rank == 1 else "tab:blue"
        folds = [f for f in j.folds if f is not None]
        if folds:
            ax.plot(folds, [y] * len(folds), "o", color="grey", alpha=0.45, markersize=3.5, zorder=2,
                    label=once("fold score"))
        if j.mean is not None:
            spread = (j.std or 0.0) if len(j.folds) >= 2 else 0.0  # as report.md: no std from one fold
            ax.errorbar([j.mean], [y], xerr=[[spread], [spread]], fmt="o", color=colour, markersize=6,
                        capsize=3, elinewidth=1.4, zorder=3, label=once("mean ± std over folds (best: green)"))
        if j.oof is not None:
            ax.plot([j.oof], [y], "D", markerfacecolor="none", markeredgecolor="black", markersize=5.5, zorder=4,
                    label=once("out of fold"))
        score = j.score(by)
        text = _fmt(score) + ("" if by == "oof" or j.std is None or len(j.folds) < 2 else f" ± {_fmt(j.std)}")
        ax.text(hi + 0.04 * span, y, text, va="center", ha="left", fontsize=8, color=colour)


def _draw_unranked(ax, marked: list[Job], first_row: int, metric: str, lo: float, span: float) -> None:
    """Failed or unscored jobs below the ranked ones, each with why."""
    for k, j in enumerate(marked):
        why = j.status if j.status != "ok" else f"ok, {j.metric or 'no'} metric" if j.metric != metric else "no score"
        if j.error:
            first = j.error.strip().splitlines()[0]
            why += ": " + (first if len(first) <= 70 else first[:69] + "…")
        ax.text(lo - 0.08 * span, first_row + k, short(why, 90), va="center", ha="left", fontsize=8, color="tab:red")
    if marked:
        ax.axhline(first_row - 0.5, color="grey", linewidth=0.8, linestyle=":")


def _figure_title(jobs, ranked, shown, unranked, marked, by: str) -> str:
    title = f"{len(ranked)} ranked job(s), best first by {'out-of-fold score' if by == 'oof' else 'mean over folds'}"
    if len(ranked) > len(shown):
        title += f" (top {len(shown)} shown)"
    if unranked:
        title += f"; {len(unranked)} failed or unscored" + (f" ({len(marked)} shown)" if len(marked) < len(unranked)
                                                             else "")
    common = common_overrides(jobs)
    if common:
        title += "\nevery job: " + short(" ".join(common), 110)
    return title


def _display(jobs: list[Job]) -> tuple[list[str], list[list[str]]]:
    metrics = [j.metric for j in jobs if j.metric]
    metric = max(set(metrics), key=metrics.count) if metrics else "score"
    # status last: a failed job's error is the longest cell and stretches no other column
    header = ["rank", "job", "overrides", f"{metric} mean ± std", "folds", "oof", "time", "status"]
    body = []
    for r, j in zip(rows(jobs), jobs):
        status = j.status
        if j.error:
            first = j.error.strip().splitlines()[0]
            status += ": " + (first if len(first) <= ERROR_WIDTH else first[:ERROR_WIDTH - 1] + "…")
        score = "" if j.mean is None else _fmt(j.mean) + ("" if j.std is None or len(j.folds) < 2 else f" ± {_fmt(j.std)}")
        if j.metric and j.metric != metric and score:
            score += f" ({j.metric})"
        body.append([str(r["rank"]), str(r["job"]), r["overrides"], score, r["folds"],
                     "" if j.oof is None else _fmt(j.oof), duration(j.wall_s), status])
    return header, body


def summary_lines(root: Path, jobs: list[Job], by: str = "mean") -> list[str]:
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: kv[0] != "ok"))
    ranked = [j for j in jobs if j.rank is not None]
    lines = [f"{root}: {len(jobs)} job(s), {parts}"]
    if ranked:
        d = ranked[0].direction
        lines.append(f"ranked by {ranked[0].metric} ({'lower' if d == 'minimize' else 'higher'} is better), "
                     f"{'out-of-fold' if by == 'oof' else 'mean over folds'}; best: job {ranked[0].num if ranked[0].num is not None else ranked[0].name}")
    common = common_overrides(jobs)
    if common:
        lines.append("every job: " + " ".join(common))
    for j in jobs:
        if j.warning:
            lines.append(f"job {j.num if j.num is not None else j.name}: warning: {j.warning}")
    return lines


def text_table(root: Path, jobs: list[Job], by: str = "mean") -> str:
    header, body = _display(jobs)
    keep = [i for i in range(len(header)) if header[i] in ("rank", "job", "overrides", "status")
            or any(r[i] for r in body)]  # drop empty columns
    header, body = [header[i] for i in keep], [[r[i] for i in keep] for r in body]
    widths = [max(len(header[i]), *(len(r[i]) for r in body)) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = summary_lines(root, jobs, by) + ["", line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    return "\n".join(out) + "\n"


def markdown(root: Path, jobs: list[Job], by: str = "mean") -> str:
    header, body = _display(jobs)
    # each job's own report.html, linked relative to the sweep folder (it opens from disk)
    header = [*header, "report"]
    body = [[*r, f"[{folder.REPORT_HTML}]({(j.path / folder.REPORT_HTML).relative_to(root).as_posix()})"
             if (j.path / folder.REPORT_HTML).is_file() and j.path != root else ""] for r, j in zip(body, jobs)]
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    out = [f"# Report of {root}", ""] + [f"{s}  " for s in summary_lines(root, jobs, by)] + [""]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join("---" for _ in header) + "|")
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in body]
    return "\n".join(out) + "\n"


def print_report(root: Path, jobs: list[Job], by: str = "mean", file=None) -> None:
    print(text_table(root, jobs, by), end="", file=file or sys.stdout)
    also = ", report.md and report.png" if (Path(root) / "report.png").exists() else " and report.md"
    print(f"(written to {Path(root) / 'report.csv'}{also})", file=file or sys.stdout)


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


# ----------------------------------------------------------------------------- command
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="textclf report",
        description="Rank every run under a sweep (multirun/<date>/<time>) or run folder: overrides, CV mean ± std "
                    "of the monitored metric, per-fold scores, out-of-fold score, time and status, best first. "
                    "Writes report.csv, report.md and report.png into the folder.")
    parser.add_argument("folder", help="a sweep folder (multirun/<date>/<time>) or a run folder")
    parser.add_argument("--by", choices=("mean", "oof"), default="mean",
                        help="rank by the mean over folds (default) or the out-of-fold score")
    args = parser.parse_args(argv)
    root = Path(args.folder)
    if not root.is_dir():
        print(f"textclf: error: {args.folder!r} is not a folder", file=sys.stderr)
        return 2
    jobs = collect(root, args.by)
    if not jobs:
        print(f"textclf: error: no runs under {args.folder!r} (a run folder holds status.json, metrics.json or "
              f"config.yaml)", file=sys.stderr)
        return 2
    write_report(root, jobs, args.by)
    print_report(root, jobs, args.by)
    if (root / folder.MANIFEST).is_file():  # one finished run: its report.html, rebuilt from the folder
        print(f"report: {rebuild_run_report(root)}")
    return 0


def rebuild_run_report(run_dir: Path) -> Path:
    """report.html of a finished run, from its folder; the texts read again from its data files when they are
    still where the run found them (the report says so when they are not)."""
    from textclf.data.tables import load_split
    from textclf.errors import TextclfError
    from textclf.observe.html_report import write_html_report

    cfg = OmegaConf.load(run_dir / folder.CONFIG)
    texts, note = {}, ""
    try:
        for source in ("train", "valid"):
            path = cfg.data[f"{source}_file"]
            if path:
                split = load_split(source, str(path), cfg.data, need_labels=False)
                texts.update({(source, i): t for i, t in enumerate(split.texts)})
    except (TextclfError, OSError) as e:
        texts, note = {}, f"The texts are not shown: the data file could not be read again ({e})."
    return write_html_report(run_dir, texts, note)
