"""report.html is one self-contained page: no URL outside the file, every image embedded and decodable, every text
escaped; multiclass, multilabel and regression runs each get their sections (built here from run folders written
the way `textclf train` writes them, without training)."""
from __future__ import annotations

import base64
import datetime
import io
import json
import re

import numpy as np
import pandas as pd
import pytest

from textclf.data.tasks import LabelSpace
from textclf.observe.html_report import render, write_html_report
from textclf.observe.plots import write_run_plots
from textclf.run import folder


def fake_run(path, task: str, rng) -> dict:
    """A finished run's folder: labels.json, oof.csv, metrics.json, status.json, config.yaml and its plots."""
    path.mkdir()
    n = 40
    if task == "regression":
        labels = LabelSpace("regression", ["score"])
        y = rng.normal(size=(n, 1)).astype(np.float32)
        outputs = y + rng.normal(scale=0.3, size=(n, 1)).astype(np.float32)
        outputs[3, 0] += 5.0  # one row far off: the largest residual
    else:
        classes = ["neg", "neu", "pos"]
        labels = LabelSpace(task, classes)
        if task == "multilabel":
            y = (rng.random((n, 3)) < 0.4).astype(np.float32)
            outputs = np.clip(y * 0.7 + rng.random((n, 3)) * 0.4, 0, 1)
            outputs[2, 0] = 0.03 if y[2, 0] else 0.97  # a confident wrong decision on one class
        else:
            y = rng.integers(0, 3, n)
            outputs = rng.dirichlet(np.ones(3), n)
            outputs[np.arange(n), y] += 1.0
            outputs /= outputs.sum(1, keepdims=True)
            outputs[5] = [0.02, 0.02, 0.96] if y[5] != 2 else [0.96, 0.02, 0.02]  # a confident mistake
    table = labels.table(outputs, y_true=y, extra={"source": ["train"] * n, "row": np.arange(n)})
    table.to_csv(path / folder.OOF, index=False)
    (path / folder.LABELS).write_text(json.dumps(labels.to_dict()))
    report = None
    if task == "multiclass":
        report = {c: {"precision": 0.5, "recall": 0.5, "f1-score": 0.5, "support": 10.0} for c in labels.classes}
    monitor = "rmse" if task == "regression" else "macro_f1"
    (path / folder.METRICS).write_text(json.dumps({"task": task, "monitor": monitor, "folds": [{}, {}],
                                                   "mean": {monitor: 0.5}, "std": {monitor: 0.1},
                                                   "oof": {monitor: 0.5}, **({"oof_report": report} if report else {})}))
    (path / folder.STATUS).write_text(json.dumps({"status": "ok", "overrides": ["data=csv", "loss=focal"],
                                                  "wall_s": 75.0}))
    (path / folder.CONFIG).write_text("model:\n  name_or_path: tiny\n  max_length: 32\ntrainer:\n  epochs: 1\n")
    write_run_plots(path, labels, y, outputs, {0: {}}, monitor)
    return {("train", i): f"text <{i}> & more" for i in range(n)}


@pytest.mark.parametrize("task", ["multiclass", "multilabel", "regression"])
def test_the_report_is_self_contained_and_its_images_decode(tmp_path, task):
    from PIL import Image

    texts = fake_run(tmp_path / "run", task, np.random.default_rng(0))
    page = write_html_report(tmp_path / "run", texts).read_text(encoding="utf-8")
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", page), "nothing is loaded from elsewhere"
    assert "http://" not in page and "https://" not in page and "<script" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    pngs = sorted(p.name for p in (tmp_path / "run").glob("*.png"))
    assert pngs and len(images) == len(pngs), "every plot the run drew is embedded"
    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    assert "text &lt;5&gt; &amp; more" in page or task != "multiclass", "texts are shown, escaped"
    assert "<5>" not in page
    sections = {"multiclass": ["Most confident mistakes", "Likely label errors", "Per class"],
                "multilabel": ["Most confident mistakes", "Likely label errors", "Wrong decisions on one class"],
                "regression": ["Largest residuals", "Regression has no label issues"]}[task]
    for words in sections:
        assert words in page, words
    assert "textclf train data=csv loss=focal" in page and "1 min 15 s" in page


