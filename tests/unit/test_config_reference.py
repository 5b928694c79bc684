"""The generated configuration reference (scripts/config_reference.py, built into the docs by docs/hooks.py):
every key in conf/ has a description, and the page covers every group folder, option file and key."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from typing import Optional, Union

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ref = _load("config_reference", ROOT / "scripts" / "config_reference.py")


@pytest.fixture(scope="module")
def conf():
    return ref.load_conf(CONF)


@pytest.fixture(scope="module")
def page(conf):
    return ref.render(conf)


def _leaves(data, path=()):
    if isinstance(data, dict) and data:
        for k, v in data.items():
            yield from _leaves(v, path + (str(k),))
    elif path:
        yield path


def _group_folders():
    return sorted(p for p in CONF.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


# ----------------------------------------------------------------------------- every key is described
def test_every_key_in_conf_has_a_description(conf):
    missing = ref.undocumented(conf)
    assert not missing, ("keys in conf/ without a description; add a short comment line above each key (the "
                         "configuration reference shows it):\n  " + "\n  ".join(missing))


def test_a_key_without_a_comment_is_reported(tmp_path):
    (tmp_path / "loss").mkdir()
    (tmp_path / "train.yaml").write_text("defaults:\n  - loss: plain\n\n# described\nplots: true\nseed: 1\n")
    (tmp_path / "predict.yaml").write_text("# header\n\n# the input\ninput: ???\n")
    (tmp_path / "export.yaml").write_text("# header\n")
    (tmp_path / "loss" / "plain.yaml").write_text("# the plain loss. gamma: the focus\n_target_: x.Y\n"
                                                  "gamma: 2.0\n# a weight\nweight: 1\nsmooth: 0.1\n")
    missing = ref.undocumented(ref.load_conf(tmp_path))
    assert missing == ["train.yaml: seed", "loss/plain.yaml: smooth"]


# ----------------------------------------------------------------------------- the page covers conf/
def test_every_group_folder_and_option_file_is_covered(conf, page):
    folders = _group_folders()
    assert [p.name for p in folders] and sorted(conf.groups) == sorted(p.name for p in folders)
    for folder in folders:
        group = conf.groups[folder.name]
        assert sorted(group.options) == sorted(p.stem for p in folder.glob("*.yaml")), folder.name
        assert f"{{#group-{folder.name}}}" in page, f"no section for group {folder.name}"
        for option in group.options:
            assert f"{folder.name}={option}" in page, f"no entry for option {folder.name}={option}"


def test_every_key_of_every_option_is_on_the_page(conf, page):
    for group in conf.groups.values():
        for name, file in group.options.items():
            for path in _leaves(yaml.safe_load(file.path.read_text(encoding="utf-8")) or {}):
                if path[0] == "defaults" or path[-1] in ("_target_", "_partial_"):
                    continue
                key = ".".join(path) if file.package == "_global_" else f"{group.name}.{'.'.join(path)}"
                assert f"`{key}`" in page, f"{group.name}/{name}.yaml: {'.'.join(path)} is not on the page"


def test_train_predict_and_export_keys_are_on_the_page(page):
    for config, prefix in (("train", ""), ("predict", ""), ("export", "")):
        data = yaml.safe_load((CONF / f"{config}.yaml").read_text(encoding="utf-8"))
        for path in _leaves({k: v for k, v in data.items() if k not in ("defaults", "hydra")}):
            assert f"`{prefix}{'.'.join(path)}`" in page, f"{config}.yaml: {'.'.join(path)} is not on the page"


def test_every_schema_field_is_on_the_page(page):
    from textclf.config import schema

    for cls, prefix in ((schema.TrainerConfig, "trainer."), (schema.DataConfig, "data."),
                        (schema.ModelConfig, "model."), (schema.PredictConfig, ""), (schema.ExportConfig, "")):
        for f in dataclasses.fields(cls):
            assert f"`{prefix}{f.name}`" in page, f"{cls.__name__}.{f.name} is not on the page"


def _entry(page: str, anchor: str) -> str:
    """The facts line of the entry with this anchor (default, type, allowed values)."""
    return page.split(f'<a id="{anchor}"></a>', 1)[1].split("\n\n", 1)[0]


def test_types_and_ranges_come_from_the_schema(page):
    facts = _entry(page, "trainer.epochs")
    assert "default `2`" in facts and "type int" in facts and "&gt;= 1" in facts
    assert "one of `head`, `tail`, `head_tail`, `window`" in _entry(page, "model.truncation")
    assert "default `embedded:bbcnews`" in _entry(page, "data.train_file")
    assert "default `???` (required)" in _entry(page, "predict.run_dir")


def test_the_comment_parser_finds_every_key(conf):
    """The comments are read line by line; the keys come from yaml.safe_load. Every key safe_load sees must be
    found by the line parser too, or its comment would be lost silently."""
    files = [conf.train, conf.predict, conf.export] + [f for g in conf.groups.values() for f in g.options.values()]
    for file in files:
        data = yaml.safe_load(file.path.read_text(encoding="utf-8")) or {}
        for path in _leaves(data):
            assert path in file.entries or path[0] == "defaults", f"{file.path}: {'.'.join(path)} not parsed"


# ----------------------------------------------------------------------------- the comment parser
def test_comments_header_inline_and_blocks(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("# @package _global_\n# the option: it does things\n#   over two lines\n_target_: a.B\n"
                 "# the rate\n# continued\nlr: 1e-4  # inline\n\nouter:\n  # only child\n  inner:\n"
                 "    level: WARNING\n  help: |\n    text: not a key\n  list: [a,\n         b]\n"
                 "# after the list\nlast: 1\n")
    f = ref.parse_yaml(p)
    assert f.package == "_global_"
    assert f.header == "the option: it does things over two lines"
    assert f.entries[("_target_",)].comment == ""
    assert f.entries[("lr",)].comment == "the rate continued\ninline"
    assert f.entries[("outer", "inner")].comment == "only child"
    assert ("outer", "help", "text") not in f.entries
    assert f.entries[("last",)].comment == "after the list"


def test_descriptions_found_elsewhere(conf):
    d = ref.Describer(conf)
    # a clause of the option's top comment (conf/loss/focal.yaml: "gamma: γ; alpha: ...")
    assert d.describe("loss", conf.groups["loss"].options["focal"], ("gamma",)).startswith("gamma:")
    # the same key in the most similar option of the group (head/mlp.yaml from head/default.yaml)
    assert d.describe("head", conf.groups["head"].options["mlp"], ("dropout",))
    # a key a preset sets is described where it lives
    competition = conf.groups["preset"].options["competition"]
    assert d.describe("preset", competition, ("trainer", "epochs")) == d.describe(
        "train", conf.train, ("trainer", "epochs"))


def test_header_clause():
    header = "sigmoid focal loss.\ngamma: γ; alpha: α, the weight of the positive terms"
    assert ref.header_clause(header, "gamma") == "gamma: γ"
    assert ref.header_clause(header, "alpha") == "alpha: α, the weight of the positive terms"
    assert ref.header_clause(header, "beta") == ""


# ----------------------------------------------------------------------------- the schema, read defensively
def test_schema_fields_without_metadata_or_defaults():
    from dataclasses import MISSING, field

    @dataclasses.dataclass
    class Node:
        plain: int
        either: Union[int, str] = field(default=MISSING, metadata={"rules": ()})
        maybe: Optional[float] = None

    fields = ref.schema_fields(Node)
    assert fields["plain"].type == "int" and fields["plain"].rules == []
    assert fields["maybe"].type == "float or null"
    assert fields["either"].type == "int or str"
    assert ref.schema_fields("NoSuchConfig") == {}


# ----------------------------------------------------------------------------- the docs hook
@pytest.mark.slow
def test_mkdocs_builds_the_reference_page(tmp_path, page):
    """`mkdocs build --strict` (as CI runs it) generates reference/configuration.html through docs/hooks.py, with
    no warning, and writes nothing into docs/."""
    pytest.importorskip("mkdocs")
    import os
    import subprocess

    before = sorted(p.relative_to(ROOT) for p in (ROOT / "docs").rglob("*") if "__pycache__" not in p.parts)
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    html = (site / "reference" / "configuration.html").read_text(encoding="utf-8")
    for folder in _group_folders():
        assert f'id="group-{folder.name}"' in html
    assert 'id="trainer.epochs"' in html
    if (ROOT / "ARCHITECTURE.md").exists():
        assert (site / "architecture.html").exists()
    after = sorted(p.relative_to(ROOT) for p in (ROOT / "docs").rglob("*") if "__pycache__" not in p.parts)
    assert after == before
