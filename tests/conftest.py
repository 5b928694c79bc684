"""Shared fixtures: a tiny offline BERT with its own vocabulary, small labelled tables, the installed CLI.

Everything here is offline and CPU-only: the tiny backbone is built from a config in a temporary folder
and loaded by textclf through the same `from_pretrained` path as a real model.
"""
from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

# A shell starts a background job (`cmd &` in a script) with SIGINT ignored, and every process below inherits that:
# the CLI would never see the Ctrl-C the interrupt tests send it. With a handler here, the processes the tests
# start get SIGINT's default back (an exec resets handlers, not ignored signals).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# never touch the network, in this process or in the CLI processes the tests start
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("HYDRA_FULL_ERROR", None)  # a full stack trace would hide the messages the tests check

# ----------------------------------------------------------------------------- the small labelled table
TOPICS = {
    "sport": ["goal", "match", "team", "score"],
    "business": ["market", "stock", "price", "bank"],
    "politics": ["vote", "election", "party", "minister"],
}
FILLER = ["the", "a", "of", "and", "to", "in", "is", "on", "for", "with", "today", "after", "new", "big"]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789")
VOCAB = list(dict.fromkeys(SPECIAL_TOKENS + [w for ws in TOPICS.values() for w in ws] + FILLER + CHARS
                           + [f"##{c}" for c in CHARS] + list(".,!?'-:;()")))  # no duplicates: ids are positions


def make_frame(n: int = 90, seed: int = 0, *, labels: bool = True):
    """n rows cycling over the three topics: 2-6 topic words mixed with 1-14 filler words (lengths vary)."""
    import pandas as pd

    rng = random.Random(seed)
    names = list(TOPICS)
    rows = []
    for i in range(n):
        label = names[i % len(names)]
        words = rng.choices(TOPICS[label], k=rng.randint(2, 6)) + rng.choices(FILLER, k=rng.randint(1, 14))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    frame = pd.DataFrame(rows)
    return frame if labels else frame[["text"]]


def write_frame(frame, path: Path) -> Path:
    """Write by extension: .csv, .tsv, .jsonl, .parquet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        raise ValueError(f"no writer for {suffix}")
    return path


@pytest.fixture
def make_table(tmp_path):
    """make_table(name="train.csv", n=90, seed=0, labels=True) -> (path, frame), written under tmp_path."""

    def make(name: str = "train.csv", n: int = 90, seed: int = 0, *, labels: bool = True, frame=None):
        frame = make_frame(n, seed, labels=labels) if frame is None else frame
        return write_frame(frame, tmp_path / name), frame

    return make


# ----------------------------------------------------------------------------- the tiny backbone
TINY = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128)


def build_tiny_bert(folder: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    # transformers 5 ignores vocab_file= (the tokenizer comes out with only the 5 special tokens);
    # it takes the vocabulary itself. transformers 4 takes the file.
    try:
        tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)
    except TypeError:
        tokenizer = None
    if tokenizer is None or len(tokenizer) != len(VOCAB):
        tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(folder))
    torch_seed(0)
    BertModel(BertConfig(vocab_size=len(VOCAB), **TINY)).save_pretrained(str(folder))

    loaded = AutoTokenizer.from_pretrained(str(folder))
    assert len(loaded) == len(VOCAB), f"tiny tokenizer has {len(loaded)} tokens, wrote {len(VOCAB)}"
    assert loaded.is_fast and loaded.pad_token_id == 0
    ids = loaded("Goal match xyz")["input_ids"]
    assert loaded.convert_ids_to_tokens(ids) == ["[CLS]", "goal", "match", "x", "##y", "##z", "[SEP]"]
    return folder


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def model_node(values: dict | None = None):
    """A `model` node with every key, as a composed config has it: conf/model/minilm.yaml with `values` on top."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.load(str(files("textclf.conf").joinpath("model", "minilm.yaml"))), values or {})


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """Folder of a 2-layer, hidden-32 BERT with its own WordPiece vocabulary (len(VOCAB) tokens)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_bert):
    from textclf.models.backbone import load_tokenizer

    return load_tokenizer(str(tiny_bert))


def tiny_overrides(tiny_bert: Path, run_dir: Path) -> list[str]:
    """Overrides that make a training run take seconds on a CPU."""
    return [f"model.name_or_path={tiny_bert}", "model.max_length=32", "trainer.epochs=1", "trainer.batch_size=8",
            "trainer.eval_batch_size=16", "trainer.device=cpu", f"hydra.run.dir={run_dir}"]


# ----------------------------------------------------------------------------- the installed command
def textclf_executable() -> str:
    exe = shutil.which("textclf")
    if exe is None:
        pytest.fail("the `textclf` console script is not on PATH: install the package (pip install -e .)",
                    pytrace=False)
    return exe


def cli_env(**extra) -> dict:
    """The environment the tests run `textclf` in: offline, no progress bars; extra=None removes a variable."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONIOENCODING="utf-8")
    env.pop("HYDRA_FULL_ERROR", None)
    for key, value in extra.items():
        env.pop(key, None)
        if value is not None:
            env[key] = str(value)
    return env


