"""The run folder, once (textclf.run.folder): every file name is defined in that one module and listed in its
docstring's table; no other module of the package spells one; a `textclf train` process takes the folder's lock
once (not once per layer it passes through) and leaves none behind."""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_frame, tiny_overrides, write_frame

from textclf.run import folder
from textclf.run.lock import RunLock

PACKAGE = Path(folder.__file__).resolve().parents[1]
#: layers below run (they may not import textclf.run): models/init_from recognises a run folder by its files, and
#: data/augment reads a Hugging Face model folder's model.safetensors
BELOW_RUN = ("config/", "data/", "models/")
#: the plots are named where they are drawn; test_run_folder_safety keeps PLOT_FILES equal to them
NAMED_ELSEWHERE = ("observe/plots.py",)


def file_names() -> set[str]:
    """Every file name run/folder.py defines (its constants and the groups of them)."""
    out = set()
    for key, value in vars(folder).items():
        if key.isupper() and isinstance(value, str):
            out.add(value)
        elif key.isupper() and isinstance(value, (tuple, frozenset)):
            out |= {v for v in value if isinstance(v, str)}
    return out


def test_the_docstring_table_lists_every_file_the_module_names():
    listed = [n for n in file_names() if not n.endswith(".tmp") and "/" not in n]
    assert listed and [n for n in listed if n not in folder.__doc__] == []


def test_the_run_folder_page_of_the_docs_lists_every_file():
    page = (PACKAGE.parent / "docs" / "run-folder.md").read_text(encoding="utf-8")
    listed = [n for n in file_names() if not n.endswith((".tmp", ".png")) and "/" not in n]
    assert [n for n in listed if n not in page] == []


def test_no_other_module_spells_a_run_folder_file_name():
    """A new run file is named in run/folder.py and imported from there, so the list cannot drift."""
    names = {n for n in file_names() if "." in n}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        if where == "run/folder.py" or where.startswith(BELOW_RUN) or where in NAMED_ELSEWHERE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names and not isinstance(node, ast.JoinedStr):
                found.append(f"{where}:{node.lineno} {node.value!r}")
    assert found == [], "use the names of textclf.run.folder"


def test_lock_is_taken_once_and_only_by_this_process(tmp_path):
    run_dir = tmp_path / "run"
    assert not folder.holds(run_dir)
    with folder.hold(run_dir):
        assert folder.holds(run_dir) and (run_dir / folder.LOCK).exists()
        with folder.hold(run_dir):  # held already: nothing taken, nothing released
            pass
        assert folder.holds(run_dir)
    assert not (run_dir / folder.LOCK).exists()


@pytest.fixture
def acquisitions(monkeypatch):
    """How many times RunLock.acquire runs while the test does."""
    counts: Counter = Counter()
    acquire = RunLock.acquire

    def counting(self):
        counts[str(self.run_dir)] += 1
        return acquire(self)

    monkeypatch.setattr(RunLock, "acquire", counting)
    return counts


def test_one_train_takes_the_run_folder_lock_once(tiny_bert, tmp_path, acquisitions, in_process_cli):
    """RunFolderGuard takes it before Hydra writes into the folder; run_job and TrainRun find it held."""
    write_frame(make_frame(30, seed=0), tmp_path / "train.csv")
    run_dir = tmp_path / "run"
    rc = in_process_cli(["train", "data=csv", "data.train_file=train.csv", "plots=false",
                         *tiny_overrides(tiny_bert, run_dir)])
    assert rc == 0 and (run_dir / folder.MANIFEST).exists()
    assert dict(acquisitions) == {str(run_dir.resolve()): 1}
    assert not (run_dir / folder.LOCK).exists(), "the lock goes when the run ends"
    assert (run_dir / folder.LABELS).exists() and (run_dir / folder.STATUS).exists()


def test_train_called_directly_takes_the_lock_itself(tiny_bert, tmp_path, acquisitions, monkeypatch):
    """Without the CLI's entries above it (train() from Python, merge), TrainRun takes the lock: once."""
    from hydra import compose, initialize_config_module

    from textclf.commands.train import train

    monkeypatch.chdir(tmp_path)
    write_frame(make_frame(30, seed=0), tmp_path / "train.csv")
    run_dir = tmp_path / "run"
    with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=csv", "data.train_file=train.csv", "plots=false",
                                                      *(o for o in tiny_overrides(tiny_bert, run_dir)
                                                        if not o.startswith("hydra."))])
    train(cfg, run_dir)
    assert dict(acquisitions) == {str(run_dir): 1}
    assert not (run_dir / folder.LOCK).exists()
