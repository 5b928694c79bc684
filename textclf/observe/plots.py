"""Pictures of a finished run, written into its folder: confusion matrix, learning curves, precision-recall,
reliability (calibration) and predicted-vs-true plots from the out-of-fold predictions.

matplotlib is driven through Figure + FigureCanvasAgg objects only, never pyplot: nothing needs a display,
no backend is switched for anyone else in the process, and no global figure state carries over from one fold
or sweep job to the next. Every PNG is written atomically (a temporary file renamed into place).

A plot that cannot be drawn from the data it gets (one class present, no positives, every output NaN, ...)
is skipped with a warning that says why; write_run_plots never raises.
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from textclf.data.metrics import METRICS
from textclf.io import atomic_path


def quiet_matplotlib() -> None:
    """matplotlib's first use on a machine logs font-cache INFO lines, which a run's log (root at INFO) would keep;
    a level the user set for matplotlib's logger stays."""
    mpl_log = logging.getLogger("matplotlib")
    if mpl_log.level == logging.NOTSET:
        mpl_log.setLevel(logging.WARNING)


quiet_matplotlib()  # before matplotlib is imported: importing matplotlib.figure builds that font cache
import matplotlib  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

log = logging.getLogger(__name__)

DPI = 110
NAME_WIDTH = 20        # class / label / target names are cut to this many characters (with an ellipsis)
MAX_CLASSES = 20       # confusion matrix: the classes with the most support, when there are more
MAX_LABELS = 30        # multilabel summary: the labels with the most support, when there are more
MAX_CURVES = 10        # precision-recall: curves drawn (by support) in one panel
MAX_TARGETS = 12       # regression: targets drawn
MAX_POINTS = 20_000    # regression: points per scatter (an evenly spread sample beyond)
BINS = 10              # reliability: equal-width probability bins
TITLE = 11
LABEL = 9.5
TICK = 8.5


# ----------------------------------------------------------------------------- entry point
def write_run_plots(run_dir: Path, labels, y_true: np.ndarray, outputs: np.ndarray,
                    curves: dict[int, dict[str, np.ndarray]], monitor: str) -> list[Path]:
    """Write the run's PNGs into run_dir and return the paths written.

    labels: the run's textclf.data.tasks.LabelSpace; y_true: encoded truth of the scored out-of-fold rows (class
    ids; a 0/1 matrix for multilabel; values rows x targets for regression); outputs: the matching out-of-fold
    probabilities (rows x classes) or regression predictions (rows x targets); curves[fold]: "step"/"loss" (the
    training loss per logged optimizer step) and "eval_step"/"eval_value" (the monitored metric per evaluation).
    """
    run_dir = Path(run_dir)
    task = labels.task
    plots: list[tuple[str, Callable]] = [("learning_curves.png", lambda: _learning_curves(curves, monitor))]
    data = _clean(labels, y_true, outputs)
    if data is not None:
        y, out = data
        if task in ("binary", "multiclass"):
            plots.append(("confusion_matrix.png", lambda: _confusion(labels, y, out)))
        elif task == "multilabel":
            plots.append(("confusion_matrix.png", lambda: _multilabel_confusion(labels, y, out)))
        if task in ("binary", "multilabel"):
            plots.append(("precision_recall.png", lambda: _precision_recall(labels, y, out)))
        if task in ("binary", "multiclass", "multilabel"):
            plots.append(("reliability.png", lambda: _reliability(labels, y, out)))
        if task == "regression":
            plots.append(("predicted_vs_true.png", lambda: _predicted_vs_true(labels, y, out)))
    written = []
    for name, draw in plots:
        try:
            fig = draw()
            if fig is None:
                continue
            written.append(save_figure(fig, run_dir / name))
        except Exception as e:  # noqa: BLE001 - a picture never fails a finished run
            log.warning("plots: %s not written: %s: %s", name, type(e).__name__, e)
    return written


def save_figure(fig, path: Path) -> Path:
    """Render with Agg and write the PNG atomically."""
    FigureCanvasAgg(fig)
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # a class name in a script the bundled font lacks (CJK, emoji) draws as boxes; the picture still stands
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return path


def new_figure(width: float, height: float):
    """Every figure textclf draws (the run's plots, report.png) starts here."""
    quiet_matplotlib()  # again: the level may have been cleared since this module was imported
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained", facecolor="white")


