"""run.json: written last by `textclf train`, it marks a run folder as finished and holds the SHA-256 of every
file `predict` loads, so predict refuses an unfinished run or files that were swapped after training."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from textclf import __version__
from textclf.errors import TextclfError
from textclf.io import write_json
from textclf.run.folder import CHECKED, MANIFEST, WEIGHTS


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(run_dir: Path) -> None:
    files = [*CHECKED, *sorted(str(p.relative_to(run_dir)) for p in run_dir.glob(f"fold_*/{WEIGHTS}"))]
    write_json(run_dir / MANIFEST, {"written_by": "textclf", "version": __version__,
                                    "files": {name: sha256(run_dir / name) for name in files
                                              if (run_dir / name).exists()}})


def verify(run_dir: Path, weights: list[Path]) -> None:
    """A clear error unless run_dir is a finished textclf run whose files are the ones training wrote."""
    path = run_dir / MANIFEST
    if not path.exists():
        raise TextclfError(f"run_dir {str(run_dir)!r} is not a finished textclf run (no {MANIFEST}): its training "
                           f"was interrupted or it was not made by textclf; finish it with "
                           f"`textclf train resume=<that folder>`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        assert manifest.get("written_by") == "textclf" and isinstance(files, dict)
    except (ValueError, KeyError, AssertionError):
        raise TextclfError(f"{path} is not a textclf run manifest; refusing to load this run folder") from None
    for name in [*CHECKED, *(str(w.relative_to(run_dir)) for w in weights)]:
        if name not in files:
            raise TextclfError(f"{run_dir / name} is not listed in {MANIFEST}: textclf did not write it; "
                               f"refusing to load this run folder")
        if sha256(run_dir / name) != files[name]:
            raise TextclfError(f"{run_dir / name} changed after textclf wrote it (its SHA-256 differs from "
                               f"{MANIFEST}); refusing to load it")
