"""`textclf merge`: the folds of one k-fold run, trained by separate jobs, assembled into one finished run.

  textclf train -m kfold=stratified kfold.n_splits=3 kfold.folds=[0],[1],[2]     three jobs, one fold each
  textclf merge multirun/2026-12-02/12-00-00 --output runs/cv                    one 3-fold run

Each job (a multirun job folder, a SLURM array task, a run folder of its own) trained some folds of the same
split: the same settings and data but kfold.folds. merge checks that, copies every fold into the output folder
with the shared run files, and finishes the run there exactly as one sequential run would have: oof.csv,
metrics.json, test predictions (the folds ensembled), plots, run.json. It reads the data files again (for the
labels and the test file), from the paths in the runs' config: run it from the folder the jobs were launched
from. Each job trains into its own folder, so jobs run at the same time (a folder takes one process at a time).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf, open_dict

from textclf.commands.train import TrainRun
from textclf.errors import TextclfError
from textclf.run import folder
from textclf.run.manifest import backbone_files, fold_files, sha256, verify

log = logging.getLogger("textclf.commands.merge")


def fold_jobs(paths: list[Path]) -> list[Path]:
    """The run folders behind the arguments: run folders themselves, or sweep folders holding them."""
    runs: list[Path] = []
    for p in paths:
        if not p.is_dir():
            raise TextclfError(f"{p}: not a folder (give run folders, or the sweep folder holding them)")
        if (p / folder.CONFIG).exists():
            runs.append(p)
            continue
        found = sorted({c.parent for c in p.glob(f"*/{folder.CONFIG}")})
        if not found:
            raise TextclfError(f"{p} holds no textclf run (no config.yaml in it or in its subfolders)")
        runs += found
    return list(dict.fromkeys(runs))


def comparable(run: Path) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(run / folder.CONFIG), resolve=True)
    cfg["kfold"].pop("folds", None)  # a user's own kfold option may not have the key
    for key in ("resume", "overwrite", "logger", "plots"):
        cfg.pop(key, None)
    return cfg


def collect(runs: list[Path]) -> dict[int, Path]:
    """fold index -> the run folder holding it finished; every run a finished job (run.json) of the same split,
    settings and data, whose files are the ones its training wrote."""
    for run in runs:
        if not (run / folder.MANIFEST).exists():
            raise TextclfError(f"{run} is not a finished fold job (no {folder.MANIFEST}): finish it first "
                               f"(textclf train resume={run}); merge joins finished folds only and never trains")
    first = runs[0]
    base, split = comparable(first), _read(first / folder.FOLDS)
    folds: dict[int, Path] = {}
    for run in runs:
        if comparable(run) != base:
            raise TextclfError(f"{run} was trained with other settings than {first} (only kfold.folds may differ "
                               f"between the jobs of one run)")
        if _read(run / folder.FOLDS) != split or _read(run / folder.INPUTS) != _read(first / folder.INPUTS):
            raise TextclfError(f"{run} validates on other splits or data than {first} (folds.csv / inputs.json)")
        for result in sorted(run.glob(f"{folder.FOLD_PREFIX}*/{folder.RESULT}")):
            index = folder.fold_index(result.parent)
            if index is None:
                continue
            if index in folds and folds[index] != run:
                log.warning("fold %d is in %s and %s: taking the first", index, folds[index], run)
                continue
            folds[index] = run
    for run in dict.fromkeys(folds.values()):  # what merge copies, as each job's training wrote it
        shared = [n for n in (folder.CONFIG, folder.FOLDS, folder.INPUTS) if (run / n).exists()]
        verify(run, [*shared, *backbone_files(run),
                     *(name for index, r in folds.items() if r == run
                       for name in fold_files(run, folder.fold_dir(run, index)))])
    check_data(first)
    wanted = expected_folds(first)
    missing = [f for f in wanted if f not in folds]
    if missing:
        raise TextclfError(f"fold(s) {missing} of {len(wanted)} are not finished in any of the given runs "
                           f"({', '.join(map(str, runs))}); train them (kfold.folds={missing}) and merge again")
    return {f: folds[f] for f in wanted}


def check_data(run: Path) -> None:
    """The data files the jobs read (inputs.json) hold the same bytes now: merge scores the out-of-fold outputs
    against the labels it reads again, and never trains, so other data is refused before anything is copied."""
    try:
        inputs = json.loads((run / folder.INPUTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # an older textclf's job: the run's own check compares what it can
    for key, entry in inputs.items():
        path = Path(str(entry.get("path", ""))) if isinstance(entry, dict) else None
        if path is None or "sha256" not in entry or not path.is_file():
            continue
        if sha256(path) != entry["sha256"]:
            raise TextclfError(f"cannot merge: {key} {entry.get('file')!r} ({path}) changed since the fold jobs read "
                               f"it; merge joins finished folds and never trains: put the data back, or train the "
                               f"folds again on the new data")


def expected_folds(run: Path) -> list[int]:
    frame = pd.read_csv(run / folder.FOLDS)
    cols = [c for c in frame.columns if c.startswith("fold")]
    return sorted({int(v) for c in cols for v in frame[c] if int(v) >= 0})


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def assemble_into(output: Path, folds: dict[int, Path]) -> None:
    first = next(iter(folds.values()))
    if output.resolve() not in {r.resolve() for r in folds.values()}:
        folder.refuse_foreign(output, "--output", "give an empty or new --output folder")
    if (output / folder.MANIFEST).exists() and set(folds.values()) != {output}:
        raise TextclfError(f"{output} holds a finished run already; give another --output folder")
    output.mkdir(parents=True, exist_ok=True)
    folder.adopt(output)
    folder.claim(output, [f"{folder.fold_dir(output, i).name}/" for i in folds])
    for name in folder.SHARED:
        src, dst = first / name, output / name
        if src.resolve() == dst.resolve() or not src.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    for index, run in folds.items():
        src, dst = folder.fold_dir(run, index), folder.fold_dir(output, index)
        if src.resolve() != dst.resolve():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(folder.CHECKPOINT), dirs_exist_ok=True)
    cfg = OmegaConf.load(output / folder.CONFIG)
    with open_dict(cfg):
        cfg.kfold.folds = None  # the merged run is the whole split, as a sequential run writes it
    (output / folder.CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    (output / folder.MANIFEST).unlink(missing_ok=True)
    TrainRun(cfg, output, merging=True).run()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="textclf merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders of the fold jobs, or the sweep folder holding them")
    parser.add_argument("--output", "-o", help="the merged run folder (default: the single run folder given)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        runs = fold_jobs([Path(r) for r in args.runs])
        if args.output is None and len(runs) > 1:
            raise TextclfError(f"{len(runs)} runs to merge: say where the merged run goes (--output <folder>)")
        output = Path(args.output) if args.output else runs[0]
        folds = collect(runs)
        with folder.hold(output):  # taken once, before the copies: TrainRun finds it held
            assemble_into(output, folds)
    except TextclfError as e:
        print(f"textclf: error: {e}", file=sys.stderr)
        return 2
    metrics = json.loads((output / folder.METRICS).read_text(encoding="utf-8"))
    print(f"merged {len(folds)} folds from {len(runs)} run(s) into {output}: {metrics['monitor']} = "
          f"{metrics['score']:.4f} (mean over folds), out-of-fold {metrics['oof'].get(metrics['monitor'], float('nan')):.4f}")
    return 0