def short(name, width: int = NAME_WIDTH) -> str:
    """A name fit for an axis or legend: one line, at most `width` characters, no mathtext, no '_' hiding."""
    text = " ".join(str(name).split())
    if len(text) > width:
        text = text[:width - 1].rstrip() + "…"
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text  # matplotlib leaves '_'-labels out of legends


# ----------------------------------------------------------------------------- inputs
def _clean(labels, y_true, outputs) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows usable for plots (finite outputs and truth), shaped as compute_metrics takes them."""
    task = labels.task
    out = np.asarray(outputs, dtype=np.float64)
    y = np.asarray(y_true)
    if out.ndim == 1:
        out = out[:, None]
    if task in ("multilabel", "regression") and y.ndim == 1:
        y = y[:, None]
    if len(out) != len(y):
        log.warning("plots: %d output rows but %d truth rows; only the learning curves are drawn", len(out), len(y))
        return None
    width = len(labels.classes)
    if out.shape[1] != width or (y.ndim == 2 and y.shape[1] != width):
        log.warning("plots: outputs have %d column(s) for %d class(es)/target(s); only the learning curves are drawn",
                    out.shape[1], width)
        return None
    keep = np.isfinite(out).all(axis=1)
    if task in ("multilabel", "regression"):
        y = y.astype(np.float64)
        keep &= np.isfinite(y).all(axis=1)
    else:
        y = y.astype(np.float64)
        keep &= np.isfinite(y) & (y >= 0) & (y < width)
    if not keep.all():
        log.warning("plots: %d of %d out-of-fold row(s) have missing (NaN) outputs or labels and are left out",
                    int((~keep).sum()), len(keep))
    if not keep.any():
        log.warning("plots: no out-of-fold row with finite outputs; only the learning curves are drawn")
        return None
    y, out = y[keep], out[keep]
    if task in ("binary", "multiclass"):
        y = y.astype(np.int64)
    elif task == "multilabel":
        y = (y > 0.5).astype(np.int64)
    return y, out


def _top(support: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest supports, largest first (ties: output order)."""
    order = np.argsort(-support, kind="stable")
    return order[:n]


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _skip(name: str, why: str):
    log.warning("plots: %s skipped: %s", name, why)
    return None


def _cell_font(n: int) -> float:
    return 10 if n <= 6 else 9 if n <= 10 else 7.5 if n <= 15 else 6.5


def _annotate(ax, values: np.ndarray, shown: np.ndarray, fmt: Callable[[float], str], fontsize: float,
              vmax: float) -> None:
    """Numbers in the cells of an imshow'd matrix (colour scale 0..vmax); white on dark cells."""
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            if not np.isfinite(v):
                continue
            dark = np.isfinite(shown[i, j]) and vmax > 0 and shown[i, j] > 0.55 * vmax
            ax.text(j, i, fmt(v), ha="center", va="center", fontsize=fontsize,
                    color="white" if dark else "#1a1a1a")


def _cmap(name: str):
    return matplotlib.colormaps[name].with_extremes(bad="#f0f0f0")