def file_hashes(folder: Path) -> dict:
    """Every file under folder (hidden ones too), by path relative to it, with its SHA-256: equal before and after
    means nothing in the folder changed."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def selected_cases(request) -> list[str]:
    """The `case` parameters of the tests in request's module that this session runs, in order, each once."""
    return list(dict.fromkeys(item.callspec.params["case"] for item in request.session.items
                              if item.module is request.module
                              and "case" in getattr(getattr(item, "callspec", None), "params", {})))


def run_concurrently(names, run) -> dict:
    """{name: run(name)}, a few cases at a time: each case is mostly a textclf process's start-up, so the cases of a
    module run together once (in a module-scoped fixture) instead of one after another."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        futures = {name: pool.submit(run, name) for name in names}
        return {name: f.result() for name, f in futures.items()}


def run_textclf(args, cwd: Path, timeout: float = 300, env: dict | None = None) -> tuple[int, str, str]:
    """Run the installed `textclf` with args in cwd, offline; (returncode, stdout, stderr), as subprocess.run with
    capture_output=True and text=True gives them. A process of its own, forked from a server that has already
    imported what a run imports (tests/forkrun.py), or started afresh where that cannot stand in for it."""
    argv = [textclf_executable(), *map(str, args)]
    env = cli_env() if env is None else env
    server = _fork_server(argv[0], env)
    if server is not None:
        return server.run(argv, Path(cwd), env, timeout)
    proc = subprocess.run(argv, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


class _ForkServer:
    """The client side of tests/forkrun.py (one server per test worker and environment)."""

    def __init__(self, exe: str, env: dict):
        import tempfile

        self.folder = Path(tempfile.mkdtemp(prefix="textclf-forkrun-"))
        with open(self.folder / "server.log", "wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("forkrun.py")), exe],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         env=env, cwd=str(self.folder))
        hello = json.loads(self.proc.stdout.readline() or "{}")
        self.ok = hello.get("ready") is True and hello.get("threads") == 1
        self.lock = threading.Lock()
        self.calls: dict[int, dict] = {}
        self.count = 0
        if self.ok:
            threading.Thread(target=self._read, daemon=True).start()
        else:
            self.close()

    def _read(self):
        for line in self.proc.stdout:
            message = json.loads(line)
            call = self.calls.get(message["id"])
            if call is None:
                continue
            if "pid" in message:
                call["pid"] = message["pid"]
                call["forked"].set()
            if "rc" in message:
                call["rc"] = message["rc"]
                call["done"].set()
        self.ok = False  # the server is gone: wake every caller still waiting
        for call in list(self.calls.values()):
            call["forked"].set()
            call["done"].set()

    def run(self, argv, cwd: Path, env: dict, timeout: float):
        import signal

        with self.lock:
            self.count += 1
            ident = self.count
        out, err = self.folder / f"{ident}.out", self.folder / f"{ident}.err"
        call = self.calls[ident] = {"forked": threading.Event(), "done": threading.Event(), "pid": None, "rc": None}
        request = {"id": ident, "argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
        try:
            with self.lock:
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
                self.proc.stdin.flush()
            finished = call["done"].wait(timeout)
            if not finished and call["forked"].wait(10) and call["pid"]:
                os.kill(call["pid"], signal.SIGKILL)
                call["done"].wait(30)
            if call["rc"] is None:
                stdout, stderr = _read_text(out), _read_text(err)
                if not finished:
                    raise subprocess.TimeoutExpired(argv, timeout, output=stdout, stderr=stderr)
                raise RuntimeError(f"the test fork server (tests/forkrun.py) ended; its log: {self.folder}/server.log")
            return call["rc"], _read_text(out), _read_text(err)
        finally:
            self.calls.pop(ident, None)
            for path in (out, err):
                path.unlink(missing_ok=True)

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def _read_text(path: Path) -> str:
    """A captured stream as subprocess.run(text=True) decodes it (locale encoding, universal newlines)."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


