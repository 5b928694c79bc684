"""Benchmark the training step time of each hook relative to plain training, in one run.

What it measures: the wall time of one optimizer step (forward, backward, the hook's extra work, the
optimizer step) through textclf's own Trainer, for
    plain | ema | fgm | pgd (K steps) | awp | rdrop | all (fgm + ema + rdrop)
on the default backbone (embedded MiniLM-L6), with the same fixed batches of demo articles for every
configuration (batch 16, max_length 128: every batch is full width, so shapes never change). Each
configuration gets its own model built exactly as `textclf train <group>=<option>` builds it (Hydra
compose of the shipped config). The configurations run round-robin, `--steps` optimizer steps each per
round (order reversed every other round), so slow drift of the machine hits all of them alike. Every step
is timed on its own; a configuration's figure is the median of its step times (the minimum is printed
too: on a shared machine interference only ever adds time), and its ratio is that over plain's.

Targets (issue 4): ema <= 1.05x, fgm <= 2.1x, rdrop <= 2.1x, pgd with K steps <= (K+1) x 1.05.

Run:
    python scripts/bench_hooks.py                       # default: 4 rounds x 4 steps, batch 16, max_length 128
    python scripts/bench_hooks.py --rounds 5 --steps 10 --batch-size 32
    python scripts/bench_hooks.py --only plain,ema      # a subset
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # per-round progress lines instead of a bar per step

CONFIGS = {
    "plain": [],
    "ema": ["ema=default"],
    "fgm": ["adversarial=fgm"],
    "pgd": ["adversarial=pgd"],
    "awp": ["adversarial=awp", "adversarial.start_epoch=0"],  # active from the first step
    "rdrop": ["rdrop=default"],
    "all": ["adversarial=fgm", "ema=default", "rdrop=default"],
    # reference, not a hook: plain training on batches twice as large, the work R-Drop's doubled batch does
    "plain_2x": [],
}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def build(cfg, batches, labels_n: int, name_or_path, backbone_config, device):
    """A Trainer exactly as train.py assembles one, with its own model, optimizer, hooks and objective."""
    import torch
    from hydra.utils import instantiate

    from textclf.engine.hooks import build_hooks
    from textclf.engine.trainer import FitSettings, Trainer
    from textclf.models.losses import CrossEntropyLoss
    from textclf.models.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier(cfg.model, cfg.pooling, cfg.head, labels_n, name_or_path=name_or_path,
                             backbone_config=backbone_config).to(device)
    optimizer = instantiate(cfg.optimizer)(model)
    # a long schedule: the learning rate stays near its peak over the few steps measured
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=100_000)
    hooks = build_hooks(cfg.get("adversarial"), cfg.get("ema"))
    objective = instantiate(cfg.rdrop, task="multiclass", single_logit=False) if cfg.get("rdrop") else None
    settings = FitSettings(device, 1, "macro_f1", precision=str(cfg.trainer.precision),
                           max_grad_norm=cfg.trainer.max_grad_norm, desc="bench")
    # no evaluator: the steps are timed one by one, never evaluated
    trainer = Trainer(model, CrossEntropyLoss().to(device), optimizer, scheduler, settings, None, hooks=hooks,
                      objective=objective)
    for h in trainer.hooks:
        h.on_fit_start(trainer)
    return trainer


def run_steps(trainer, batches) -> list[float]:
    """Seconds of each optimizer step (one per batch), each through the Trainer's own loop."""
    import torch

    times = []
    for batch in batches:
        t0 = time.perf_counter()
        for _ in trainer._train_epoch([batch], 0):  # one batch, one optimizer step
            trainer.meter.flush()  # the loss read back, as the loop does at an epoch's last step
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per configuration per round")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(CONFIGS))
    args = ap.parse_args()

    import numpy as np
    import torch

    from textclf.data.tables import Collator, load_splits, tokenize
    from textclf.engine.trainer import resolve_device
    from textclf.models.backbone import load_backbone_config, load_tokenizer, resolve_name_or_path

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in (args.only.split(",") if args.only else CONFIGS) if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    if "plain" not in names:
        names.insert(0, "plain")
    common = [f"model.max_length={args.max_length}", f"trainer.precision={args.precision}",
              f"trainer.device={args.device}"]
    cfgs = {n: compose(common + CONFIGS[n]) for n in names}

    base = cfgs["plain"]
    device = resolve_device(str(base.trainer.device))
    name_or_path = resolve_name_or_path(base.model.name_or_path)
    tokenizer = load_tokenizer(name_or_path)
    backbone_config = load_backbone_config(name_or_path)
    split = load_splits(base.data)["train"]
    classes = sorted(set(split.labels))
    y = np.array([classes.index(v) for v in split.labels], dtype=np.int64)
    n_rows = args.batch_size * args.steps
    rng = np.random.default_rng(0)
    rows = rng.choice(len(split.texts), size=2 * n_rows, replace=False)
    encoded = tokenize(tokenizer, [split.texts[i] for i in rows], None, args.max_length)
    collate = Collator.for_tokenizer(tokenizer, encoded, y[rows])
    batches = [collate(list(range(i, i + args.batch_size))) for i in range(0, n_rows, args.batch_size)]
    double = [collate(list(range(i, i + 2 * args.batch_size))) for i in range(0, 2 * n_rows, 2 * args.batch_size)]
    widths = sorted({b["input_ids"].shape[1] for b in batches + double})

    print(f"device {device}, torch threads {torch.get_num_threads()}, precision {args.precision}, "
          f"backbone {name_or_path}")
    print(f"{len(batches)} batches of {args.batch_size} demo articles, widths {widths}; "
          f"{args.rounds} rounds x {args.steps} steps per configuration, round-robin")
    trainers = {n: build(cfgs[n], batches, len(classes), name_or_path, backbone_config, device) for n in names}
    batches_of = {n: double if n == "plain_2x" else batches for n in names}
    for n in names:  # warm-up: allocator, kernels, optimizer state
        run_steps(trainers[n], batches_of[n][:1])
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else list(reversed(names))  # alternate the order between rounds
        for n in order:
            times[n].extend(run_steps(trainers[n], batches_of[n]))
        print(f"round {r + 1}/{args.rounds} (median s/step so far): "
              + "  ".join(f"{n} {statistics.median(times[n]):.3f}" for n in names), flush=True)

    plain, plain_min = statistics.median(times["plain"]), min(times["plain"])
    k = int(cfgs["pgd"].adversarial.steps) if "pgd" in cfgs else 0
    targets = {"ema": 1.05, "fgm": 2.1, "rdrop": 2.1, "pgd": (k + 1) * 1.05}
    print()
    print(f"{len(times['plain'])} timed steps per configuration")
    print(f"{'config':<8} {'median s':>9} {'x plain':>8} {'min s':>7} {'x plain':>8} {'target':>9}  verdict  overrides")
    failed = 0
    for n in names:
        med, low = statistics.median(times[n]), min(times[n])
        ratio = med / plain
        target = targets.get(n)
        verdict = "" if target is None else ("ok" if ratio <= target else "OVER")
        failed += verdict == "OVER"
        print(f"{n:<8} {med:>9.3f} {ratio:>7.2f}x {low:>7.3f} {low / plain_min:>7.2f}x "
              f"{('<= %.2fx' % target) if target else '':>9}  {verdict:<7}  {' '.join(CONFIGS[n]) or '-'}")
    if k:
        print(f"(pgd runs K={k} adversarial steps: target (K+1) x 1.05)")
    if "plain_2x" in names:
        print(f"(plain_2x: plain training on batches of {2 * args.batch_size}, the compute of one R-Drop step)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