# ----------------------------------------------------------------------------- confusion matrix
def _confusion(labels, y: np.ndarray, out: np.ndarray):
    names = labels.names
    k = len(names)
    pred = np.asarray(labels.decide(out), dtype=np.int64)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (y, pred), 1)
    support = counts.sum(axis=1)
    cut = k > MAX_CLASSES
    shown = np.sort(_top(support, MAX_CLASSES)) if cut else np.arange(k)
    rows = counts[shown]
    cols = rows[:, shown]
    col_names = [short(names[i]) for i in shown]
    if cut:  # predictions for a class not shown land in one "other" column, so rows still sum to their support
        cols = np.concatenate([cols, (rows.sum(axis=1) - cols.sum(axis=1))[:, None]], axis=1)
        col_names.append(f"({k - len(shown)} others)")
    row_names = [short(names[i]) for i in shown]
    totals = rows.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(totals[:, None] > 0, cols / np.where(totals > 0, totals, 1)[:, None], np.nan)

    n_rows, n_cols = len(row_names), len(col_names)
    side = float(np.clip(0.42 * max(n_rows, n_cols) + 1.6, 3.6, 9.5))
    fig = new_figure(2 * side + 2.6, side + 1.6)
    axes = fig.subplots(1, 2)
    font = _cell_font(max(n_rows, n_cols))
    panels = [(axes[0], cols.astype(np.float64), cols.astype(np.float64), "Blues", "counts",
               lambda v: f"{int(v)}"),
              (axes[1], norm, norm, "Blues", "row-normalised (recall per class)",
               lambda v: "0" if v == 0 else f"{v:.2f}")]
    for ax, values, colour, cmap, title, fmt in panels:
        vmax = 1.0 if values is norm else max(1.0, float(np.nanmax(colour)) if np.isfinite(colour).any() else 1.0)
        image = ax.imshow(np.ma.masked_invalid(colour), cmap=_cmap(cmap), vmin=0, vmax=vmax, aspect="auto",
                          interpolation="nearest")
        _annotate(ax, values, colour, fmt, font, vmax)
        ax.set_xticks(range(n_cols), col_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=TICK)
        ax.set_yticks(range(n_rows), row_names, fontsize=TICK)
        ax.set_xlabel("predicted", fontsize=LABEL)
        ax.set_ylabel("true", fontsize=LABEL)
        ax.set_title(title, fontsize=LABEL + 0.5)
        ax.tick_params(length=0)
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=TICK - 0.5)
    accuracy = float(np.trace(counts) / counts.sum()) if counts.sum() else float("nan")
    title = f"Out-of-fold confusion matrix: {_count(int(counts.sum()), 'row')}, accuracy {accuracy:.3f}"
    if cut:
        title += f"\ntop {len(shown)} of {k} classes by support (other rows left out)"
    missing = int((support[shown] == 0).sum())
    if missing:
        title += f"\n{missing} class(es) without out-of-fold rows (grey)"
    fig.suptitle(title, fontsize=TITLE)
    return fig


def _multilabel_confusion(labels, y: np.ndarray, out: np.ndarray):
    names = labels.names
    y = (np.asarray(y) > 0.5).astype(np.int64)
    pred = np.asarray(labels.decide(out), dtype=np.int64)
    tp = (y & pred).sum(axis=0)
    fn = (y & (1 - pred)).sum(axis=0)
    fp = ((1 - y) & pred).sum(axis=0)
    tn = ((1 - y) & (1 - pred)).sum(axis=0)
    support = y.sum(axis=0)
    k = len(names)
    cut = k > MAX_LABELS
    shown = _top(support, MAX_LABELS)  # by support, largest first (the reading order of the rows)
    thresholds = labels.thresholds()
    per_label = isinstance(labels.threshold, (list, tuple))
    row_names = [short(names[i]) + (f"  (t={thresholds[i]:.2f})" if per_label else "") for i in shown]
    counts = np.stack([tp, fn, fp, tn], axis=1)[shown].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)
    scores = np.stack([precision, recall, f1], axis=1)[shown]
    n = len(shown)
    height = float(np.clip(0.3 * n + 1.9, 3.4, 11.5))
    fig = new_figure(10.5, height)
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [4, 3]})
    font = 9 if n <= 12 else 8 if n <= 20 else 7
    # counts coloured by their share of the label's rows, so a label's row reads the same at any support
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ax = axes[0]
    ax.imshow(share, cmap=_cmap("Blues"), vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    _annotate(ax, counts, share, lambda v: f"{int(v)}", font, 1.0)
    ax.set_xticks(range(4), ["TP", "FN", "FP", "TN"], fontsize=TICK)
    ax.xaxis.tick_top()
    ax.set_yticks(range(n), row_names, fontsize=TICK)
    ax.set_title("counts per label (colour: share of rows)", fontsize=LABEL + 0.5)
    ax.tick_params(length=0)
    ax = axes[1]
    image = ax.imshow(np.ma.masked_invalid(scores), cmap=_cmap("RdYlGn"), vmin=0, vmax=1, aspect="auto",
                      interpolation="nearest")
    _annotate_plain(ax, scores, font)
    ax.set_xticks(range(3), ["precision", "recall", "F1"], fontsize=TICK)
    ax.xaxis.tick_top()
    ax.set_yticks(range(n), [""] * n)
    ax.set_title("scores (grey: undefined)", fontsize=LABEL + 0.5)
    ax.tick_params(length=0)
    bar = fig.colorbar(image, ax=ax, fraction=0.06, pad=0.03)
    bar.ax.tick_params(labelsize=TICK - 0.5)
    threshold = "tuned per-label thresholds" if per_label else f"threshold {float(thresholds[0]):.2f}"
    title = f"Out-of-fold decisions per label: {_count(len(y), 'row')}, {threshold}"
    if cut:
        title += f"\ntop {n} of {k} labels by support"
    fig.suptitle(title, fontsize=TITLE)
    return fig


def _annotate_plain(ax, values: np.ndarray, fontsize: float) -> None:
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            dark = np.isfinite(v) and (v < 0.15 or v > 0.85)  # the ends of RdYlGn are dark
            ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=fontsize,
                    color="white" if dark else "#1a1a1a")


