"""A run's exported folds (`textclf export`) as ONNX Runtime sessions behind the FoldModel interface, and the
checks that an export folder is finished and was made from the run's very fold weights. onnx, onnxruntime and
onnxscript are an optional extra: they are imported where used, and `require` names the extra when one is missing."""
from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from textclf.data.tables import resolve_path
from textclf.engine.launch import cpu_cores
from textclf.errors import TextclfError
from textclf.inference.ensemble import FoldModel
from textclf.io import bar_off
from textclf.run import folder
from textclf.run.manifest import sha256

log = logging.getLogger(__name__)

EXTRA = "pip install 'textclf[onnx]'"
#: the export folder's manifest, written last: a folder with it is a finished export
EXPORT_MANIFEST = "export.json"


def require(*modules: str, what: str) -> list:
    """The optional modules `what` needs, or one message naming the extra that installs them."""
    missing, found = [], []
    for name in modules:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise TextclfError(f"{what} needs {', '.join(missing)} (not installed): {EXTRA}")
    return found


def session(path: Path, device: str = "cpu"):
    """An ONNX Runtime session over one graph: CUDA where asked for and available, else the CPU.

    Session options: every graph optimization ONNX Runtime has (applied at load, for this machine), one thread per
    core this process may run on (its CPU affinity: taskset, a container's or SLURM's limit) inside each operator,
    and the operators run one after another (a BERT graph is a chain: threads between operators only contend).
    Padding is kept low by the caller: predict batches rows of similar length (data.tables.sorted_batches)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # ONNX Runtime's own warnings about unused initializers are noise here
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = cpu_cores()
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    elif device.startswith("cuda"):
        raise TextclfError(f"device={device} with backend=onnx needs ONNX Runtime's CUDA build "
                           f"(pip install onnxruntime-gpu); installed: {', '.join(ort.get_available_providers())}")
    return ort.InferenceSession(str(path), options, providers=providers)


def check_export(run_dir: Path, weights: list[Path], export_dir: str | None) -> Path:
    """The export folder predict backend=onnx runs (export_dir, default <run_dir>/export): ONNX Runtime installed,
    the folder a finished export made from these very fold weights (their SHA-256 in run.json)."""
    require("onnxruntime", what="predict backend=onnx")
    export_path = resolve_path(str(export_dir)) if export_dir else run_dir / "export"
    where = f"export_dir {str(export_dir or export_path)!r}"
    again = f"textclf export run_dir={run_dir}" + (f" output={export_path}" if export_dir else "")
    if not export_path.is_dir():
        default = "" if export_dir else " (the default: <run_dir>/export)"
        raise TextclfError(f"{where} does not exist{default}: export the run first ({again}), or give "
                           f"export_dir=<the folder textclf export wrote>")
    manifest = read_manifest(export_path, where, again)
    exported = {f["fold"]: f for f in manifest["folds"]}
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    trained = json.loads((run_dir / folder.MANIFEST).read_text(encoding="utf-8"))["files"]
    for path in weights:
        fold = path.parent.name
        if fold not in exported:
            raise TextclfError(f"{where} holds {', '.join(exported) or 'no fold'}, not {fold}: export it "
                               f"({again}), or pick exported folds with folds=[...]")
        if exported[fold]["weights_sha256"] != trained.get(str(path.relative_to(run_dir))):
            raise TextclfError(f"{where}: its {fold} was exported from other weights than the run's {fold} now "
                               f"holds (the run was retrained or the export comes from another run): export again "
                               f"({again})")
        model = exported[fold]["file"]
        if not (export_path / model).is_file():
            raise TextclfError(f"{where}: {model} is missing; export again ({again})")
        if model not in files or sha256(export_path / model) != files[model]:
            raise TextclfError(f"{where}: {model} changed after textclf exported it (its SHA-256 differs from "
                               f"{EXPORT_MANIFEST}; replaced, edited or truncated): export again ({again})")
    return export_path


def read_manifest(export_dir: Path, where: str, again: str) -> dict:
    """The export folder's export.json; a clear error when the export is unfinished or not textclf's."""
    path = export_dir / EXPORT_MANIFEST
    if not path.exists():
        raise TextclfError(f"{where} is not a finished textclf export (no {EXPORT_MANIFEST}): the export was "
                           f"interrupted or the folder holds something else; export again ({again})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        assert manifest.get("written_by") == "textclf" and isinstance(manifest.get("folds"), list)
    except (ValueError, AssertionError):
        raise TextclfError(f"{path} is not a textclf export manifest; export again ({again})") from None
    return manifest


@dataclass
class OnnxFold:
    """One exported fold behind the FoldModel interface: loader batches in, (rows, logits) out."""

    session: object
    names: list

    def __call__(self, loader, desc: str | None):
        rows, outs = [], []
        for batch in tqdm(loader, desc=desc, unit="batch", leave=False, **bar_off(desc is None)):
            ids = batch["input_ids"].numpy()
            feed = {n: batch[n].numpy() if n in batch else np.zeros_like(ids) for n in self.names}
            outs.append(self.session.run(["logits"], feed)[0].astype(np.float32, copy=False))
            rows.append(batch["rows"].numpy())
        if not outs:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(rows), np.concatenate(outs)


def onnx_folds(export_dir: Path, weights: list[Path], device: str) -> list[FoldModel]:
    """The folds of `weights` as ONNX Runtime sessions over the export's models (a missing token_type_ids input,
    as for single BERT texts, is fed as zeros, which is what the backbone assumes without it)."""
    manifest = read_manifest(export_dir, f"export_dir {str(export_dir)!r}", "textclf export")
    exported = {f["fold"]: f for f in manifest["folds"]}
    folds = []
    for path in weights:
        entry = exported[path.parent.name]
        sess = session(export_dir / entry["file"], device)
        folds.append(FoldModel(entry["fold"], OnnxFold(sess, [i.name for i in sess.get_inputs()])))
    log.info("backend=onnx: %d %s fold model(s) from %s", len(folds), manifest.get("quantize") or "fp32", export_dir)
    return folds
