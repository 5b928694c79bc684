"""Run plots (textclf.observe.plots): every task gets its PNGs, degenerate inputs write or skip cleanly, never raise."""
from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import pytest

from textclf.observe import plots
from textclf.observe.plots import short, write_run_plots
from textclf.data.tasks import LabelSpace, sigmoid, softmax

# matplotlib or numpy complaining (clipped layout, missing glyphs, 0/0) fails the test
pytestmark = [pytest.mark.filterwarnings("error::UserWarning"), pytest.mark.filterwarnings("error::RuntimeWarning")]

BBC = ["business", "entertainment", "politics", "sport", "tech"]
EMOTIONS = ["admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion", "curiosity",
            "disappointment", "gratitude"]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_pictures(run_dir: Path, written: list[Path], expected: set[str]) -> None:
    assert {p.name for p in written} == expected
    assert all(p.parent == run_dir for p in written)
    for p in written:
        width, height = png_size(p)
        assert 300 <= width <= 4000 and 300 <= height <= 4000, (p.name, width, height)
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave nothing


def curves(folds: int = 3, steps: int = 120, evals: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(folds):
        step = np.arange(1, steps + 1)
        eval_step = np.linspace(steps / evals, steps, evals).astype(int)
        out[k] = {"step": step, "loss": np.exp(-step / 50) + rng.normal(0, 0.05, steps),
                  "eval_step": eval_step, "eval_value": 0.9 - 0.3 * np.exp(-eval_step / 40)}
    return out


def class_case(classes: list[str], n: int, seed: int = 0, task: str = "multiclass"):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(classes), n)
    logits = rng.normal(0, 1, (n, len(classes)))
    logits[np.arange(n), y] += 2.0
    return LabelSpace(task, classes), y, softmax(logits)


def multilabel_case(names: list[str], n: int, seed: int = 0, threshold=0.5):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(names))) < np.linspace(0.4, 0.05, len(names))).astype(np.float32)
    probs = sigmoid(rng.normal(-1.5, 1, y.shape) + 3 * y)
    return LabelSpace("multilabel", names, threshold=threshold), y, probs


# ----------------------------------------------------------------------------- every task
def test_multiclass_writes_confusion_learning_curves_and_reliability(tmp_path):
    space, y, probs = class_case(BBC, 400)
    written = write_run_plots(tmp_path, space, y, probs, curves(), "macro_f1")
    assert_pictures(tmp_path, written, {"confusion_matrix.png", "learning_curves.png", "reliability.png"})


def test_binary_also_writes_precision_recall(tmp_path):
    space, y, probs = class_case(["ham", "spam"], 300, task="binary")
    written = write_run_plots(tmp_path, space, y, probs, curves(), "f1")
    assert_pictures(tmp_path, written, {"confusion_matrix.png", "learning_curves.png", "precision_recall.png",
                                        "reliability.png"})


def test_multilabel_with_tuned_thresholds(tmp_path):
    space, y, probs = multilabel_case(EMOTIONS, 300, threshold=[0.3, 0.4, 0.5, 0.45, 0.35, 0.5, 0.55, 0.4, 0.5, 0.6])
    written = write_run_plots(tmp_path, space, y, probs, curves(), "micro_f1")
    assert_pictures(tmp_path, written, {"confusion_matrix.png", "learning_curves.png", "precision_recall.png",
                                        "reliability.png"})


def test_regression_writes_predicted_vs_true(tmp_path):
    rng = np.random.default_rng(0)
    y = np.stack([rng.normal(3, 1, 200), rng.normal(50, 15, 200)], axis=1).astype(np.float32)
    pred = y + rng.normal(0, [0.5, 5.0], y.shape)
    space = LabelSpace("regression", ["valence", "arousal"], target_names=["valence", "arousal"])
    written = write_run_plots(tmp_path, space, y, pred, curves(), "rmse")
    assert_pictures(tmp_path, written, {"learning_curves.png", "predicted_vs_true.png"})