# ----------------------------------------------------------------------------- learning curves
def _learning_curves(curves: dict, monitor: str):
    folds = sorted(curves or {}, key=lambda f: (not isinstance(f, (int, np.integer)), str(f) if not
                                                  isinstance(f, (int, np.integer)) else int(f)))
    series = {}
    for fold in folds:
        c = curves[fold] or {}
        series[fold] = tuple(_pair(c.get(x), c.get(v)) for x, v in (("step", "loss"), ("eval_step", "eval_value")))
    if not any(len(s[0][0]) or len(s[1][0]) for s in series.values()):
        return _skip("learning_curves.png", "no fold has a training-loss or evaluation curve")
    colours = matplotlib.colormaps["tab10" if len(folds) <= 10 else "tab20"]
    fig = new_figure(11.5, 4.4)
    axes = fig.subplots(1, 2)
    better = "higher" if METRICS.get(monitor, True) else "lower"
    panels = [(axes[0], 0, "training loss per optimizer step", "loss"),
              (axes[1], 1, f"{monitor} per evaluation ({better} is better)", monitor)]
    for ax, which, title, ylabel in panels:
        drawn = 0
        for n, fold in enumerate(folds):
            x, v = series[fold][which]
            if not len(x):
                continue
            colour = colours(n % colours.N)
            name = f"fold {fold}"
            if which == 0 and len(x) > 60:  # noisy per-step loss: faint raw line, bold moving average
                ax.plot(x, v, color=colour, alpha=0.25, linewidth=0.8)
                ax.plot(x, _smooth(v, max(5, len(x) // 30)), color=colour, linewidth=1.6, label=name)
            else:
                ax.plot(x, v, color=colour, linewidth=1.5, label=name,
                        marker="o" if which == 1 or len(x) <= 60 else None, markersize=3.5)
            drawn += 1
        ax.set_title(title, fontsize=LABEL + 0.5)
        ax.set_xlabel("optimizer step", fontsize=LABEL)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel, fontsize=LABEL)
        ax.tick_params(labelsize=TICK)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=TICK, ncol=2 if drawn > 5 else 1, frameon=False)
        else:
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", va="center", color="grey",
                    fontsize=LABEL)
    if any(len(s[0][0]) > 60 for s in series.values()):
        axes[0].text(0.99, 0.98, "bold: moving average", transform=axes[0].transAxes, ha="right", va="top",
                     fontsize=TICK - 0.5, color="grey")
    fig.suptitle("Learning curves", fontsize=TITLE)
    return fig


