"""Benchmark data-parallel training: `textclf train` in 1 process and in N processes (trainer.devices=N) on the
same data, the same global batch and the same number of optimizer steps.

Prints, per process count: training samples/s (every process's rows, from metrics.json, the loop's own time),
mean step time, the whole command's wall time, macro-F1, and the scaling efficiency
(samples/s at N) / (N x samples/s at 1). The global batch is kept equal (N x batch/N), so 1 and N processes
train the same steps; on a CPU the N processes share the cores, so the figure there is about correctness and
overhead, not speed; on N GPUs it is the real scaling.

    python scripts/bench_ddp.py                         # embedded default (MiniLM-L6, BBC News), 2 processes, CPU
    python scripts/bench_ddp.py --devices 4 --device cuda --batch 64 --epochs 1
    python scripts/bench_ddp.py --extra trainer.limit_train_batches=20
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(n: int, args, workdir: Path) -> dict:
    run_dir = workdir / f"p{n}"
    cmd = [sys.executable, "-m", "textclf", "train", f"trainer.devices={n}", f"trainer.device={args.device}",
           f"trainer.batch_size={args.batch // n}", f"trainer.epochs={args.epochs}", "plots=false",
           "trainer.log_every_steps=5", f"hydra.run.dir={run_dir}", *args.extra]
    env = dict(os.environ, TQDM_DISABLE="1", HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fold = metrics["folds"][0]
    steps = fold["best_step"] if args.epochs == 1 else None
    rate = fold["train_samples_per_s"]
    return {"processes": n, "samples_per_s": rate, "step_s": args.batch / rate, "wall_s": wall,
            "macro_f1": fold.get("macro_f1"), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16, help="global batch (split over the processes)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for both runs")
    args = parser.parse_args()
    if args.batch % args.devices:
        sys.exit("--batch must be a multiple of --devices (the same global batch in both runs)")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(1, args, Path(tmp)), run(args.devices, args, Path(tmp))]
    base = rows[0]["samples_per_s"]
    print(f"global batch {args.batch}, device {args.device}, {args.epochs} epoch(s), overrides: {' '.join(args.extra)}")
    print(f"{'processes':>9}  {'samples/s':>9}  {'step s':>7}  {'wall s':>7}  {'macro-F1':>8}  efficiency")
    for r in rows:
        eff = r["samples_per_s"] / (r["processes"] * base)
        print(f"{r['processes']:>9}  {r['samples_per_s']:9.1f}  {r['step_s']:7.3f}  {r['wall_s']:7.1f}  "
              f"{r['macro_f1']:8.4f}  {eff:9.2f}")


if __name__ == "__main__":
    main()