# ----------------------------------------------------------------------------- many classes: the top-N cut
def test_many_classes_show_the_top_20_by_support(tmp_path):
    names = [f"category number {i:02d} with a long name" for i in range(40)]
    rng = np.random.default_rng(0)
    y = rng.choice(40, 2000, p=np.linspace(3, 0.1, 40) / np.linspace(3, 0.1, 40).sum())
    space, _, _ = class_case(names, 1)
    probs = softmax(rng.normal(0, 1, (2000, 40)) + 3 * np.eye(40)[y])
    fig = plots._confusion(space, y, probs)
    counts_ax = fig.axes[0]
    rows = [t.get_text() for t in counts_ax.get_yticklabels()]
    cols = [t.get_text() for t in counts_ax.get_xticklabels()]
    assert len(rows) == 20 and len(cols) == 21 and cols[-1] == "(20 others)"
    support = np.bincount(y, minlength=40)
    top = set(np.argsort(-support, kind="stable")[:20])
    assert rows == [short(names[i]) for i in sorted(top)]
    assert all(len(r) <= plots.NAME_WIDTH and r.endswith("…") for r in rows)
    assert "top 20 of 40 classes" in fig.get_suptitle()
    written = write_run_plots(tmp_path, space, y, probs, {}, "macro_f1")
    assert_pictures(tmp_path, written, {"confusion_matrix.png", "reliability.png"})


def test_many_labels_show_the_top_30_by_support():
    space, y, probs = multilabel_case([f"tag_{i}" for i in range(45)], 500)
    fig = plots._multilabel_confusion(space, y, probs)
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    by_support = np.argsort(-y.sum(axis=0), kind="stable")[:30]
    assert rows == [f"tag_{i}" for i in by_support]  # the most frequent label first
    assert "top 30 of 45 labels" in fig.get_suptitle()
    pr = plots._precision_recall(space, y, probs)
    assert len(pr.axes[0].get_legend().get_texts()) == plots.MAX_CURVES + 1  # + the micro-average


# ----------------------------------------------------------------------------- degenerate inputs
def test_a_single_class_present_and_a_class_never_predicted(tmp_path):
    space, _, probs = class_case(BBC, 60)
    y = np.zeros(60, dtype=np.int64)
    probs[:, 2] = 0.0  # politics is never predicted
    written = write_run_plots(tmp_path, space, y, probs, curves(), "macro_f1")
    assert_pictures(tmp_path, written, {"confusion_matrix.png", "learning_curves.png", "reliability.png"})


def test_nan_rows_are_left_out_with_a_warning(tmp_path, caplog):
    space, y, probs = class_case(["neg", "pos"], 80, task="binary")
    probs[:7] = np.nan
    with caplog.at_level(logging.WARNING, logger="textclf.observe.plots"):
        written = write_run_plots(tmp_path, space, y, probs, curves(), "f1")
    assert "7 of 80" in caplog.text
    assert len(written) == 4


def test_every_output_nan_and_no_curves_writes_nothing_and_says_why(tmp_path, caplog):
    space, y, probs = class_case(BBC, 30)
    empty = {0: {"step": np.array([], dtype=np.int64), "loss": np.array([]),
                 "eval_step": np.array([], dtype=np.int64), "eval_value": np.array([])}}
    with caplog.at_level(logging.WARNING, logger="textclf.observe.plots"):
        written = write_run_plots(tmp_path, space, y, np.full_like(probs, np.nan), empty, "macro_f1")
    assert written == []
    assert "no out-of-fold row with finite outputs" in caplog.text
    assert "learning_curves.png skipped" in caplog.text


