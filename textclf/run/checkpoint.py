"""Resumable folds: the in-flight state of a fold, saved every N optimizer steps and at each epoch's end.

A checkpoint is two files named by the optimizer step (the live weights as safetensors, everything else as a
plain-tensor torch file read back with weights_only=True) and `latest.json`, written last, naming them. Each
file is written atomically, so a crash at any moment leaves `latest.json` pointing at a complete older
checkpoint; files of an unfinished newer one are ignored and removed by the next save.

The state is what makes a resumed fold equal an uninterrupted one: optimizer, scheduler, gradient scaler,
hook state (EMA shadow), the epoch and batch position (the epoch's batch order is a function of seed and
epoch), the loss accumulators, the best epoch so far with its validation logits, and every RNG.
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from textclf.errors import TextclfError
from textclf.io import atomic_path, save_weights, write_json
from textclf.run import folder
from textclf.run.folder import CONFIG, FOLD_FILES, FOLDS, MANIFEST, RUN_OUTPUTS
from textclf.run.manifest import fold_hashes, verify_fold, sha256

log = logging.getLogger(__name__)

#: tests set this to a fault point's name (see fault_point calls) to SIGKILL the process right there
KILL_ENV = "TEXTCLF_KILL_AT"
#: tests set this to `<SIGNALS>@<fault point>` (TERM@step:0:5, INT,INT@eval:0:6, STOP@step:0:2) to send the process
#: those signals, in order, right there, as a user or a cluster scheduler would
SIGNAL_ENV = "TEXTCLF_SIGNAL_AT"


def fault_point(name: str) -> None:
    """Crash-test hook: `TEXTCLF_KILL_AT=<name>` kills the process here, as a pre-emption would;
    `TEXTCLF_SIGNAL_AT=<signals>@<name>` sends it those signals here."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    names, _, point = os.environ.get(SIGNAL_ENV, "").partition("@")
    if point == name:
        for sig in names.split(","):
            os.kill(os.getpid(), getattr(signal, "SIG" + sig.strip().upper()))


