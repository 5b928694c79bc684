"""A finished run, found and loaded: its config, labels and fold weights (checked against run.json), and what
rebuilding its classifier offline needs (the tokenizer and backbone config in backbone/). `textclf train` writes
what this reads; predict and export load a run only through here."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from textclf.data.tasks import LabelSpace
from textclf.errors import TextclfError
from textclf.models.classifier import build_classifier
from textclf.models.backbone import check_vocabulary, load_backbone_config, load_tokenizer
from textclf.run import folder
from textclf.run.manifest import verify_model_files


def find_folds(run_dir: Path, folds=None) -> list[Path]:
    """The run's fold weights, fold_0 first; only the folds listed when `folds` is given."""
    paths = sorted(run_dir.glob(f"{folder.FOLD_PREFIX}*/{folder.WEIGHTS}"),
                   key=lambda p: int(p.parent.name.split("_")[1]))
    if folds is not None:
        wanted = {int(f) for f in folds}
        paths = [p for p in paths if int(p.parent.name.split("_")[1]) in wanted]
    return paths


def load_run(run_dir: Path, folds=None) -> tuple[DictConfig, LabelSpace, list[Path]]:
    """The run's resolved config, labels and fold weights; a clear error for anything missing or changed."""
    if not run_dir.exists():
        raise TextclfError(f"run_dir {str(run_dir)!r} does not exist or is not a folder")
    if not run_dir.is_dir():
        raise TextclfError(f"run_dir {str(run_dir)!r} is a file, not a folder: give the run folder textclf train "
                           f"wrote (it holds config.yaml, labels.json and fold_<k>/)")
    needed = list(folder.CHECKED)
    missing = [n for n in needed if not (run_dir / n).exists()]
    if len(missing) == len(needed):
        _not_a_run_folder(run_dir)
    weights = find_folds(run_dir, folds)
    if folds is not None and not missing:
        _check_folds(run_dir, folds)
    if not weights:
        missing.append(f"{folder.FOLD_PREFIX}<k>/{folder.WEIGHTS}"
                       + (f" for folds {list(folds)}" if folds is not None else ""))
    if missing:
        raise TextclfError(f"run_dir {str(run_dir)!r} is not a finished textclf run: missing {', '.join(missing)}")
    verify_model_files(run_dir, weights)
    cfg = OmegaConf.load(run_dir / folder.CONFIG)
    labels = LabelSpace.from_dict(json.loads((run_dir / folder.LABELS).read_text(encoding="utf-8")))
    return cfg, labels, weights


def _not_a_run_folder(run_dir: Path) -> None:
    """A fold folder or a sweep folder given as run_dir: say which folder to give instead."""
    parent = run_dir.parent
    if run_dir.name.startswith(folder.FOLD_PREFIX) and (parent / folder.CONFIG).exists():
        number = run_dir.name[len(folder.FOLD_PREFIX):]
        only = f" (folds=[{number}] uses only this fold)" if number.isdigit() else ""
        raise TextclfError(f"run_dir {str(run_dir)!r} is one fold of a run: give the run folder itself, "
                           f"run_dir={parent}{only}")
    runs = sorted({p.parent for depth in ("*/", "*/*/", "*/*/*/") for p in run_dir.glob(depth + folder.MANIFEST)})
    if runs:
        shown = ", ".join(str(r.relative_to(run_dir)) for r in runs[:5]) + (" …" if len(runs) > 5 else "")
        raise TextclfError(f"run_dir {str(run_dir)!r} holds {len(runs)} run(s) (a sweep or outputs folder), not one "
                           f"run: give one of them, e.g. run_dir={runs[0]} (runs: {shown}; `textclf report "
                           f"{run_dir}` ranks them)")


def _check_folds(run_dir: Path, folds) -> None:
    have = [int(p.parent.name.split("_")[1]) for p in find_folds(run_dir)]
    wanted = [int(f) for f in folds]
    if not wanted:
        raise TextclfError(f"folds=[] picks no fold; the run has fold(s) {', '.join(map(str, have))}: pick some, or "
                           f"folds=null for all")
    absent = [f for f in wanted if f not in have]
    if absent and have:
        raise TextclfError(f"folds={wanted}: the run has no fold(s) {', '.join(map(str, absent))}; it has fold(s) "
                           f"{', '.join(map(str, have))} (folds=null uses them all)")


@dataclass
class RunModel:
    """What rebuilding a run's classifier offline needs: its config, labels, fold weights, tokenizer and backbone
    config."""

    run_dir: Path
    cfg: DictConfig
    labels: LabelSpace
    weights: list[Path]
    tokenizer: object
    backbone_config: object

    @classmethod
    def load(cls, run_dir: Path, run_cfg: DictConfig, labels: LabelSpace, weights: list[Path]) -> RunModel:
        backbone_dir, mcfg = str(run_dir / folder.BACKBONE), run_cfg.model
        tokenizer = load_tokenizer(backbone_dir, truncation=mcfg.truncation, trust_remote_code=mcfg.trust_remote_code)
        backbone_config = load_backbone_config(backbone_dir, trust_remote_code=mcfg.trust_remote_code)
        check_vocabulary(tokenizer, backbone_config, f"the run's {folder.BACKBONE}/ in {run_dir}")
        return cls(run_dir, run_cfg, labels, weights, tokenizer, backbone_config)

    def make_model(self) -> torch.nn.Module:
        """An empty classifier of the run's architecture, for one fold's weights."""
        cfg = self.cfg
        return build_classifier(cfg.model, cfg.pooling, cfg.head, self.labels.num_outputs,
                                name_or_path=str(self.run_dir / folder.BACKBONE), pretrained=False,
                                backbone_config=self.backbone_config)