def _pair(x, v) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of one curve as float arrays of the same length, non-finite steps dropped."""
    x = np.asarray([] if x is None else x, dtype=np.float64).ravel()
    v = np.asarray([] if v is None else v, dtype=np.float64).ravel()
    n = min(len(x), len(v))
    x, v = x[:n], v[:n]
    keep = np.isfinite(x)
    return x[keep], v[keep]


def _smooth(v: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average that ignores NaNs (the first points average what is there)."""
    ok = np.isfinite(v)
    sums = np.cumsum(np.where(ok, v, 0.0))
    counts = np.cumsum(ok)
    sums[window:] = sums[window:] - sums[:-window]
    counts[window:] = counts[window:] - counts[:-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


# ----------------------------------------------------------------------------- precision-recall
def _precision_recall(labels, y: np.ndarray, out: np.ndarray):
    names = labels.names
    decided = np.asarray(labels.decide(out))
    pos = getattr(labels, "positive", 1)  # the class binary F1 and the threshold are about (positive_label)
    if labels.task == "binary":
        truth, scores, picks = (y == pos).astype(np.int64)[:, None], out[:, [pos]], [0]
        point = (decided == pos).astype(np.int64)[:, None]
        curve_names = [names[pos]]
    else:
        truth, scores, point, curve_names = (np.asarray(y) > 0.5).astype(np.int64), out, decided.astype(np.int64), names
        picks = list(_top(truth.sum(axis=0), len(names)))
    with_pos = [i for i in picks if truth[:, i].sum() > 0]
    if not with_pos:
        why = (f"the positive class {names[pos]!r} has no out-of-fold rows" if labels.task == "binary"
               else "no label has a positive out-of-fold row")
        return _skip("precision_recall.png", why)
    shown = with_pos[:MAX_CURVES]
    colours = matplotlib.colormaps["tab10"]
    fig = new_figure(7.8 if len(shown) > 1 or labels.task == "multilabel" else 5.6, 5.9)
    ax = fig.subplots()
    for n, i in enumerate(shown):
        colour = colours(n % 10) if len(shown) > 1 else "tab:blue"
        precision, recall, _ = precision_recall_curve(truth[:, i], scores[:, i])
        ap = float(average_precision_score(truth[:, i], scores[:, i]))
        ax.step(recall, precision, where="post", color=colour, linewidth=1.6,
                label=f"{short(curve_names[i])} (AP {ap:.3f}, n={int(truth[:, i].sum())})")
        tp = int((point[:, i] & truth[:, i]).sum())
        predicted, positives = int(point[:, i].sum()), int(truth[:, i].sum())
        if predicted:
            ax.plot([tp / positives], [tp / predicted], "o", color=colour, markersize=6, markeredgecolor="black",
                    markeredgewidth=0.6)
    if labels.task == "multilabel" and len(with_pos) > 1:
        flat_t, flat_s = truth[:, with_pos].ravel(), scores[:, with_pos].ravel()
        precision, recall, _ = precision_recall_curve(flat_t, flat_s)
        ap = float(average_precision_score(flat_t, flat_s))
        ax.step(recall, precision, where="post", color="black", linewidth=2.2, linestyle="--",
                label=f"micro-average (AP {ap:.3f})")
    if labels.task == "binary":
        prevalence = float(truth[:, 0].mean())
        ax.axhline(prevalence, color="grey", linestyle=":", linewidth=1, label=f"chance (prevalence {prevalence:.2f})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.03)
    ax.set_xlabel("recall", fontsize=LABEL)
    ax.set_ylabel("precision", fontsize=LABEL)
    ax.tick_params(labelsize=TICK)
    ax.grid(alpha=0.3)
    ax.set_aspect("equal", adjustable="box")
    if len(shown) > 1 or labels.task == "multilabel":
        ax.legend(fontsize=TICK - 0.5, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    else:
        ax.legend(fontsize=TICK, loc="lower left", frameon=True)
    if labels.task == "binary":
        title = f"Precision–recall of {short(names[pos])} (out of fold, {_count(len(y), 'row')})"
    else:
        title = f"Precision–recall per label (out of fold, {_count(len(y), 'row')})"
        if len(with_pos) > len(shown):
            title += f"\ntop {len(shown)} of {len(names)} labels by support"
        if len(with_pos) < len(names):
            title += f"\n{len(names) - len(with_pos)} label(s) without positives left out"
    title += ("\ndots: operating points at the decision thresholds" if labels.task == "multilabel"
              else "\ndot: operating point at the decision threshold")
    fig.suptitle(title, fontsize=TITLE - 0.5)
    return fig


# ----------------------------------------------------------------------------- reliability
def _reliability(labels, y: np.ndarray, out: np.ndarray):
    names = labels.names
    if labels.task == "binary":
        pos = getattr(labels, "positive", 1)
        p, hit = out[:, pos], (y == pos).astype(np.float64)
        what, xlabel, ylabel = f"P({short(names[pos])})", "predicted probability", "observed frequency"
    elif labels.task == "multilabel":
        p, hit = out.ravel(), y.astype(np.float64).ravel()
        what, xlabel, ylabel = "every label, pooled", "predicted probability", "observed frequency"
    else:
        p = out.max(axis=1)
        hit = (np.asarray(labels.decide(out)) == y).astype(np.float64)
        what, xlabel, ylabel = "top-class confidence", "confidence (largest probability)", "accuracy"
    p = np.clip(p, 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, BINS + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, BINS - 1)
    counts = np.bincount(which, minlength=BINS).astype(np.float64)
    mean_p = np.bincount(which, weights=p, minlength=BINS)
    observed = np.bincount(which, weights=hit, minlength=BINS)
    full = counts > 0
    mean_p[full] /= counts[full]
    observed[full] /= counts[full]
    ece = float(np.sum(counts[full] * np.abs(observed[full] - mean_p[full])) / counts.sum())
    fig = new_figure(6.2, 6.6)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    top.plot(mean_p[full], observed[full], marker="o", color="tab:blue", linewidth=1.6, markersize=5,
             label=f"model (ECE {ece:.3f})")
    top.set_xlim(0, 1)
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel(ylabel, fontsize=LABEL)
    top.tick_params(labelsize=TICK)
    top.grid(alpha=0.3)
    top.legend(fontsize=TICK, loc="upper left", frameon=False)
    bottom.hist(p, bins=edges, color="tab:blue", alpha=0.75, edgecolor="white")
    bottom.set_xlabel(xlabel, fontsize=LABEL)
    bottom.set_ylabel("rows" if labels.task != "multilabel" else "outputs", fontsize=LABEL)
    bottom.tick_params(labelsize=TICK)
    bottom.grid(alpha=0.3, axis="y")
    if counts.max() > 50 * max(1.0, np.min(counts[full])) and len(p) > 50:
        bottom.set_yscale("log")
    fig.suptitle(f"Reliability: {what}\n{_count(len(p), 'output' if labels.task == 'multilabel' else 'row')} out of fold, "
                 f"{BINS} bins", fontsize=TITLE - 0.5)
    return fig


# ----------------------------------------------------------------------------- regression
def _predicted_vs_true(labels, y: np.ndarray, out: np.ndarray):
    names = labels.names
    t = min(len(names), MAX_TARGETS)
    cols = min(3, t)
    rows = math.ceil(t / cols)
    size = 4.2 if t > 1 else 5.4
    fig = new_figure(size * cols + 0.3, size * rows + 0.8)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    sample = np.arange(len(y))
    if len(y) > MAX_POINTS:
        sample = np.linspace(0, len(y) - 1, MAX_POINTS).astype(np.int64)
    alpha = float(np.clip(12 / math.sqrt(len(sample)), 0.12, 0.8))
    err = out - y
    for j in range(t):
        ax = axes[j]
        ax.scatter(y[sample, j], out[sample, j], s=9 if len(sample) > 2000 else 14, alpha=alpha, color="tab:blue",
                   edgecolors="none", rasterized=len(sample) > 2000)
        lo = float(min(y[:, j].min(), out[:, j].min()))
        hi = float(max(y[:, j].max(), out[:, j].max()))
        pad = 0.05 * (hi - lo) if hi > lo else max(1.0, abs(hi) * 0.1)
        lo, hi = lo - pad, hi + pad
        ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal", adjustable="box")
        rmse = float(np.sqrt(np.mean(err[:, j] ** 2)))
        ax.set_title(short(names[j]) + (f": RMSE {rmse:.3g}" if len(names) > 1 else ""), fontsize=LABEL + 0.5)
        ax.set_xlabel("true", fontsize=LABEL)
        ax.set_ylabel("predicted", fontsize=LABEL)
        ax.tick_params(labelsize=TICK)
        ax.grid(alpha=0.3)
    for ax in axes[t:]:
        ax.set_visible(False)
    title = f"Predicted vs true (out of fold, {_count(len(y), 'row')}): RMSE {float(np.sqrt(np.mean(err ** 2))):.3g}"
    if len(names) > 1:
        title += " over all targets"
    notes = []
    if len(names) > t:
        notes.append(f"first {t} of {len(names)} targets")
    if len(sample) < len(y):
        notes.append(f"{len(sample)} of {len(y)} points drawn")
    if notes:
        title += "\n" + "; ".join(notes)
    fig.suptitle(title, fontsize=TITLE)
    return fig