class FoldCheckpoint:
    def __init__(self, folder: Path, every_steps: int = 0, tag: str = "0"):
        self.folder, self.every_steps, self.tag = Path(folder), int(every_steps or 0), str(tag)

    def due(self, global_step: int) -> bool:
        return self.every_steps > 0 and global_step % self.every_steps == 0

    def save(self, model: torch.nn.Module, state: dict) -> None:
        step = int(state["global_step"])
        name = f"step-{step:09d}"
        self.folder.mkdir(parents=True, exist_ok=True)
        save_weights(self.folder / f"{name}.safetensors", model.state_dict())
        fault_point(f"checkpoint_write:{self.tag}:{step}")
        with atomic_path(self.folder / f"{name}.pt") as tmp:
            torch.save(plain(state), tmp)
        write_json(self.folder / "latest.json", {"name": name, "global_step": step, "epoch": state["epoch"],
                                                  "batch_index": state["batch_index"]})
        for path in self.folder.iterdir():  # older checkpoints and leftovers of interrupted writes
            if path.name != "latest.json" and not path.name.startswith(name + "."):
                path.unlink(missing_ok=True)

    def load(self) -> tuple[dict, dict] | None:
        """(model state, trainer state) of the latest complete checkpoint, or None."""
        latest = self.folder / "latest.json"
        if not latest.exists():
            return None
        from safetensors.torch import load_file

        name = "latest.json"
        try:
            name = str(json.loads(latest.read_text(encoding="utf-8"))["name"])
            weights = load_file(str(self.folder / f"{name}.safetensors"))
            state = torch.load(self.folder / f"{name}.pt", map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: safetensors, torch and json raise many kinds
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise TextclfError(f"cannot resume from {self.folder}: checkpoint {name} is unreadable ({reason}); "
                               f"delete that folder to restart this fold from scratch") from None
        return weights, state

    def clear(self) -> None:
        if self.folder.exists():
            for path in self.folder.iterdir():
                path.unlink(missing_ok=True)
            self.folder.rmdir()


def plain(obj):
    """Only what torch.load(weights_only=True) reads back: tensors, numbers, strings, lists, dicts."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    return obj


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- resuming a run folder
#: settings that may change between an interrupted run and its resumption without changing its results
#: (a key or any key under it)
RESUME_FREE_KEYS = ("resume", "overwrite", "trainer.checkpoint_every_steps", "trainer.log_every_steps",
                    "trainer.num_workers", "logger", "plots")


def prepare_run_dir(run_dir: Path, cfg, inputs: dict | None = None, *, resume: bool = False,
                    overwrite: bool = False) -> str:
    """How a run starts in run_dir, from what the folder holds; returns

      "finished"  a finished run (run.json) with these settings and data files: nothing to train
      "resume"    an unfinished run with these settings and data files: its finished folds are kept, the fold in
                  flight goes on from its last checkpoint
      "fresh"     nothing to go on from (an earlier run's outputs are removed first, see below)

    A finished run with other settings or data is refused and kept as it is, unless overwrite=true. An unfinished
    one starts over (its outputs removed, with a warning naming what differs), or with resume=true is refused.
    overwrite=true replaces whatever run the folder holds. inputs: input_fingerprints() of this run's data."""
    from omegaconf import OmegaConf

    if resume and overwrite:
        raise TextclfError("resume=true and overwrite=true contradict each other: resume continues the run in the "
                           "folder, overwrite replaces it; drop one of them")
    saved, finished = run_dir / CONFIG, (run_dir / MANIFEST).exists()
    new = OmegaConf.to_container(cfg, resolve=True)
    old = OmegaConf.to_container(OmegaConf.load(saved), resolve=True) if saved.exists() else None
    if old is None:
        if finished and not overwrite:
            raise TextclfError(f"{run_dir} holds a finished run (run.json) but not its config.yaml, so its settings "
                               f"are unknown; it is kept as it is. To replace it: overwrite=true; to keep it: train "
                               f"into another folder (hydra.run.dir=<new folder>)")
        if resume:
            raise TextclfError(f"resume=true but {run_dir} holds no run to resume (no config.yaml); point "
                               f"hydra.run.dir (or resume=<folder>) at the folder of the interrupted run")
        if finished:  # overwrite=true
            keep_init_source(run_dir, cfg, "overwrite=true")
            removed = remove_run_outputs(run_dir, [new], keep_folds_csv=False)
            log.warning("overwrite=true: replacing the run in %s (%d of its outputs removed)", run_dir, len(removed))
        return "fresh"
    changed = [k for k in config_differences(old, new)
               if not any(k == free or k.startswith(free + ".") for free in RESUME_FREE_KEYS)]
    data = data_changes(run_dir, inputs)
    differences = [*(f"{k}: {_value(old, k)} -> {_value(new, k)}" for k in changed[:8]), *data]
    keep_folds = not data and not any(k.startswith(("kfold.", "data.")) and k != "kfold.folds" or k == "trainer.seed"
                                      for k in changed)
    if overwrite:
        keep_init_source(run_dir, cfg, "overwrite=true")
        removed = remove_run_outputs(run_dir, [old, new], keep_folds_csv=keep_folds)
        log.warning("overwrite=true: replacing the %s run in %s (%d of its outputs removed%s; other files stay)",
                    "finished" if finished else "unfinished", run_dir, len(removed),
                    ", folds.csv kept" if keep_folds and (run_dir / FOLDS).exists() else "")
        return "fresh"
    if finished:
        if differences:
            raise TextclfError(f"{run_dir} holds a finished run made with other settings or data "
                               f"({'; '.join(differences)}); it is kept as it is. To replace it: overwrite=true; to "
                               f"keep it: train into another folder (hydra.run.dir=<new folder>)")
        return "finished"
    if not differences:
        done = sorted(p.parent.name for p in run_dir.glob(f"{folder.FOLD_PREFIX}*/{folder.RESULT}"))
        log.info("resuming the run in %s (finished folds: %s)", run_dir, ", ".join(done) or "none")
        return "resume"
    if resume:
        raise TextclfError(f"cannot resume {run_dir}: it was started with other settings or data "
                           f"({'; '.join(differences)}); resume with the same settings and data, or use another run "
                           f"folder")
    keep_init_source(run_dir, cfg, "starting the unfinished run over")
    log.warning("run folder %s holds an earlier run with other settings or data (%s): starting over", run_dir,
                "; ".join(differences))
    remove_run_outputs(run_dir, [old, new], keep_folds_csv=keep_folds)
    return "fresh"


def keep_init_source(run_dir: Path, cfg, what: str) -> None:
    """model.init_from must never name weights inside what replacing the run in run_dir removes: they would be gone
    before the new run reads them."""
    from omegaconf import OmegaConf

    from textclf.data.tables import resolve_path

    given = OmegaConf.select(cfg, "model.init_from", default=None)
    if not given:
        return
    source, here = resolve_path(str(given)).resolve(), run_dir.resolve()
    if source == here or here in source.parents:
        raise TextclfError(f"model.init_from={given} is inside the run folder {run_dir}, and {what} would remove "
                           f"those weights before the new run reads them; nothing was removed. Train into another "
                           f"folder (hydra.run.dir=<new folder>) to start from them")


def finished_run_score(run_dir: Path) -> float:
    """The CV score of the finished run in run_dir (prepare_run_dir said "finished"): nothing is trained again."""
    try:
        metrics = json.loads((run_dir / folder.METRICS).read_text(encoding="utf-8"))
        score, monitor = float(metrics["score"]), metrics["monitor"]
    except (OSError, ValueError, KeyError, TypeError):
        raise TextclfError(f"{run_dir} holds a finished run (run.json) without a readable metrics.json; it is kept "
                           f"as it is. To replace it: overwrite=true; to keep it: train into another folder "
                           f"(hydra.run.dir=<new folder>)") from None
    log.info("run folder %s already holds this run, finished (%s = %.4f): nothing to train. To train it again: "
             "overwrite=true, or another folder (hydra.run.dir=<new folder>)", run_dir, monitor, score)
    return score


def remove_run_outputs(run_dir: Path, configs: list[dict], keep_folds_csv: bool) -> list[str]:
    """Remove what textclf wrote in run_dir (RUN_OUTPUTS, folds.csv unless kept, backbone/, the fold_<k>/ files
    and checkpoints, the TensorBoard folders of the loggers in `configs`); nothing else. Returns what went."""
    import shutil

    removed: list[str] = []
    record = folder.recorded(run_dir)

    def drop(path: Path) -> None:
        if not folder.is_recorded(run_dir, str(path.relative_to(run_dir)), record):
            return  # not textclf's (RunFolderGuard refuses such a folder first; this is the last line)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            return
        removed.append(str(path.relative_to(run_dir)))

    names = [*RUN_OUTPUTS, *(() if keep_folds_csv else (FOLDS,))]
    for name in names:
        drop(run_dir / name)
        for leftover in run_dir.glob(f".{name}.*.tmp"):  # an interrupted atomic write
            drop(leftover)
    backbone = run_dir / folder.BACKBONE
    if backbone.is_dir() and not backbone.is_symlink():  # the files saved there, by name (record): not the user's
        for path in sorted(backbone.rglob("*"), reverse=True):
            if path.is_file() and str(path.relative_to(run_dir)) in (record or ()):
                drop(path)
            elif path.is_dir():
                _remove_if_empty(path)
        _remove_if_empty(backbone)
    for fold_dir in sorted(run_dir.glob(f"{folder.FOLD_PREFIX}*")):
        if fold_dir.is_dir() and not fold_dir.is_symlink() and folder.fold_index(fold_dir) is not None:
            for name in FOLD_FILES:
                drop(fold_dir / name)
            drop(fold_dir / folder.CHECKPOINT)
            for leftover in fold_dir.glob(".*.tmp"):
                drop(leftover)
            _remove_if_empty(fold_dir)
    for subdir in tensorboard_dirs(configs):
        root = run_dir / subdir
        for logged in [*root.glob("fold_*"), root / "hparams"]:
            if logged.is_dir() and (logged.name == "hparams" or logged.name[len("fold_"):].isdigit()):
                drop(logged)
        _remove_if_empty(root)
    return removed


def tensorboard_dirs(configs: list[dict]) -> set[str]:
    """The run-folder subfolders the TensorBoard loggers of these configs write (relative, inside the folder)."""
    out = set()
    for cfg in configs:
        for node in ((cfg or {}).get("logger") or {}).values():
            if isinstance(node, dict) and str(node.get("_target_", "")).endswith("TensorBoardLogger"):
                subdir = Path(str(node.get("subdir") or "tensorboard"))
                if not subdir.is_absolute() and ".." not in subdir.parts:
                    out.add(str(subdir))
    return out


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not there, or holds a file textclf did not write


def _value(tree, dotted: str) -> str:
    for part in dotted.split("."):
        tree = tree.get(part, "<missing>") if isinstance(tree, dict) else "<missing>"
    text = repr(tree) if isinstance(tree, str) else str(tree)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- data fingerprints
def input_fingerprints(data_cfg, splits: dict) -> dict:
    """Size and SHA-256 of each data file the run reads, by config key (data.train_file, ..., and the list of rows
    data.exclude_rows leaves out); embedded data (data=demo) has no file of its own to hash, so it is fingerprinted
    by its rows (texts, pairs, labels)."""
    import hashlib

    from textclf.data.exclude import KEY, exclude_path
    from textclf.data.tables import EMBEDDED_PREFIX, resolve_path

    out = {}
    for name, split in splits.items():
        key, given = f"data.{name}_file", str(data_cfg[f"{name}_file"])
        if given.startswith(EMBEDDED_PREFIX):
            rows = json.dumps([split.texts, split.pairs, split.labels], default=str, ensure_ascii=False)
            out[key] = {"file": given, "rows": len(split), "rows_sha256": hashlib.sha256(rows.encode()).hexdigest()}
        else:
            path = resolve_path(given)
            out[key] = {"file": given, "path": str(path), "size": path.stat().st_size, "sha256": sha256(path)}
    excluded = exclude_path(data_cfg)
    if excluded is not None:  # the rows left out are part of the data: an edited list is edited data
        path = resolve_path(excluded)
        out[KEY] = {"file": excluded, "path": str(path), "size": path.stat().st_size, "sha256": sha256(path)}
    return out


def data_changes(run_dir: Path, inputs: dict | None) -> list[str]:
    """How this run's data files differ from those run_dir's run read (inputs.json); a file given under another
    name is a setting change, not listed here. Empty when the folder records none (an older textclf's run)."""
    path = run_dir / folder.INPUTS
    if inputs is None:
        return []
    if not path.exists():
        log.info("%s records no data files (no %s: an older textclf's run): they are not compared", run_dir,
                 folder.INPUTS)
        return []
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return [f"{path} is unreadable, so the data this run folder was trained on is unknown"]
    out = []
    for key, now in inputs.items():
        then = saved.get(key)
        if not isinstance(then, dict) or then.get("file") != now.get("file"):
            continue
        if "sha256" in now:
            if (then.get("size"), then.get("sha256")) == (now["size"], now["sha256"]):
                continue
            what = (f"size {then.get('size')} -> {now['size']} bytes" if then.get("size") != now["size"] else
                    f"same size ({now['size']} bytes), other content: sha256 {str(then.get('sha256'))[:12]}... -> "
                    f"{now['sha256'][:12]}...")
        else:
            if (then.get("rows"), then.get("rows_sha256")) == (now["rows"], now["rows_sha256"]):
                continue
            what = f"{then.get('rows')} -> {now['rows']} rows, other content"
        out.append(f"{key} {now['file']!r} ({now.get('path', now['file'])}) changed since this folder's run read "
                   f"it: {what}")
    return out


def config_differences(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config trees. A key only one of them has, set to null
    in the other, is no difference (a key a later textclf added, null by default)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if (key not in old and new[key] is None) or (key not in new and old[key] is None):
                continue
            out.extend(config_differences(old.get(key, "<missing>"), new.get(key, "<missing>"), f"{prefix}{key}."))
        return out
    return [] if old == new else [prefix.rstrip(".")]


@dataclass
class FoldResult:
    """What one trained fold leaves besides its weights: its best metrics, out-of-fold outputs and curves."""

    index: int
    result: dict  # fold, best_epoch, best_step, the best evaluation's metrics, speeds (result.json)
    oof_rows: np.ndarray
    oof: np.ndarray  # outputs (probabilities; regression: values) of oof_rows
    #: step, loss (per step row); eval_step, eval_value (the monitored metric per evaluation)
    curves: dict = field(default_factory=dict)


def save_fold_outputs(fold_dir: Path, fold: FoldResult) -> None:
    """A finished fold's outputs, then result.json last: a fold with result.json is complete, and a resume
    keeps it instead of training it again."""
    arrays = {"oof_rows": fold.oof_rows, "oof": fold.oof, **{f"curve_{k}": v for k, v in fold.curves.items()}}
    with atomic_path(fold_dir / folder.OUTPUTS) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    write_json(fold_dir / folder.RESULT, {**fold.result, HASHES: fold_hashes(fold_dir)})


#: result.json's key for the SHA-256 of the fold's weights and outputs (not a metric: read back apart)
HASHES = "sha256"


def finished_fold(fold_dir: Path, index: int):
    """The fold a resumed run had finished (result.json written), read back after its weights and outputs are
    verified against the hashes its training wrote; None when it had not finished."""
    if not (fold_dir / folder.RESULT).exists():
        return None
    try:
        result = json.loads((fold_dir / folder.RESULT).read_text(encoding="utf-8"))
        assert isinstance(result, dict)
    except (OSError, ValueError, AssertionError):
        raise TextclfError(f"cannot resume: {fold_dir / folder.RESULT} is unreadable; delete {fold_dir} and resume "
                           f"again to train that fold again") from None
    hashes = result.pop(HASHES, None)
    verify_fold(fold_dir, hashes if isinstance(hashes, dict) else None)
    try:
        arrays = np.load(fold_dir / folder.OUTPUTS, allow_pickle=False)
        curves = {k[len("curve_"):]: arrays[k] for k in arrays.files if k.startswith("curve_")}
        return FoldResult(index, result, arrays["oof_rows"], arrays["oof"], curves)
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise TextclfError(f"cannot resume: {fold_dir / folder.OUTPUTS} is unreadable ({type(e).__name__}); delete "
                           f"{fold_dir} and resume again to train that fold again") from None
