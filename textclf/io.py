"""Atomic file writes: write a temporary file beside the target, then rename it into place."""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path in the target's folder; on success rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name: a writer killed outright (SIGKILL, out of memory) cannot remove its file, and
    # remove_stale_temps recognises it by the pid no longer running
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that atomic_path writers of `path` left when they were killed outright (their
    pid no longer runs on this machine); a live writer's file is left alone. Returns the files removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp") if path.parent.is_dir() else []:
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or _running(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_csv(path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_weights(path, state_dict) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp))
        except Exception as e:  # noqa: BLE001 - safetensors reports an OS error as its own SafetensorError
            code = re.search(r"\(os error (\d+)\)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def load_weights(path) -> dict:
    """Weights from a safetensors file (never a pickle)."""
    from safetensors.torch import load_file

    return load_file(str(path))


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def bar_off(off: bool) -> dict:
    """tqdm's `disable` for a bar that is off in some cases: True when off, else left unset, so that tqdm's own
    TQDM_DISABLE (and its other TQDM_* settings) still apply; disable=False would override them."""
    return {"disable": True} if off else {}


def quiet_transformers() -> None:
    """transformers' own warnings (unused pooler weights, ...) and download bars add noise to a run's log."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


#: errno values that are the machine's state (space, permissions, a path in the way), not a bug: one line each
_FILE_FAULTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file would pass the largest file size allowed (ulimit -f, or the file system's)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "a file is in the way",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EIO: "an input/output error of the device",
}


def file_fault(e: BaseException) -> str | None:
    """One line for an OSError that is the machine's state rather than a bug (no space, read-only, a path that is a
    file, ...): what failed and on which file, and how to go on; None for anything else."""
    if not isinstance(e, OSError) or e.errno not in _FILE_FAULTS:
        return None
    target = e.filename if e.filename is not None else "a file"
    hint = {errno.ENOSPC: "free some space (or write to another disk) and run the command again",
            errno.EDQUOT: "free some space (or write to another disk) and run the command again",
            errno.EFBIG: "raise the limit (or write to another disk) and run the command again",
            errno.EROFS: "write to a folder you can write to",
            errno.EACCES: "write to a folder you can write to, or fix its permissions",
            errno.EPERM: "write to a folder you can write to, or fix its permissions",
            }.get(e.errno, "give another path")
    return f"cannot write or read {target}: {_FILE_FAULTS[e.errno]}; {hint}"


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written into `folder` (it, or the nearest of its parents that exists, is a file or not
    writable), as "<path> <why>"; None when they can."""
    folder = Path(folder)
    nearest = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if nearest is None or (nearest.is_dir() and os.access(nearest, os.W_OK | os.X_OK)):
        return None
    why = "is a file, not a folder" if not nearest.is_dir() else "cannot be written to (read-only or permissions)"
    return f"{nearest} {why}"
