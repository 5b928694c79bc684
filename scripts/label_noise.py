"""Label noise: does label_issues.csv find flipped labels, and does training without them win back what the noise
cost?

  python scripts/label_noise.py --rows 500 --test-rows 300      # the figures in docs/benchmarks.md
  python scripts/label_noise.py --rows 1200 --test-rows 1000 --noise 0.2 --out /tmp/label_noise

A seeded stratified sample of BBC News is split into a training table and a clean test table; a share of the training
labels is flipped to another class at random (seeded). Three `textclf train` runs, each k-fold with the test file:
clean labels, noisy labels, and noisy labels with `data.exclude_rows=<noisy run>/label_issues.csv`. Printed: the
precision and recall of the flagged rows against the flipped ones, and each run's macro-F1 on the clean test table,
with the share of the noise's cost the retrain won back.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from textclf.data.tables import embedded_bbcnews


def tables(out: Path, rows: int, test_rows: int, noise: float, seed: int) -> set[int]:
    """train_clean.csv, train_noisy.csv, test.csv in out; returns the flipped rows of the training table."""
    rng = np.random.default_rng(seed)
    data = embedded_bbcnews().sample(frac=1.0, random_state=seed).reset_index(drop=True)
    # a stratified sample: each class in its share of the whole
    per_class = pd.concat([g.head(int(round((rows + test_rows) * len(g) / len(data))))
                           for _, g in data.groupby("label")])
    per_class = per_class.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    test, train = per_class.iloc[:test_rows].reset_index(drop=True), per_class.iloc[test_rows:].reset_index(drop=True)
    classes = sorted(train["label"].unique())
    flipped = rng.choice(len(train), size=int(round(noise * len(train))), replace=False)
    noisy = train.copy()
    for i in flipped:
        noisy.loc[i, "label"] = rng.choice([c for c in classes if c != train.loc[i, "label"]])
    out.mkdir(parents=True, exist_ok=True)
    train.to_csv(out / "train_clean.csv", index=False)
    noisy.to_csv(out / "train_noisy.csv", index=False)
    test.to_csv(out / "test.csv", index=False)
    return {int(i) for i in flipped}


def train(out: Path, name: str, train_file: str, args, *extra: str) -> dict:
    run_dir = out / name
    command = ["textclf", "train", "data=csv", f"data.train_file={train_file}", "data.test_file=test.csv",
               "kfold=stratified", f"kfold.n_splits={args.folds}", f"trainer.epochs={args.epochs}",
               f"model.max_length={args.max_length}", f"trainer.seed={args.seed}", "plots=true",
               f"hydra.run.dir={run_dir}", *extra]
    print("$", " ".join(command), flush=True)
    started = time.time()
    subprocess.run(command, cwd=out, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"name": name, "test_macro_f1": metrics["test"]["macro_f1"], "cv_macro_f1": metrics["score"],
            "wall_s": time.time() - started, "run_dir": run_dir}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1200, help="training rows")
    parser.add_argument("--test-rows", type=int, default=400, help="clean test rows")
    parser.add_argument("--noise", type=float, default=0.1, help="share of training labels flipped")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="label_noise", help="working folder (tables and the three run folders)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    flipped = tables(out, args.rows, args.test_rows, args.noise, args.seed)
    clean = train(out, "clean", "train_clean.csv", args)
    noisy = train(out, "noisy", "train_noisy.csv", args)
    issues = pd.read_csv(noisy["run_dir"] / "label_issues.csv")
    flagged = set(int(r) for r in issues["row"])
    hit = len(flagged & flipped)
    retrained = train(out, "noisy_excluded", "train_noisy.csv", args,
                      f"data.exclude_rows={noisy['run_dir'] / 'label_issues.csv'}")
    cost, back = clean["test_macro_f1"] - noisy["test_macro_f1"], retrained["test_macro_f1"] - noisy["test_macro_f1"]
    print()
    print(f"{args.rows} training rows, {len(flipped)} labels flipped ({args.noise:.0%}), {args.folds} folds x "
          f"{args.epochs} epochs, max_length {args.max_length}, clean test table of {args.test_rows} rows")
    print(f"label_issues.csv: {len(flagged)} rows flagged, {hit} of them flipped: precision "
          f"{hit / max(len(flagged), 1):.3f}, recall {hit / max(len(flipped), 1):.3f}")
    print()
    print("| run | test macro-F1 | CV macro-F1 | wall time |")
    print("|---|---|---|---|")
    for r in (clean, noisy, retrained):
        print(f"| {r['name']} | {r['test_macro_f1']:.4f} | {r['cv_macro_f1']:.4f} | {r['wall_s'] / 60:.1f} min |")
    if cost > 0:
        print(f"\nthe noise cost {cost:.4f} macro-F1 on the test table; the retrain won back {back:.4f} "
              f"({back / cost:.0%} of it)")
    else:
        print(f"\nthe noise cost no macro-F1 on the test table ({cost:+.4f}); the retrain changed it by {back:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