def test_a_fold_without_a_step_curve_still_gets_its_evaluations(tmp_path):
    c = curves(2)
    c[1] = {"step": np.array([]), "loss": np.array([]), "eval_step": np.array([40, 80]),
            "eval_value": np.array([0.5, np.nan])}
    c[2] = {}  # nothing recorded at all
    space, y, probs = class_case(BBC, 50)
    written = write_run_plots(tmp_path, space, y, probs, c, "macro_f1")
    assert "learning_curves.png" in {p.name for p in written}
    fig = plots._learning_curves(c, "macro_f1")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["fold 0"]
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["fold 0", "fold 1"]


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "regression"])
def test_a_single_row_and_constant_predictions(tmp_path, task):
    if task == "regression":
        space = LabelSpace("regression", ["score"], target_names=["score"])
        cases = [(np.array([[1.0]]), np.array([[1.0]])), (np.linspace(0, 1, 20)[:, None], np.full((20, 1), 0.5))]
    elif task == "multilabel":
        space = LabelSpace("multilabel", ["a", "b", "c"])
        cases = [(np.array([[1, 0, 1]]), np.array([[0.9, 0.2, 0.4]])),
                 (np.eye(3)[np.arange(21) % 3], np.full((21, 3), 0.5))]
    else:
        classes = ["neg", "pos"] if task == "binary" else ["negative", "neutral", "positive"]
        space = LabelSpace(task, classes)
        k = len(classes)
        cases = [(np.array([1]), np.full((1, k), 1 / k)), (np.arange(20) % k, np.full((20, k), 1 / k))]
    for i, (y, out) in enumerate(cases):
        run = tmp_path / f"case{i}"
        written = write_run_plots(run, space, y, out, {}, "rmse" if task == "regression" else "macro_f1")
        assert written, (task, i)
        assert_pictures(run, written, {p.name for p in written})


def test_a_binary_run_without_positives_skips_precision_recall(tmp_path, caplog):
    space, _, probs = class_case(["neg", "pos"], 40, task="binary")
    with caplog.at_level(logging.WARNING, logger="textclf.observe.plots"):
        written = write_run_plots(tmp_path, space, np.zeros(40, dtype=np.int64), probs, curves(1), "f1")
    assert "precision_recall.png" not in {p.name for p in written} and len(written) == 3
    assert "precision_recall.png skipped" in caplog.text and "'pos'" in caplog.text


def test_outputs_that_do_not_match_the_classes_only_draw_curves(tmp_path, caplog):
    space, y, probs = class_case(BBC, 40)
    with caplog.at_level(logging.WARNING, logger="textclf.observe.plots"):
        written = write_run_plots(tmp_path, space, y, probs[:, :3], curves(1), "macro_f1")
    assert [p.name for p in written] == ["learning_curves.png"]
    assert "3 column(s) for 5 class(es)" in caplog.text


def test_a_plot_that_fails_is_skipped_with_a_warning_and_the_rest_are_written(tmp_path, caplog, monkeypatch):
    def broken(*args):
        raise ValueError("boom")

    monkeypatch.setattr(plots, "_reliability", broken)
    space, y, probs = class_case(BBC, 40)
    with caplog.at_level(logging.WARNING, logger="textclf.observe.plots"):
        written = write_run_plots(tmp_path, space, y, probs, curves(1), "macro_f1")
    assert {p.name for p in written} == {"confusion_matrix.png", "learning_curves.png"}
    assert "reliability.png not written: ValueError: boom" in caplog.text
    assert not (tmp_path / "reliability.png").exists()


def test_names_are_cut_and_made_safe_for_matplotlib():
    assert short("entertainment") == "entertainment"
    cut = short("a very long class name indeed, far too long")
    assert len(cut) == plots.NAME_WIDTH and cut.endswith("…")
    assert short("cost $5") == r"cost \$5"  # no mathtext
    assert short("_private") == " _private"  # matplotlib leaves '_' labels out of legends
    assert short("two\nlines") == "two lines"


def test_odd_class_names_draw_without_warnings(tmp_path):
    space, y, probs = class_case(["$100 and up", "_other", "体育", "a\nb"], 40)
    written = write_run_plots(tmp_path, space, y, probs, {}, "macro_f1")
    assert {p.name for p in written} == {"confusion_matrix.png", "reliability.png"}


def test_figures_keep_matplotlibs_info_lines_out_of_the_log_unless_its_level_was_set():
    """matplotlib's first use on a machine logs 'generated new fontManager' at INFO; a run's log (root at INFO) would
    keep it after the run's last line. A level the user set for matplotlib's logger stays."""
    logger = logging.getLogger("matplotlib")
    before = logger.level
    try:
        logger.setLevel(logging.NOTSET)
        plots.new_figure(2, 2)
        assert logger.level == logging.WARNING
        logger.setLevel(logging.DEBUG)
        plots.new_figure(2, 2)
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(before)
