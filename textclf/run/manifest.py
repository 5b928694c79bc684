"""run.json: written last by `textclf train`, it marks a run folder as finished and holds the SHA-256 of every
file that predict, export, merge and ensemble load (the config, labels.json, every file of backbone/, each fold's
weights and outputs, the run's tables). Every load verifies the files it reads against it, so an unfinished run,
a swapped or truncated file, or a file added where the run keeps its own, is refused with the file's name and the
way out, instead of predicting without a word."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from textclf import __version__
from textclf.errors import TextclfError
from textclf.io import write_json
from textclf.run import folder
from textclf.run.folder import BACKBONE, CONFIG, LABELS, MANIFEST, OUTPUTS, RESULT, WEIGHTS

#: the run's own top-level files that run.json covers (those present): what its readers load
TOP = (CONFIG, LABELS, folder.FOLDS, folder.INPUTS, folder.OOF, folder.METRICS, folder.TEST_PREDICTIONS,
       folder.LABEL_ISSUES, folder.DATA_CHECKS, folder.TIME_PLAN,
       folder.PSEUDO_LABELS, folder.DISTILL)
#: a fold's files that run.json covers; the weights change only when the fold is trained again
FOLD = (WEIGHTS, RESULT, OUTPUTS)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def backbone_files(run_dir: Path) -> list[str]:
    """Every file under backbone/ (tokenizer and backbone config), relative to the run folder."""
    root = run_dir / BACKBONE
    return sorted(str(p.relative_to(run_dir)) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def fold_files(run_dir: Path, fold_dir: Path) -> list[str]:
    return [str((fold_dir / n).relative_to(run_dir)) for n in FOLD if (fold_dir / n).exists()]


def write_manifest(run_dir: Path) -> None:
    folds = sorted(p for p in run_dir.glob(f"{folder.FOLD_PREFIX}*") if folder.fold_index(p) is not None)
    files = [*(n for n in TOP if (run_dir / n).exists()), *backbone_files(run_dir),
             *(name for fold in folds for name in fold_files(run_dir, fold))]
    write_json(run_dir / MANIFEST, {"written_by": "textclf", "version": __version__,
                                    "files": {name: sha256(run_dir / name) for name in files}})


def read_manifest(run_dir: Path) -> dict:
    """run.json's {file: SHA-256}; a clear error when the run is unfinished or the file is not textclf's."""
    path = run_dir / MANIFEST
    if not path.exists():
        raise TextclfError(f"run_dir {str(run_dir)!r} is not a finished textclf run (no {MANIFEST}): its training "
                           f"was interrupted or it was not made by textclf; finish it with "
                           f"`textclf train resume=<that folder>`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        assert manifest.get("written_by") == "textclf" and isinstance(files, dict)
    except (OSError, ValueError, KeyError, AssertionError, TypeError):
        raise TextclfError(f"{path} is not a textclf run manifest; refusing to load this run folder") from None
    return files


def way_out(name: str) -> str:
    """What to do about a run file that fails the manifest."""
    index = folder.fold_index(Path(name).parent) if "/" in name else None
    if index is not None:
        return (f"train that fold again (textclf train ... kfold.folds=[{index}] into a new folder, then textclf "
                f"merge), or leave it out (folds=[...] with the other folds)")
    return "put the file back as textclf wrote it, or train the run again (overwrite=true)"


def verify(run_dir: Path, names: list[str], files: dict | None = None) -> None:
    """A clear error unless each named file (relative to run_dir) is the one textclf wrote, by its SHA-256 in
    run.json."""
    files = read_manifest(run_dir) if files is None else files
    for name in names:
        path = run_dir / name
        if name not in files:
            raise TextclfError(f"{path} is not listed in {MANIFEST}: textclf did not write it; refusing to load "
                               f"this run folder ({way_out(name)})")
        if not path.is_file():
            raise TextclfError(f"{path} is missing: textclf wrote it and {MANIFEST} lists it ({way_out(name)})")
        if sha256(path) != files[name]:
            raise TextclfError(f"{path} changed after textclf wrote it (its SHA-256 differs from {MANIFEST}; "
                               f"swapped, edited or truncated); refusing to load it: {way_out(name)}")


def verify_model_files(run_dir: Path, weights: list[Path]) -> None:
    """What rebuilding the run's classifier loads: config, labels, every backbone file (those run.json lists and
    any now in backbone/) and the chosen folds' weights."""
    files = read_manifest(run_dir)
    listed = [n for n in files if n.startswith(f"{BACKBONE}/")]
    if not listed:  # an older textclf's run.json: its backbone config only
        listed = [f"{BACKBONE}/config.json"]
    on_disk = backbone_files(run_dir) if any(n != f"{BACKBONE}/config.json" for n in listed) else []
    names = [CONFIG, LABELS, *dict.fromkeys([*listed, *on_disk]), *(str(w.relative_to(run_dir)) for w in weights)]
    verify(run_dir, names, files)


def verify_run_files(run_dir: Path, names) -> None:
    """The named top-level run files that exist (ensemble's tables), against run.json."""
    verify(run_dir, [n for n in names if (run_dir / n).exists()])


def fold_hashes(fold_dir: Path) -> dict:
    """SHA-256 of a finished fold's weights and outputs, kept in its result.json: a resume re-verifies them."""
    return {n: sha256(fold_dir / n) for n in (WEIGHTS, OUTPUTS) if (fold_dir / n).exists()}


def verify_fold(fold_dir: Path, hashes: dict | None) -> None:
    """A finished fold a resume keeps: its weights and outputs are the ones its training wrote (result.json)."""
    for name in (WEIGHTS, OUTPUTS):
        path = fold_dir / name
        if not path.is_file():
            if name == WEIGHTS and hashes is not None and name not in hashes:
                continue  # a fold whose weights were not kept
            raise TextclfError(f"cannot resume: {path} is missing, yet {fold_dir.name} is marked finished "
                               f"({RESULT}); delete {fold_dir} and resume again to train that fold again")
        if hashes is not None and name in hashes and sha256(path) != hashes[name]:
            raise TextclfError(f"cannot resume: {path} changed after training wrote it (its SHA-256 differs from "
                               f"{fold_dir / RESULT}; swapped, edited or truncated); delete {fold_dir} and resume "
                               f"again to train that fold again")
