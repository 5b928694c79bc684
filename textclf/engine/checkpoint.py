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
import pickle
import random
import signal
from pathlib import Path

import numpy as np
import torch

from ..errors import TextclfError
from ..io import atomic_path, save_weights, write_json

log = logging.getLogger(__name__)

#: tests set this to a fault point's name (see fault_point calls) to SIGKILL the process right there
KILL_ENV = "TEXTCLF_KILL_AT"


def fault_point(name: str) -> None:
    """Crash-test hook: `TEXTCLF_KILL_AT=<name>` kills the process here, as a pre-emption would."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


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
        name = json.loads(latest.read_text(encoding="utf-8"))["name"]
        from safetensors.torch import load_file

        try:
            weights = load_file(str(self.folder / f"{name}.safetensors"))
            state = torch.load(self.folder / f"{name}.pt", map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
            raise TextclfError(f"cannot resume from {self.folder}: checkpoint {name} is unreadable ({e}); "
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
RESUME_FREE_KEYS = ("resume", "trainer.checkpoint_every_steps", "trainer.log_every_steps", "trainer.num_workers",
                    "logger", "plots")
#: what a run writes; a run folder reused with other settings loses these (folds.csv stays only if the split
#: settings are unchanged)
RUN_OUTPUTS = ("run.json", "metrics.json", "oof.csv", "test_predictions.csv")


def prepare_run_dir(run_dir: Path, cfg, resume: bool) -> bool:
    """True when run_dir holds an earlier run with the same settings: it continues (finished folds are kept,
    the fold in flight goes on from its last checkpoint). Other settings: resume=true is an error, otherwise
    the folder's earlier outputs are removed and the run starts over."""
    import shutil

    from omegaconf import OmegaConf

    saved = run_dir / "config.yaml"
    if not saved.exists():
        if resume:
            raise TextclfError(f"resume=true but {run_dir} holds no run to resume (no config.yaml); point "
                               f"hydra.run.dir (or resume=<folder>) at the folder of the interrupted run")
        return False
    old = OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
    new = OmegaConf.to_container(cfg, resolve=True)
    changed = [k for k in config_differences(old, new)
               if not any(k == free or k.startswith(free + ".") for free in RESUME_FREE_KEYS)]
    if not changed:
        done = sorted(p.parent.name for p in run_dir.glob("fold_*/result.json"))
        log.info("resuming the run in %s (finished folds: %s)", run_dir, ", ".join(done) or "none")
        return True
    if resume:
        raise TextclfError(f"cannot resume {run_dir}: it was started with other settings "
                           f"({', '.join(changed[:8])}); resume with the same settings, or use another run folder")
    log.warning("run folder %s holds an earlier run with other settings (%s): starting over", run_dir,
                ", ".join(changed[:8]))
    for path in run_dir.glob("fold_*"):
        if path.is_dir():
            shutil.rmtree(path)
    for name in RUN_OUTPUTS:
        (run_dir / name).unlink(missing_ok=True)
    if any(k.startswith(("kfold.", "data.")) and k != "kfold.folds" or k == "trainer.seed" for k in changed):
        (run_dir / "folds.csv").unlink(missing_ok=True)
    return False


def config_differences(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out.extend(config_differences(old.get(key, "<missing>"), new.get(key, "<missing>"), f"{prefix}{key}."))
        return out
    return [] if old == new else [prefix.rstrip(".")]


def save_fold_outputs(fold_dir: Path, fold) -> None:
    """A finished fold's outputs, then result.json last: a fold with result.json is complete, and a resume
    keeps it instead of training it again."""
    arrays = {"oof_rows": fold.oof_rows, "oof": fold.oof, **{f"curve_{k}": v for k, v in fold.curves.items()}}
    with atomic_path(fold_dir / "outputs.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    write_json(fold_dir / "result.json", fold.result)


def finished_fold(fold_dir: Path, index: int):
    """The fold a resumed run had finished (result.json written), read back; None when it had not."""
    from .kfold import FoldResult

    if not (fold_dir / "result.json").exists():
        return None
    arrays = np.load(fold_dir / "outputs.npz", allow_pickle=False)
    curves = {k[len("curve_"):]: arrays[k] for k in arrays.files if k.startswith("curve_")}
    result = json.loads((fold_dir / "result.json").read_text(encoding="utf-8"))
    return FoldResult(index, result, arrays["oof_rows"], arrays["oof"], curves)
