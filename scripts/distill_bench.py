"""How much of a k-fold ensemble's lead over one fold a distilled single model keeps, and at what predict cost.

On one development table of scripts/ablate.py (the same train / test split; tweets by default), with the same
backbone and epochs throughout:
  teacher   textclf train kfold=stratified kfold.n_splits=K on train.csv, scored on test.csv (the fold ensemble)
  one fold  the teacher's fold 0 alone on test.csv (textclf predict folds=[0]): what a single model of the k-fold
            run gives
  student   textclf distill <teacher> (one model, kfold=none: it holds out 20% of train.csv to choose its best
            evaluation, as the fold did), optionally with data.unlabeled_file (--unlabeled N texts of the table that
            are in no split; 0: none)
Printed: test macro-F1 of each, the share of the ensemble's gain over one fold that the student keeps
((student - one fold) / (ensemble - one fold)), and `textclf predict` wall seconds on test.csv for the ensemble and
the student on the table's unlabelled texts (3,000 or more; process start included).

Run:
    python scripts/distill_bench.py                               # tweets, 5 folds, 3,000 unlabelled texts
    python scripts/distill_bench.py --table news --unlabeled 1000 --seeds 42,1
"""
from __future__ import annotations

import argparse
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablate import TABLES, split_table, unlabeled_table  # noqa: E402
from bench_train import hydra_value, textclf_prefix  # noqa: E402

SIZES = {"tweets": "1000,600,600", "news": "400,200,500", "kaomoji": "1000,300,600"}
MAX_LENGTH = {"tweets": 64, "news": 128, "kaomoji": 32}


def run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed: {shlex.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def predict(run_dir: Path, test: Path, out: Path, extra: list[str] = ()) -> dict:
    """`textclf predict` on the test table: its metrics, wall seconds, and the seconds its log gives the folds."""
    wall, text = run(textclf_prefix() + ["predict", f"run_dir={hydra_value(run_dir)}", f"input={hydra_value(test)}",
                                         f"output={hydra_value(out)}", *extra])
    metrics = json.loads(text[text.index("{"):text.rindex("}") + 1])
    return {"macro_f1": metrics["macro_f1"], "wall_s": wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("bench_out/ablate"), help="ablate.py's (the same splits)")
    ap.add_argument("--table", default="tweets", choices=TABLES)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", default="42")
    ap.add_argument("--unlabeled", type=int, default=3000, help="unlabelled texts for the student (0: none)")
    ap.add_argument("--alpha", type=float, default=0.5)
    args = ap.parse_args(argv)
    folder, multilabel = split_table(args.table, tuple(int(x) for x in SIZES[args.table].split(",")), args.workdir)
    folder = folder.resolve()
    train, test = folder / "train.csv", folder / "test.csv"
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        out = (args.workdir / "distill" / f"{args.table}_{seed}").resolve()
        teacher, student = out / "teacher", out / f"student_u{args.unlabeled}_a{args.alpha}"
        common = [f"trainer.epochs={args.epochs}", f"trainer.seed={seed}", "trainer.device=cpu", "plots=false",
                  "logger=none", "overwrite=true"]
        if not (teacher / "run.json").exists():
            wall, _ = run(textclf_prefix() + ["train", "data=csv", f"data.train_file={hydra_value(train)}",
                                              f"data.test_file={hydra_value(test)}", "kfold=stratified",
                                              f"kfold.n_splits={args.folds}",
                                              f"model.max_length={MAX_LENGTH[args.table]}",
                                              f"hydra.run.dir={hydra_value(teacher)}", *common])
            print(f"teacher ({args.folds} folds) trained in {wall:.0f} s", flush=True)
        extra = []
        if args.unlabeled:
            extra.append(f"data.unlabeled_file={hydra_value(unlabeled_table(args.table, folder, args.unlabeled))}")
        wall, _ = run(textclf_prefix() + ["distill", str(teacher), f"distill.alpha={args.alpha}",
                                          f"hydra.run.dir={hydra_value(student)}", *extra, *common])
        print(f"student trained in {wall:.0f} s", flush=True)
        ensemble = predict(teacher, test, out / "ensemble.csv")
        one = predict(teacher, test, out / "fold0.csv", ["folds=[0]"])
        single = predict(student, test, out / "student.csv")
        # predict cost on a larger table (the unlabelled texts, or test.csv): the ensemble's and the student's
        timing_table = unlabeled_table(args.table, folder, max(args.unlabeled, 3000))
        for name, run_dir in (("ensemble", teacher), ("student", student)):
            wall, _ = run(textclf_prefix() + ["predict", f"run_dir={hydra_value(run_dir)}",
                                              f"input={hydra_value(timing_table)}",
                                              f"output={hydra_value(out / f'timing_{name}.csv')}"])
            (ensemble if name == "ensemble" else single)["predict_table_s"] = wall
        gain = ensemble["macro_f1"] - one["macro_f1"]
        kept = (single["macro_f1"] - one["macro_f1"]) / gain if gain > 0 else float("nan")
        rows.append({"seed": seed, "ensemble": ensemble, "one_fold": one, "student": single, "kept": kept})
        print(f"seed {seed}: test macro-F1 ensemble {100 * ensemble['macro_f1']:.2f}, one fold "
              f"{100 * one['macro_f1']:.2f}, student {100 * single['macro_f1']:.2f}: the student keeps "
              f"{100 * kept:.0f}% of the ensemble's gain; textclf predict on {timing_table.name}: "
              f"{ensemble['predict_table_s']:.1f} s ({args.folds} folds) vs {single['predict_table_s']:.1f} s "
              f"(student)", flush=True)
        (out / f"result_u{args.unlabeled}_a{args.alpha}.json").write_text(json.dumps(rows[-1], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
