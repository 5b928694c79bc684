"""report.html: a finished run's error analysis in one self-contained file (images embedded, no script, no
network), written by `textclf train` at the end of every run and rebuilt by `textclf report <run folder>`.

It reads only the run folder (config.yaml, status.json, inputs.json, metrics.json, labels.json, oof.csv, the plots,
label_issues.csv and data_checks.json when present), plus the training texts when the caller has them (train passes
them; `textclf report` reads the data file again, and the report says so when it cannot).
"""
from __future__ import annotations

import base64
import datetime
import html
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from textclf.io import write_text
from textclf.run import folder

log = logging.getLogger(__name__)

#: rows shown per table: the most confident mistakes per confused pair, the pairs, label issues, residuals
PER_PAIR, PAIRS, ISSUES, RESIDUALS = 5, 6, 50, 25
#: characters of a text shown in a table cell (the full text is in the data file)
TEXT_CHARS = 300
#: duplicate groups shown per table, and the characters of their text (the rest are in data_checks.json)
GROUPS_SHOWN, GROUP_CHARS = 10, 160

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;background:#f6f7f9;margin:0}
main{max-width:1100px;margin:0 auto;padding:16px}
h1{font-size:1.5em;margin:.4em 0 .2em} h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:2px solid #dde3ea;
padding-bottom:.2em} h3{font-size:1em;margin:1.2em 0 .3em}
.muted{color:#5b6573}.note{background:#fff8e1;border-left:4px solid #f2b600;padding:.5em .8em;margin:.6em 0}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:.6em 0}
.card{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:.5em .9em;min-width:140px;flex:0 1 auto}
.card b{display:block;font-size:1.3em}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;background:#fff;border:1px solid #dde3ea;border-radius:8px}
table{border-collapse:collapse;width:100%;font-size:.92em}
th,td{padding:.35em .6em;border-bottom:1px solid #eef1f4;text-align:left;vertical-align:top}
th{background:#f0f3f7;position:sticky;top:0} td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.text{min-width:16em;max-width:40em;word-break:break-word}
figure{margin:.8em 0;background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:8px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto} figcaption{font-size:.85em;color:#5b6573}
code{background:#eef1f4;padding:0 .25em;border-radius:3px;word-break:break-all}
nav{display:flex;flex-wrap:wrap;gap:.3em 1em}
@media (max-width:600px){body{font-size:14px} main{padding:8px} .card{min-width:0;flex:1 1 40%}
th,td{padding:.3em .35em}
figure{overflow-x:auto} figure img{max-width:none;width:600px}
table.records,table.records tbody,table.records tr{display:block} table.records thead{display:none}
table.records tr{border-bottom:1px solid #dde3ea;padding:.35em .2em}
table.records td{display:inline-block;border:0;padding:.05em .4em}
table.records td::before{content:attr(data-label) ": ";color:#5b6573}
table.records td.text{display:block;min-width:0;max-width:none;margin-top:.2em}
table.records td.text::before{content:""}}
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}"


def clip(text, n: int = TEXT_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def table(header: list[str], rows: list[list], numeric: set[int] = frozenset(), text: set[int] = frozenset()) -> str:
    """An HTML table (cells escaped); numeric columns right-aligned, text columns wrapped."""
    def cls(i):
        return ' class="num"' if i in numeric else (' class="text"' if i in text else "")

    names = [str(h).replace("_", " ") for h in header]
    head = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(names))
    # data-label: on a phone a table with a text column is shown as one block per row, each cell with its name
    body = "".join("<tr>" + "".join(f'<td{cls(i)} data-label="{esc(names[i])}">{esc(c)}</td>' if text and i < len(names)
                                    else f"<td{cls(i)}>{esc(c)}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    kind = ' class="records"' if text else ""
    return f'<div class="scroll"><table{kind}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- the sections
def summary(run_dir: Path, cfg, metrics: dict, status: dict, oof: pd.DataFrame | None) -> str:
    task, monitor = metrics.get("task", "?"), metrics.get("monitor", "?")
    mean, std = (metrics.get("mean") or {}).get(monitor), (metrics.get("std") or {}).get(monitor)
    cards = [("task", task), (f"{monitor} (mean ± std over folds)", f"{fmt(mean)} ± {fmt(std)}"),
             (f"{monitor}, out-of-fold", fmt((metrics.get("oof") or {}).get(monitor))),
             ("folds", len(metrics.get("folds") or [])), ("wall time", duration(_wall_s(status)))]
    if metrics.get("test"):
        cards.append((f"{monitor}, test file", fmt(metrics["test"].get(monitor))))
    if metrics.get("excluded_rows"):
        cards.append(("training rows left out (data.exclude_rows)", metrics["excluded_rows"]))
    out = ['<div class="cards">' + "".join(f'<div class="card"><span class="muted">{esc(k)}</span><b>{esc(v)}</b></div>'
                                           for k, v in cards) + "</div>"]
    rows = []
    inputs = _json(run_dir / folder.INPUTS) or {}
    counts = oof["source"].value_counts().to_dict() if oof is not None and "source" in oof else {}
    for key, entry in inputs.items():
        if isinstance(entry, dict):
            n = counts.get("train") if key == "data.train_file" else counts.get("valid") if key == "data.valid_file" \
                else entry.get("rows")
            rows.append([key, entry.get("file"), fmt(entry.get("rows")) if entry.get("rows") is not None else "",
                         fmt(n) if n is not None else "", _size(entry.get("size"))])
    if rows:
        header = ["file", "given as", "rows", "scored out-of-fold", "size"]
        keep = [i for i in range(len(header)) if i < 2 or any(r[i] for r in rows)]  # no empty column (embedded data)
        out.append("<h3>Data</h3>" + table([header[i] for i in keep], [[r[i] for i in keep] for r in rows],
                                           set(range(2, len(keep)))))
    overrides = status.get("overrides") or []
    out.append("<h3>Command line</h3><p><code>textclf train " + esc(" ".join(overrides)) + "</code>"
               + ("" if overrides else ' <span class="muted">(no overrides: the defaults)</span>') + "</p>")
    if cfg is not None:
        model = OmegaConf.select(cfg, "model.name_or_path", default="?")
        out.append(f'<p class="muted">backbone <code>{esc(model)}</code>, max_length '
                   f'{esc(OmegaConf.select(cfg, "model.max_length", default="?"))}, epochs '
                   f'{esc(OmegaConf.select(cfg, "trainer.epochs", default="?"))}, run folder <code>{esc(run_dir)}</code></p>')
    return "".join(out)


def per_class(metrics: dict) -> str:
    report = metrics.get("oof_report")
    if not isinstance(report, dict):
        return '<p class="muted">No per-class report for this task.</p>'
    rows = [[name, fmt(v.get("precision")), fmt(v.get("recall")), fmt(v.get("f1-score")), fmt(int(v.get("support", 0)))]
            for name, v in report.items() if isinstance(v, dict)]
    return table(["class", "precision", "recall", "F1", "support"], rows, {1, 2, 3, 4})


def plots(run_dir: Path) -> str:
    """Every plot the run drew, embedded as base64 PNG."""
    out = []
    for name in folder.PLOT_FILES:
        path = run_dir / name
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            title = name[:-4].replace("_", " ")
            out.append(f'<figure><img alt="{esc(title)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{esc(title)}</figcaption></figure>")
    return "".join(out) or '<p class="muted">No plots (plots=false).</p>'


def mistakes(oof: pd.DataFrame, task: str, classes: list[str], sep: str, texts: dict) -> str:
    """The most confident mistakes among out-of-fold rows, grouped by the most confused class pairs (multiclass,
    binary); by class for multilabel; the largest residuals for regression."""
    def text_of(row) -> str:
        return clip(texts.get((row["source"], int(row["row"])), "")) if texts else ""

    if task == "regression":
        trues = [c for c in oof.columns if c.startswith("true_")]
        if not trues:
            return ""
        name = trues[0][len("true_"):]
        frame = oof.assign(residual=oof[f"pred_{name}"] - oof[f"true_{name}"])
        worst = frame.reindex(frame["residual"].abs().sort_values(ascending=False).index).head(RESIDUALS)
        rows = [[f"{r['source']} {int(r['row'])}", fmt(r[f"true_{name}"]), fmt(r[f"pred_{name}"]),
                 fmt(r["residual"]), text_of(r)] for _, r in worst.iterrows()]
        return "<p>The largest residuals among out-of-fold rows.</p>" + table(
            ["row", "true", "predicted", "residual", "text"], rows, {1, 2, 3}, {4})
    probs = {c: f"prob_{c}" for c in classes if f"prob_{c}" in oof}
    if task == "multilabel":
        found = []
        truth = oof["label"].fillna("").astype(str).map(lambda s: set(filter(None, s.split(sep))))
        for c, col in probs.items():
            p = oof[col].to_numpy(float)
            has = truth.map(lambda s, c=c: c in s).to_numpy()
            decided = oof["pred"].fillna("").astype(str).map(lambda s, c=c: c in s.split(sep)).to_numpy()
            for i in np.flatnonzero(has != decided):
                found.append((p[i] if decided[i] else 1 - p[i], c, "predicted, not given" if decided[i] else
                              "given, not predicted", i, p[i]))
        found.sort(key=lambda t: -t[0])
        rows = [[f"{oof.iloc[i]['source']} {int(oof.iloc[i]['row'])}", c, kind, fmt(p, 3), text_of(oof.iloc[i])]
                for _, c, kind, i, p in found[:PAIRS * PER_PAIR]]
        return ("<p>Wrong decisions on one class of a row, the most confident first.</p>"
                + table(["row", "class", "mistake", "probability", "text"], rows, {3}, {4}) if rows
                else "<p>No wrong decision among the out-of-fold rows.</p>")
    wrong = oof[oof["label"].astype(str) != oof["pred"].astype(str)]
    if wrong.empty:
        return "<p>No mistake among the out-of-fold rows.</p>"
    confidence = [float(r[probs[str(r["pred"])]]) if str(r["pred"]) in probs else float("nan")
                  for _, r in wrong.iterrows()]
    wrong = wrong.assign(confidence=confidence)
    pairs = wrong.groupby([wrong["label"].astype(str), wrong["pred"].astype(str)]).size().sort_values(ascending=False)
    out = [f"<p>{fmt(len(wrong))} of {fmt(len(oof))} out-of-fold rows are mistaken. The most confused pairs, each with "
           f"its most confident mistakes:</p>"]
    for (true, pred), n in pairs.head(PAIRS).items():
        rows = wrong[(wrong["label"].astype(str) == true) & (wrong["pred"].astype(str) == pred)]
        rows = rows.sort_values("confidence", ascending=False).head(PER_PAIR)
        out.append(f"<h3>{esc(true)} → predicted {esc(pred)}: {n} row{'s' if n != 1 else ''}</h3>")
        out.append(table(["row", "true", "predicted", "probability", "text"],
                         [[f"{r['source']} {int(r['row'])}", true, pred, fmt(r["confidence"], 3), text_of(r)]
                          for _, r in rows.iterrows()], {3}, {4}))
    return "".join(out)


def label_issues(run_dir: Path, task: str) -> str:
    path = run_dir / folder.LABEL_ISSUES
    if task == "regression":
        return '<p class="muted">Regression has no label issues: see the largest residuals above.</p>'
    if not path.is_file():
        return ('<p class="note">No label_issues.csv in this run: finding label issues needs cleanlab '
                "(<code>pip install 'textclf[cleanlab]'</code>) while the run trains.</p>")
    frame = pd.read_csv(path, keep_default_na=False, na_values=[])
    if frame.empty:
        return "<p>cleanlab flagged no training row.</p>"
    cols = [c for c in frame.columns if c != "text"] + (["text"] if "text" in frame.columns else [])  # text last
    shown = frame[cols].head(ISSUES)
    rows = [[fmt(v, 3) if isinstance(v, float) else clip(v) if c == "text" else v for c, v in zip(cols, r)]
            for r in shown.itertuples(index=False)]
    numeric = {i for i, c in enumerate(cols) if c in ("score", "row")}
    return (f"<p>{fmt(len(frame))} training rows whose given label the out-of-fold probabilities disagree with "
            f"(cleanlab), the most likely first{'; the first ' + str(ISSUES) + ' shown' if len(frame) > ISSUES else ''}. "
            f"All of them are in <code>label_issues.csv</code>: after a look, "
            f"<code>textclf train ... data.exclude_rows={esc(path)}</code> trains without them.</p>"
            + table(cols, rows, numeric, {cols.index("text")} if "text" in cols else set()))


def data_checks(run_dir: Path) -> str:
    checks = _json(run_dir / folder.DATA_CHECKS)
    if not isinstance(checks, dict):
        return '<p class="muted">No data_checks.json in this run.</p>'
    out = []
    train = checks.get("train") or {}
    dups = train.get("duplicates") or {}
    rows = [[kind, fmt(d.get("groups", 0)), fmt(d.get("rows", 0)), fmt(d.get("conflicting_groups", 0))]
            for kind, d in dups.items() if isinstance(d, dict)]
    if rows:
        out.append(f"<h3>Duplicates in the training table ({fmt(train.get('rows', 0))} rows)</h3>"
                   + table(["kind", "groups", "rows", "groups with conflicting labels"], rows, {1, 2, 3})
                   + _groups([g for d in dups.values() if isinstance(d, dict) for g in d.get("shown", [])], False,
                             sum(int(d.get("groups") or 0) for d in dups.values() if isinstance(d, dict)))
                   + ('<p class="note">With k-fold, two copies of a text can land in different folds: the model that '
                      "scores one out-of-fold was trained on its twin, so the out-of-fold score counts it as easy. "
                      "Drop the copies (data.exclude_rows) or keep them in one fold (kfold=group with data.group_col)."
                      "</p>" if any(int((d or {}).get("groups") or 0) for d in dups.values() if isinstance(d, dict))
                      else ""))
    for name, leak in (checks.get("leakage") or {}).items():
        rows = [[kind, fmt(d.get("groups", 0)), fmt(d.get("train_rows", 0)), fmt(d.get("other_rows", 0)),
                 fmt(d.get("conflicting_groups", 0))] for kind, d in leak.items() if isinstance(d, dict)]
        out.append(f"<h3>Training texts in the {esc(name)} table ({fmt(leak.get('other_rows_leaked', 0))} of its "
                   f"{fmt(leak.get('other_table_rows', 0))} rows)</h3>"
                   + table(["kind", "groups", "training rows", f"{name} rows", "conflicting labels"], rows,
                           {1, 2, 3, 4})
                   + _groups([g for d in leak.values() if isinstance(d, dict) for g in d.get("shown", [])], True,
                             sum(int(d.get("groups") or 0) for d in leak.values() if isinstance(d, dict))))
    cut = checks.get("truncation") or {}
    if cut:
        rows = [[c, fmt(v.get("rows", 0)), fmt(v.get("cut", 0)), f"{100 * float(v.get('share') or 0):.1f}%"]
                for c, v in (cut.get("per_class") or {}).items()]
        out.append(f"<h3>Texts cut to max_length={esc(cut.get('max_length'))}: {fmt(cut.get('cut', 0))} of "
                   f"{fmt(cut.get('rows', 0))} ({100 * float(cut.get('share') or 0):.1f}%)</h3>"
                   + (table(["class", "rows", "cut", "share"], rows, {1, 2, 3}) if rows else "")
                   + ('<p class="note">Over half of the texts are cut: the model never sees their ends. A larger '
                      "model.max_length, or model.truncation=head_tail or window, keeps more of each text.</p>"
                      if float(cut.get("share") or 0) > 0.5 else ""))
    for name, bal in (checks.get("class_balance") or {}).items():
        counts, shares = bal.get("counts") or {}, bal.get("shares") or {}
        out.append(f"<h3>Class balance, {esc(name)} table ({fmt(bal.get('rows', 0))} rows)</h3>"
                   + table(["class", "rows", "share"], [[c, fmt(n), f"{100 * float(shares.get(c) or 0):.1f}%"]
                                                        for c, n in counts.items()], {1, 2}))
    for name, targets in (checks.get("targets") or {}).items():
        out.append(f"<h3>Targets, {esc(name)} table</h3>" + table(
            ["target", "rows", "mean", "std", "min", "max"],
            [[t, fmt(v.get("rows", 0)), fmt(v.get("mean")), fmt(v.get("std")), fmt(v.get("min")), fmt(v.get("max"))]
             for t, v in targets.items()], {1, 2, 3, 4, 5}))
    if checks.get("normalisation"):
        out.append(f'<p class="muted">Near duplicates: equal once normalised ({esc(checks["normalisation"])}). '
                   f"Row numbers: {esc(checks.get('row_numbers', ''))}.</p>")
    return "".join(out) or '<p class="muted">No data checks in data_checks.json.</p>'


def _groups(groups: list[dict], across: bool, total: int = 0) -> str:
    """The first duplicate groups, those with conflicting labels first."""
    if not groups:
        return ""
    total = max(total, len(groups))
    groups = sorted(groups, key=lambda g: (not g.get("conflicting"), -int(g.get("size") or 0)))[:GROUPS_SHOWN]
    conflicts = any(g.get("conflicting") for g in groups)
    if across:
        rows = [[_cell(g.get("train_rows")), _cell(g.get("other_rows")),
                 _cell(g.get("train_labels")), _cell(g.get("other_labels")), clip(g.get("text", ""), GROUP_CHARS)]
                for g in groups]
        header = ["training rows", "rows there", "training labels", "labels there", "text"]
    else:
        rows = [[_cell(g.get("rows")), _cell(g.get("labels")), clip(g.get("text", ""), GROUP_CHARS)] for g in groups]
        header = ["rows", "labels", "text"]
    if conflicts:  # the column only where a group has one, so a clean table does not carry an empty column
        header = ["conflicting labels", *header]
        rows = [["yes" if g.get("conflicting") else "", *r] for g, r in zip(groups, rows)]
    more = (f'<p class="muted">{len(groups)} of the {total} groups shown'
            f'{", those with conflicting labels first" if conflicts else ", the largest first"}; '
            f"data_checks.json lists more.</p>") if total > len(groups) else ""
    return table(header, rows, set(), {len(header) - 1}) + more


def _cell(value) -> str:
    if isinstance(value, float):
        return fmt(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(clip(v, 120) for v in value[:12]) + (f" … ({len(value)})" if len(value) > 12 else "")
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_cell(v)}" for k, v in list(value.items())[:12])
    return clip(value) if isinstance(value, str) else str(value) if value is not None else ""


def _wall_s(status: dict):
    """status.json's wall time; while the run is still writing its files (report.html is written before the job's
    final status), the time since it started."""
    if status.get("wall_s") is not None:
        return status["wall_s"]
    try:
        started = datetime.datetime.fromisoformat(str(status["started"]))
    except (KeyError, TypeError, ValueError):
        return None
    return max(0.0, (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds())


def _size(n) -> str:
    if n is None:
        return ""
    n = float(n)
    return f"{n:.0f} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.1f} MiB"


def duration(s) -> str:
    """Seconds as a person reads them: 12.0 s, 4 min 07 s, 2 h 05 min ('' for none); report.md says it the same."""
    if s is None:
        return ""
    s = float(s)
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60):02d} s" if s < 3600 else \
        f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


# ----------------------------------------------------------------------------- the page
def render(run_dir: Path, texts: dict | None = None, texts_note: str = "") -> str:
    run_dir = Path(run_dir)
    metrics = _json(run_dir / folder.METRICS) or {}
    status = _json(run_dir / folder.STATUS) or {}
    labels = _json(run_dir / folder.LABELS) or {}
    cfg = OmegaConf.load(run_dir / folder.CONFIG) if (run_dir / folder.CONFIG).is_file() else None
    oof = pd.read_csv(run_dir / folder.OOF, keep_default_na=False, na_values=[""], dtype={"label": str, "pred": str}) \
        if (run_dir / folder.OOF).is_file() else None
    task = metrics.get("task") or labels.get("task", "?")
    sections = [("summary", "Summary", summary(run_dir, cfg, metrics, status, oof)),
                ("classes", "Per class (out-of-fold)", per_class(metrics)),
                ("plots", "Plots", plots(run_dir))]
    if oof is not None:
        note = f'<p class="note">{esc(texts_note)}</p>' if texts_note else ""
        sections.append(("mistakes", "Largest residuals" if task == "regression" else "Most confident mistakes",
                         note + mistakes(oof, task, list(labels.get("classes") or []), labels.get("sep", "|"),
                                         texts or {})))
    sections += [("issues", "Likely label errors", label_issues(run_dir, task)),
                 ("checks", "Data checks", data_checks(run_dir))]
    nav = "".join(f'<a href="#{k}">{esc(t)}</a>' for k, t, _ in sections)
    body = "".join(f'<section id="{k}"><h2>{esc(t)}</h2>{content}</section>' for k, t, content in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>textclf report: {esc(run_dir.name)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>textclf run report</h1><p class=\"muted\">{esc(run_dir)}</p><nav>{nav}</nav>{body}"
            f"</main></body></html>\n")


def write_html_report(run_dir: Path, texts: dict | None = None, texts_note: str = "") -> Path:
    """report.html in the run folder. texts: {(source, row): text} for the out-of-fold rows ("train" rows of
    data.train_file, "valid" rows of data.valid_file)."""
    path = Path(run_dir) / folder.REPORT_HTML
    write_text(path, render(run_dir, texts, texts_note))
    return path