def test_the_confused_pairs_lead_with_the_most_confident_mistake(tmp_path):
    texts = fake_run(tmp_path / "run", "multiclass", np.random.default_rng(1))
    page = render(tmp_path / "run", texts)
    oof = pd.read_csv(tmp_path / "run" / folder.OOF)
    wrong = oof[oof["label"] != oof["pred"]]
    assert f"{len(wrong)} of {len(oof)} out-of-fold rows are mistaken" in page
    assert "0.960" in page, "row 5's confident mistake is listed with its probability"


def test_label_issues_and_data_checks_are_shown_when_the_run_has_them(tmp_path):
    texts = fake_run(tmp_path / "run", "multiclass", np.random.default_rng(2))
    run = tmp_path / "run"
    pd.DataFrame({"row": [5], "text": ["a <b>text</b>"], "given_label": ["neg"], "suggested_label": ["pos"],
                  "score": [0.01]}).to_csv(run / folder.LABEL_ISSUES, index=False)
    dup = {"size": 2, "rows": [3, 9], "text": "same <text>", "labels": {"neg": 1, "pos": 1}, "conflicting": True}
    (run / folder.DATA_CHECKS).write_text(json.dumps({
        "train": {"rows": 40, "duplicates": {"exact": {"groups": 1, "rows": 2, "conflicting_groups": 1, "shown": [dup]},
                                             "near": {"groups": 0, "rows": 0, "conflicting_groups": 0, "shown": []}}},
        "class_balance": {"train": {"rows": 40, "counts": {"neg": 14, "neu": 13, "pos": 13},
                                    "shares": {"neg": 0.35, "neu": 0.325, "pos": 0.325}}}}))
    page = render(run, texts)
    assert "a &lt;b&gt;text&lt;/b&gt;" in page and "data.exclude_rows=" in page
    assert "Class balance, train table (40 rows)" in page and ">14<" in page and "35.0%" in page
    assert "Duplicates in the training table" in page and "same &lt;text&gt;" in page and "neg: 1; pos: 1" in page
    without = render(run, None, "The texts are not shown: the data file could not be read again (gone).")
    assert "The texts are not shown" in without


def test_a_report_written_before_the_job_status_shows_the_time_so_far(tmp_path):
    """train writes report.html before status.json says ok: the wall time is the time since the run started."""
    texts = fake_run(tmp_path / "run", "multiclass", np.random.default_rng(3))
    started = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=3, seconds=5)
    (tmp_path / "run" / folder.STATUS).write_text(json.dumps({"status": "running", "overrides": [],
                                                              "started": started.isoformat(timespec="seconds")}))
    page = render(tmp_path / "run", texts)
    assert re.search(r"3 min 0[5-9] s", page), "the wall time card is filled while the run is finishing"
    assert "no overrides: the defaults" in page


def test_many_duplicate_groups_show_the_first_ten_and_say_how_many_there_are(tmp_path):
    texts = fake_run(tmp_path / "run", "multiclass", np.random.default_rng(4))
    groups = [{"size": 2, "rows": [i, 100 + i], "text": f"copy {i}", "labels": {"neg": 2}, "conflicting": False}
              for i in range(30)]
    (tmp_path / "run" / folder.DATA_CHECKS).write_text(json.dumps({"train": {"rows": 200, "duplicates": {
        "exact": {"groups": 60, "rows": 120, "conflicting_groups": 0, "shown": groups}}}}))
    page = render(tmp_path / "run", texts)
    assert "copy 9<" in page and "copy 10<" not in page
    assert "10 of the 60 groups shown" in page
    assert "conflicting labels</th>" not in page.split("Duplicates in the training table")[1].split("</table>", 2)[1], \
        "no empty conflict column when no shown group conflicts"
    assert "kfold=group" in page, "the report says what duplicates across folds do to the out-of-fold score"