_SERVERS: dict = {}


def _fork_server(exe: str, env: dict):
    """The fork server for runs in env, started on first use; None where a fresh process is needed (no fork on
    this platform, TEXTCLF_TESTS_NO_FORK=1, or env sets a variable read at start-up differently from it)."""
    if not hasattr(os, "fork") or os.environ.get("TEXTCLF_TESTS_NO_FORK") == "1":
        return None
    from forkrun import sensitive

    key = (exe, tuple(sorted(sensitive(env).items())))
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is None:
            if any(s.ok for s in _SERVERS.values()):
                return None  # one server per worker: a run in another start-up environment starts afresh
            server = _SERVERS[key] = _ForkServer(exe, env)
            atexit.register(server.close)
    return server if server.ok else None


_SERVERS_LOCK = threading.Lock()


@pytest.fixture
def cli(tmp_path):
    """cli(*args) runs the installed `textclf` with cwd=tmp_path; returns (returncode, stdout, stderr)."""

    def run(*args, cwd: Path | None = None, timeout: float = 300):
        return run_textclf(args, cwd or tmp_path, timeout)

    return run


def describe(result) -> str:
    rc, out, err = result
    return f"exit {rc}\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"


# ----------------------------------------------------------------------------- one finished k-fold run
def kfold_train_args(data_dir: Path, tiny_bert: Path, run_dir: Path) -> list[str]:
    # relative data paths: they must resolve against the folder textclf is launched from (data_dir)
    return ["train", "data=csv", "data.train_file=train.csv", "data.test_file=test.csv", "kfold=stratified",
            "kfold.n_splits=2", *tiny_overrides(tiny_bert, run_dir)]


@pytest.fixture(scope="session")
def kfold_run(tmp_path_factory, tiny_bert):
    """A finished 2-fold x 1-epoch run of the installed CLI on the small table, with a labelled test file."""
    data_dir = tmp_path_factory.mktemp("kfold_data")
    train = make_frame(90, seed=0)
    test = make_frame(24, seed=1)
    write_frame(train, data_dir / "train.csv")
    write_frame(test, data_dir / "test.csv")
    run_dir = tmp_path_factory.mktemp("kfold_out") / "run"
    args = kfold_train_args(data_dir, tiny_bert, run_dir)
    result = run_textclf(args, data_dir)
    if result[0] != 0:
        pytest.fail(f"textclf train failed:\n{describe(result)}", pytrace=False)
    return SimpleNamespace(run_dir=run_dir, data_dir=data_dir, train=train, test=test, args=args, result=result)


def pytest_report_header(config):
    return f"textclf executable: {shutil.which('textclf')} (python {sys.version.split()[0]})"


# ----------------------------------------------------------------------------- tiny backbones of every family
@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory):
    """tiny_backbones(arch) -> folder of a 2-layer, hidden-32 model with its own tokenizer, for arch in
    tiny_models.ARCHS (bert, roberta, deberta, electra, xlnet, bert_chinese); each built once per session."""
    from tiny_models import TinyBackbones

    return TinyBackbones(tmp_path_factory)


def assert_refused_clearly(rc: int, out: str, err: str, patterns, *, no_model: str,
                           own_error: bool | None = True) -> None:
    """A refused run as the user sees it: a non-zero exit, no traceback, every regex of `patterns` in the output,
    and the check made before any model loads (the path `no_model` never shows). own_error=True: textclf's own
    `textclf: error` line is printed exactly once, on stderr; None: only when there is one (Hydra may refuse
    first)."""
    import re

    console = out + err
    shown = f"exit {rc}\n{console[-2500:]}"
    assert rc != 0, shown
    assert "Traceback" not in console, shown
    for pattern in patterns:
        assert re.search(pattern, console), f"{pattern!r} not in the message:\n{shown}"
    if own_error or (own_error is None and "textclf: error" in console):
        assert console.count("textclf: error") == 1, shown
        assert "textclf: error" in err, shown
    assert no_model not in console, f"the data check came after the model load:\n{shown}"


@pytest.fixture
def in_process_cli(monkeypatch, tmp_path):
    """`textclf.cli.main` run in this process, in tmp_path (to count what one command does); sys.argv, Hydra's
    logging set-up and its record of the running job (HydraConfig, which later tests in this process must not
    see) are put back after."""
    import logging

    from hydra.core.hydra_config import HydraConfig

    from textclf.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield main
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:], root.level = handlers, level
