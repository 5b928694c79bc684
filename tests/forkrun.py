"""Run the `textclf` command for the tests without paying Python's start-up and imports for every run.

Most of a tiny test run's time is spent importing torch, transformers, pandas, scikit-learn and Hydra (about 3-6 s
of CPU per run, against a second or two of work). A fork server imports them once; each run is then a fork of it
that sets its working folder, environment, argv and standard streams as a fresh process would have them, and runs
the same `textclf.cli.main()` the console script runs, exiting through the normal interpreter shutdown. Every run is
still its own process (its own pid, exit status, signals, files); only the already-imported modules are shared.

    python tests/forkrun.py <the textclf console script>      (started by run_textclf in conftest.py; one per test worker)

Requests are JSON lines on stdin {"id", "argv", "cwd", "env", "stdout", "stderr"}; the server answers
{"id", "pid"} when it has forked and {"id", "rc"} when that process ended (rc as subprocess reports it: -N for a
signal). It stays single-threaded, so forking it is safe.

Runs whose environment differs from the server's in a variable read while those modules load (OMP_*, HF_*,
PYTHON*, ...) cannot use it: conftest runs them as plain subprocesses (see FORK_SENSITIVE). So does every run when
TEXTCLF_TESTS_NO_FORK=1.
"""
from __future__ import annotations

import json
import os
import select
import sys
import threading

#: what a training run imports that costs time (imported here once, in the order a run imports them)
PRELOAD = ("textclf.cli", "textclf.commands.train", "textclf.commands.predict", "transformers.models.bert.modeling_bert",
           "transformers.models.bert.tokenization_bert", "matplotlib.backends.backend_agg")

#: environment variables read while Python starts or those modules load (tqdm reads TQDM_* when imported): a run
#: that sets them differently from the server's environment is run as a plain subprocess instead
FORK_SENSITIVE = ("PYTHON", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "NUMEXPR_", "CUDA", "NVIDIA", "PYTORCH",
                  "TORCH", "HF_", "HUGGINGFACE", "TRANSFORMERS", "TOKENIZERS", "SKLEARN", "JOBLIB", "LOKY",
                  "MPLBACKEND", "MPLCONFIGDIR", "TQDM_", "LANG", "LC_", "LD_", "MALLOC", "TZ", "HOME", "XDG_", "TMP",
                  "TEMP")


def sensitive(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(FORK_SENSITIVE)}


def _serve() -> dict | None:
    """The server loop. Returns a request in a forked child (which then runs it), None in the server at EOF."""
    import gc
    import importlib

    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[1]))  # as the console script's own folder would be

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.collect()
    gc.freeze()  # a child's collections leave the imported objects alone, so their pages stay shared (copy-on-write)
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nothing the server itself prints can reach the channel
    os.close(devnull)
    # Forking needs a single Python thread. The native threads the imports start (OpenBLAS's pool, jemalloc's
    # background thread) have fork handlers of their own, as for a DataLoader's forked workers; nothing here has run
    # torch's OpenMP pool, which would not survive a fork.
    channel.write(json.dumps({"ready": True, "threads": threading.active_count()}) + "\n")
    pending: dict[int, int] = {}
    buffer = b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.02 if pending else None)
        if ready:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                return None
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    channel.close()
                    return request
                pending[pid] = request["id"]
                channel.write(json.dumps({"id": request["id"], "pid": pid}) + "\n")
        while pending:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in pending:
                channel.write(json.dumps({"id": pending.pop(pid), "rc": os.waitstatus_to_exitcode(status)}) + "\n")


def _become(request: dict) -> None:
    """In the forked child: the process state `subprocess.run(argv, cwd, env, capture_output=True)` would give."""
    import io

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    encoding = os.environ.get("PYTHONIOENCODING", "utf-8").split(":")[0] or "utf-8"
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))  # as Python's -u: what is written reaches the file at once,
    # so a run killed outright (SIGKILL) leaves the same output a fresh process would

    def writer(fd, **kw):
        raw = io.FileIO(fd, "w", closefd=False)
        return io.TextIOWrapper(raw if unbuffered else io.BufferedWriter(raw), encoding=encoding,
                                write_through=unbuffered, **kw)

    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                                 encoding=encoding)
    sys.stdout = sys.__stdout__ = writer(1)
    sys.stderr = sys.__stderr__ = writer(2, errors="backslashreplace", line_buffering=True)
    sys.argv = list(request["argv"])


if __name__ == "__main__":
    job = _serve()
    if job is None:
        sys.exit(0)
    _become(job)
    del job
    from textclf.cli import main

    sys.exit(main())
