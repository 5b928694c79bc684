"""The configuration reference, generated from conf/ and the schema, so it cannot drift from them.

    python scripts/config_reference.py                  # print the markdown page
    python scripts/config_reference.py -o ref.md        # write it to a file
    python scripts/config_reference.py --check          # list the keys that have no description; exit 1 if any

Sources:
- the YAML under conf/: conf/train.yaml (top-level keys and the `trainer:` node), conf/<group>/<option>.yaml for
  every group folder, conf/predict.yaml and conf/export.yaml. Values come from the YAML (the options of `data` and
  `model` are composed with Hydra, because an option may build on another: model=bert starts from minilm).
  Descriptions are the YAML comments: the comment lines directly above a key (or after it on its line) describe
  it; the comment at the top of a file (up to its first blank line) describes the file, i.e. the option.
- the schema, textclf/config/schema.py: each field's annotation is its type, and `metadata["rules"]` holds the
  Range / Choice / Check objects that say which values it accepts. Defaults never come from the schema.

A key without a comment of its own is still described when its description is somewhere else in conf/:
- in the option's top comment, as a clause `key: ...` (conf/loss/focal.yaml: "gamma: γ; alpha: ..."),
- at the same key of another option of the same group, the option with the most keys in common first
  (head.dropout is described once, in head/default.yaml),
- on its parent, when it is the parent's only key (alembic: {level: WARNING}),
- for the keys a `@package _global_` option sets (preset, debug): at the key it sets (trainer.epochs),
- for an Optuna search dimension, hydra.sweeper.params.<key>: at <key> itself.
`undocumented()` lists the keys for which none of these holds (tests/unit/test_config_reference.py keeps it empty).

docs/hooks.py calls `render()` whenever MkDocs builds the site, so the page is never stale.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"

#: what the generator says about instantiate's own keys (they have no YAML comment of their own)
INSTANTIATE_DOCS = {
    "_target_": "The class or function this option builds (Hydra's `instantiate`).",
    "_partial_": "Built as a partial: textclf supplies the remaining arguments when it builds it.",
}
#: a sentence on each group; where there is none, the comment above the group in train.yaml's defaults list
GROUP_INTROS = {
    "data": "Where the rows come from: `demo` (the embedded BBC News table) or `csv` (a table of your own).",
    "model": "The backbone (the embedded MiniLM-L6, a hub id or a local folder) and how texts are tokenized.",
    "pooling": "How the backbone's token vectors become one vector per text.",
    "head": "The classification head on the pooled vector.",
    "loss": "The training loss; `auto` picks the task's default.",
    "optimizer": "The optimizer, with optional layer-wise learning-rate decay.",
    "scheduler": "The learning-rate schedule: warmup, then decay.",
    "kfold": "How the rows are split into training and validation folds.",
    "adversarial": "Adversarial training (FGM, PGD, AWP).",
    "ema": "An exponential moving average of the weights, used for evaluation and the saved weights.",
    "rdrop": "R-Drop: two dropout passes per batch, with a divergence penalty between them.",
    "hparams_search": "Changes how a multirun (`textclf train -m`) searches: `optuna` replaces the grid with an "
                      "Optuna search.",
    "launcher": "Changes where the jobs of a multirun (`textclf train -m`) run: parallel local processes, or "
                "SLURM jobs.",
}
#: groups whose options have fixed keys, described by a schema node (the others build a `_target_`)
NODE_GROUPS = {"data": "DataConfig", "model": "ModelConfig"}
#: words that start a command line in a comment (rendered as code)
COMMANDS = ("textclf ", "python ", "mlflow ", "tensorboard ", "pip ", "torchrun ", "~/")


# ----------------------------------------------------------------------------- reading the YAML's comments
@dataclass
class Entry:
    """One key of one YAML file."""

    path: tuple[str, ...]
    value: Any
    comment: str = ""  # the comment above the key, and its inline comment
    line: int = 0


@dataclass
class YamlFile:
    path: Path
    header: str = ""  # the comment at the top of the file (not the @package line)
    package: str | None = None  # "_global_" for options that set keys anywhere
    defaults: list[tuple[str, str]] = field(default_factory=list)  # (defaults-list entry, its comment)
    entries: dict[tuple[str, ...], Entry] = field(default_factory=dict)
    data: Any = None  # the file as yaml.safe_load reads it

    def leaves(self, skip: tuple[str, ...] = ()) -> list[Entry]:
        """Entries whose value is not a non-empty mapping, in file order; top-level keys in `skip` left out."""
        found = [e for e in self.entries.values() if not (isinstance(e.value, dict) and e.value)]
        return [e for e in found if e.path[0] not in skip and e.path[0] != "defaults"]


KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>\"[^\"]*\"|'[^']*'|[^\s#'\"\-\[{][^:#]*?)\s*:(?:\s+(?P<rest>.*))?$")
COMMENT_LINE = re.compile(r"^\s*#(?P<text>.*)$")
LABEL = re.compile(r"^[a-z_][\w/<>.]*:\s")


def _split_inline(rest: str) -> tuple[str, str]:
    """'value  # comment' -> ('value', 'comment'); a # inside quotes or without a space before it stays."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].rstrip(), rest[i + 1:].strip()
    return rest.rstrip(), ""


def _is_command(text: str) -> bool:
    """A command line: starts with a command word, and is not a 'textclf train: ...' label."""
    return text.startswith(COMMANDS) and not re.match(r"^\S+ [^\s=]+:(\s|$)", text)


def _comment_text(lines: list[str]) -> str:
    """Comment lines (what follows their '#') as text with one logical line per line: wrapped prose is joined,
    while list items, command lines, 'label: ...' lines, lines after a line ending in ':' and lines that dedent
    start a line of their own."""
    out: list[str] = []
    base = prev_indent = None
    prev_text = ""
    for raw in lines:
        text = raw.rstrip()
        stripped = text.strip()
        if not stripped:
            continue
        indent = len(text) - len(text.lstrip())
        if base is None:
            base = indent
        new = (not out or stripped.startswith("- ") or _is_command(stripped) or _is_command(prev_text)
               or indent < prev_indent or (indent > prev_indent and prev_text.endswith(":"))
               or (indent == base and LABEL.match(stripped) is not None))
        if new:
            out.append(stripped)
        else:
            out[-1] += " " + stripped
        prev_indent, prev_text = indent, stripped
    return "\n".join(out)


def _lookup(data: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    node = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def parse_yaml(path: Path) -> YamlFile:
    """A YAML file's keys with their comments. The structure and values come from yaml.safe_load; the lines are
    only read for the comments, so a line this parser misreads can cost a comment, never a key."""
    text = path.read_text(encoding="utf-8")
    out = YamlFile(path=path, data=yaml.safe_load(text) or {})
    pending: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings
    in_header, header = True, []
    skip_deeper: int | None = None  # inside a block scalar: skip the lines deeper than its key
    open_brackets = 0  # inside a flow value that spans lines
    in_defaults = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if open_brackets > 0:
            open_brackets += line.count("[") + line.count("{") - line.count("]") - line.count("}")
            continue
        if skip_deeper is not None:
            if not stripped or indent > skip_deeper:
                continue
            skip_deeper = None
        comment = COMMENT_LINE.match(line)
        if comment:
            body = comment.group("text")
            if in_header and body.strip().startswith("@package"):
                words = body.split()
                out.package = words[1] if len(words) > 1 else None
                continue
            (header if in_header else pending).append(body)
            continue
        if not stripped:
            in_header = in_header and not header
            pending = []
            continue
        in_header = False
        if stripped.startswith("- "):
            if in_defaults:
                out.defaults.append((stripped[2:].strip(), _comment_text(pending)))
            pending = []
            continue
        m = KEY_LINE.match(line)
        if not m:
            pending = []
            continue
        key = m.group("key").strip().strip("'\"")
        rest, inline = _split_inline(m.group("rest") or "")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key_path = tuple(k for _, k in stack) + (key,)
        in_defaults = key_path == ("defaults",)
        found, value = _lookup(out.data, key_path)
        if found:
            words = [_comment_text(pending), inline]
            out.entries[key_path] = Entry(key_path, value, "\n".join(w for w in words if w), number)
        pending = []
        if rest in ("|", "|-", "|+", ">", ">-", ">+"):
            skip_deeper = indent
        elif rest.startswith(("[", "{")):
            open_brackets = max(0, rest.count("[") + rest.count("{") - rest.count("]") - rest.count("}"))
        if not rest or rest.startswith("&"):
            stack.append((indent, key))
    out.header = _comment_text(header)
    return out


def header_clause(header: str, key: str) -> str:
    """The part of an option's top comment that describes `key`: 'key: ...' (at a line's start, or after '; ' or
    '. ') up to the next such clause."""
    for line in header.splitlines():
        m = re.search(rf"(?:^|[;.]\s+)`?{re.escape(key)}`?:\s+(.*)", line)
        if m:
            clause = m.group(1)
            end = re.search(r"[;.]\s+`?[a-z_][a-z0-9_]*`?:\s", clause)
            return f"{key}: {(clause[:end.start()] if end else clause).strip().rstrip(';')}"
    return ""


# ----------------------------------------------------------------------------- the schema
def _schema():
    from textclf.config import schema

    return schema


def type_name(tp: Any) -> str:
    """int, int or null, str or list of str, ... for an annotation."""
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    origin = typing.get_origin(tp)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        args = typing.get_args(tp)
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names + (["null"] if type(None) in args else []))
    if origin in (list, tuple):
        args = typing.get_args(tp) or (Any,)
        return f"list of {type_name(args[0])}"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def rule_text(rule: Any) -> str:
    """What a Range / Choice / Check accepts, in words (markdown)."""
    schema = _schema()
    if isinstance(rule, schema.Range):
        return _escape(str(rule))
    if isinstance(rule, schema.Choice):
        return "one of " + ", ".join(f"`{o}`" for o in rule.options())
    if isinstance(rule, schema.Check):
        return _escape(str(getattr(rule, "expect", "") or ""))
    return _escape(str(rule))


@dataclass
class SchemaField:
    name: str
    type: str = ""
    rules: list[str] = field(default_factory=list)
    hint: str = ""
    node: type | None = None  # a nested schema node (trainer)
    target: Any = None  # a `_target_` group's Target


def schema_fields(cls_name: str | type) -> dict[str, SchemaField]:
    """The fields of one schema dataclass; {} when it is not there."""
    cls = getattr(_schema(), cls_name, None) if isinstance(cls_name, str) else cls_name
    if cls is None or not dataclasses.is_dataclass(cls):
        return {}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: shown as written
        hints = {}
    out = {}
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, f.type)
        meta = f.metadata or {}
        sf = SchemaField(f.name, hint=str(meta.get("hint", "") or ""), target=meta.get("target"))
        if dataclasses.is_dataclass(tp):
            sf.node = tp
        else:
            sf.type = tp if isinstance(tp, str) else type_name(tp)
        sf.rules = [t for t in (rule_text(r) for r in meta.get("rules", ()) or ()) if t]
        out[f.name] = sf
    return out


# ----------------------------------------------------------------------------- the composed values
def composed(overrides: list[str], config: str = "train") -> dict:
    """The config Hydra composes for textclf's `config` with `overrides`, unresolved, without its hydra node."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    gh = GlobalHydra.instance()
    before = gh.hydra if gh.is_initialized() else None
    gh.clear()
    try:
        with initialize_config_module(config_module="textclf.conf", version_base="1.3"):
            data = OmegaConf.to_container(compose(config, overrides=overrides), resolve=False)
    finally:
        gh.clear()
        if before is not None:
            gh.initialize(before)
    data.pop("hydra", None)
    return data


# ----------------------------------------------------------------------------- the model of conf/
@dataclass
class Group:
    name: str
    options: dict[str, YamlFile]
    default: str | None = None  # the option train.yaml selects (None: nothing unless chosen)
    intro: str = ""


@dataclass
class Conf:
    train: YamlFile
    predict: YamlFile
    export: YamlFile
    groups: dict[str, Group]


def load_conf(conf: Path = CONF) -> Conf:
    """Every YAML file of conf/, its groups in the order train.yaml's defaults list names them (others after)."""
    train = parse_yaml(conf / "train.yaml")
    defaults: dict[str, tuple[str | None, str]] = {}
    for entry, comment in train.defaults:
        name, sep, option = entry.partition(":")
        if sep:
            option = option.strip()
            defaults[name.strip()] = (None if option in ("null", "") else option, comment)
    order = {name: i for i, name in enumerate(defaults)}
    folders = sorted((p for p in conf.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))),
                     key=lambda p: (order.get(p.name, len(order)), p.name))
    groups = {}
    for folder in folders:
        options = {p.stem: parse_yaml(p) for p in sorted(folder.glob("*.yaml"))}
        default, comment = defaults.get(folder.name, (None, ""))
        groups[folder.name] = Group(folder.name, options, default, GROUP_INTROS.get(folder.name) or comment)
    return Conf(train, parse_yaml(conf / "predict.yaml"), parse_yaml(conf / "export.yaml"), groups)


# ----------------------------------------------------------------------------- descriptions
class Describer:
    """Finds each key's description: its own comment, else one of the places the module docstring lists."""

    def __init__(self, conf: Conf):
        self.conf = conf

    def own(self, file: YamlFile, path: tuple[str, ...], in_group: bool) -> str:
        entry = file.entries.get(path)
        if entry and entry.comment:
            return entry.comment
        if path[-1] in INSTANTIATE_DOCS:
            return INSTANTIATE_DOCS[path[-1]]
        if len(path) > 1:  # the only key of its parent: the parent's comment says what it is for
            parent = file.entries.get(path[:-1])
            if parent and parent.comment and isinstance(parent.value, dict) and len(parent.value) == 1:
                return parent.comment
        if in_group and file.header and len(path) == 1:
            return header_clause(file.header, path[-1])
        return ""

    def in_group(self, group: Group, path: tuple[str, ...], near: YamlFile | None = None) -> str:
        """The description of `path` (relative to the option) in the group's options: those with the most keys
        in common with `near` first, then the default option."""
        mine = set(_keys(near)) if near is not None else set()

        def rank(name: str):
            theirs = set(_keys(group.options[name]))
            similar = len(mine & theirs) / len(mine | theirs) if mine | theirs else 0.0
            return -similar, name != group.default, name

        for name in sorted(group.options, key=rank):
            text = self.own(group.options[name], path, True)
            if text:
                return text
        return ""

    def train_key(self, path: tuple[str, ...]) -> str:
        """A key of the composed train config: top-level or trainer (train.yaml), or a group's key."""
        if not path:
            return ""
        text = self.own(self.conf.train, path, False)
        group = self.conf.groups.get(path[0])
        if not text and group is not None and len(path) > 1:
            text = self.in_group(group, path[1:])
        return text

    def describe(self, where: str, file: YamlFile, path: tuple[str, ...]) -> str:
        """where: 'train', 'predict', 'export' or the group's name."""
        group = self.conf.groups.get(where)
        if group is None:
            return self.own(file, path, False)
        text = self.own(file, path, True)
        if text:
            return text
        if file.package == "_global_":
            if path[:3] == ("hydra", "sweeper", "params") and len(path) > 3:
                key = tuple(".".join(path[3:]).split("."))
                if self.train_key(key) or (len(key) == 1 and key[0] in self.conf.groups):
                    return f"The search space of `{'.'.join(key)}`."
                return ""
            return self.in_group(group, path, file) or self.train_key(path)
        return self.in_group(group, path, file)


def _keys(file: YamlFile) -> list[tuple[str, ...]]:
    return [e.path for e in file.leaves()]


def undocumented(conf: Conf | None = None) -> list[str]:
    """'file: key' for every key in conf/ without a description. Not keys of textclf's config, so left out: the
    hydra node of train.yaml, predict.yaml and export.yaml (Hydra's own settings) and defaults lists."""
    conf = conf or load_conf()
    d = Describer(conf)
    missing = []
    for name, file in (("train", conf.train), ("predict", conf.predict), ("export", conf.export)):
        missing += [f"{name}.yaml: {'.'.join(e.path)}" for e in file.leaves(skip=("hydra",))
                    if not d.describe(name, file, e.path)]
    for group in conf.groups.values():
        for option, file in group.options.items():
            missing += [f"{group.name}/{option}.yaml: {'.'.join(e.path)}" for e in file.leaves()
                        if not d.describe(group.name, file, e.path)]
    return missing


# ----------------------------------------------------------------------------- markdown
def _escape(text: str) -> str:
    """Plain text as markdown: characters markdown would read as markup escaped, '->' as an arrow."""
    text = text.replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("-&gt;", "→")
    for ch in "*_[]#|`":
        text = text.replace(ch, "\\" + ch)
    return text


CODE_SPAN = re.compile(r"`[^`]+`")
ASSIGNMENT = re.compile(r"(?<![\w`'\"/=.-])\+?[a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*=(?=\S)")
FILE_NAME = re.compile(r"(?<![\w`/.-])(?:[\w<>-]+/)*[\w<>-]+\.(?:json|csv|png|npz|safetensors|yaml|db|onnx|py|sh)\b")


class Markdown:
    """Comment text to markdown: code spans kept; `key=value`, known config keys and run-folder file names set
    in code; command lines as code; '- ' lines as a list; other lines separated by hard line breaks."""

    def __init__(self, keys: set[str]):
        keys = set(keys) | {k.rsplit(".", 1)[-1] for k in keys}  # the bare names too: grad_accum_steps
        known = sorted((k for k in keys if "." in k or "_" in k.strip("_")), key=len, reverse=True)
        self.key_re = re.compile(r"(?<![\w`/.=-])(" + "|".join(map(re.escape, known)) + r")(?![\w/=(-]|\.[a-z])") \
            if known else None

    def _spans(self, text: str) -> list[tuple[int, int]]:
        """Where the code spans go: existing ones, assignments (value to the next blank at bracket depth 0),
        file names and known keys."""
        spans = [m.span() for m in CODE_SPAN.finditer(text)]

        def free(a: int, b: int) -> bool:
            return all(b <= s or a >= e for s, e in spans)

        for m in ASSIGNMENT.finditer(text):
            i, depth = m.end(), 0
            while i < len(text):
                ch = text[i]
                if ch in "([{<":
                    depth += 1
                elif ch in ")]}>":
                    if depth == 0:
                        break
                    depth -= 1
                elif depth == 0 and (ch.isspace() or ch in ",;'\"`"):
                    break
                i += 1
            end = i
            while end > m.end() and text[end - 1] in ".:":
                end -= 1
            if end > m.end() and free(m.start(), end):
                spans.append((m.start(), end))
        for pattern in (FILE_NAME, self.key_re):
            for m in (pattern.finditer(text) if pattern else ()):
                if free(*m.span()):
                    spans.append(m.span())
        return sorted(spans)

    def inline(self, text: str) -> str:
        out, at = [], 0
        for start, end in self._spans(text):
            out.append(_escape(text[at:start]))
            piece = text[start:end]
            out.append(piece if piece.startswith("`") else f"`{piece}`")
            at = end
        out.append(_escape(text[at:]))
        return "".join(out)

    def line(self, text: str) -> str:
        if _is_command(text):
            m = re.search(r"\s{2,}|\s#\s", text)
            code, rest = (text[:m.start()], text[m.start():].strip()) if m else (text, "")
            return f"`{code.strip()}`" + (" " + self.inline(rest) if rest else "")
        return self.inline(text)

    def block(self, text: str, indent: str = "") -> str:
        """Markdown for comment text, every line after the first indented by `indent`."""
        parts: list[str] = []
        prose: list[str] = []
        items: list[str] = []

        def flush():
            if prose:
                parts.append(("  \n" + indent).join(prose))
                prose.clear()
            if items:
                parts.append(("\n" + indent).join(items))
                items.clear()

        for raw in text.splitlines():
            raw = raw.strip()
            if not raw:
                continue
            if raw.startswith("- "):
                if prose:
                    flush()
                items.append("- " + self.line(raw[2:].strip()))
            else:
                if items:
                    flush()
                prose.append(self.line(raw))
        flush()
        return ("\n\n" + indent).join(parts)


def _value(value: Any) -> str:
    if value == "???":
        return "`???` (required)"
    if isinstance(value, str):
        text = value
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip()
        text = text.removesuffix("...").strip()
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def anchor(key: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", key.lower()).strip("-")


class Page:
    """Writes the page: one definition-list entry per key."""

    def __init__(self, conf: Conf):
        self.conf = conf
        self.d = Describer(conf)
        self.train_values = composed([])
        self.anchors: set[str] = set()
        self.lines: list[str] = []
        keys = {".".join(p) for p, _ in _flatten(self.train_values)}
        for group in conf.groups.values():
            for file in group.options.values():
                keys |= {".".join(e.path) for e in file.leaves()}
        self.md = Markdown(keys)

    def w(self, text: str = "") -> None:
        self.lines.append(text)

    def entry(self, key: str, value: Any, text: str, facts: list[str] | None = None, anchor_id: str | None = None,
              rendered: str | None = None, value_label: str = "default") -> None:
        """`key` as the term; default, type and allowed values, then the description, as its definition."""
        term = f"`{key}`"
        if anchor_id and anchor_id not in self.anchors:
            self.anchors.add(anchor_id)
            term = f'<a id="{anchor_id}"></a>{term}'
        lead = " · ".join(f for f in [f"{value_label} {_value(value)}"] + (facts or []) if f)
        body = rendered if rendered is not None else self.md.block(text, "    ")
        self.w(f"{term}\n:   {lead}" + (f"\n\n    {body}" if body else "") + "\n")

    def link(self, key: str) -> str:
        """A link to `key`'s entry, or to its group's section; the bare key where there is neither."""
        if anchor(key) in self.anchors:
            return f"[`{key}`](#{anchor(key)})"
        head = key.split(".")[0]
        if head in self.conf.groups:
            return f"[`{key}`](#group-{head})"
        return f"`{key}`"

    # -- sections
    def schema_node(self, prefix: str, anchor_prefix: str, values: dict, fields: dict[str, SchemaField],
                    describe) -> None:
        """The keys of a schema node: the YAML's in order, then any schema field the YAML lacks."""
        names = [k for k in values if k not in ("defaults", "hydra")]
        names += [k for k in fields if k not in values]
        for name in names:
            sf = fields.get(name)
            if sf is not None and (sf.node is not None or sf.target is not None):
                continue  # nested nodes and groups have sections of their own
            value = values.get(name, "???")
            text = describe((name,)) or (sf.hint if sf else "")
            facts = [f"type {sf.type}" if sf and sf.type else ""] + (sf.rules if sf else [])
            if name not in values:
                facts.append("not set in the YAML")
            if sf is None and fields:
                facts.append("not in the schema")
            self.entry(prefix + name, value, text, facts, anchor(anchor_prefix + name))

    def train(self) -> None:
        conf, w = self.conf, self.w
        top = schema_fields("TrainConfig")
        w("## textclf train {#train}\n")
        w(f"`conf/train.yaml`: {self.md.block(conf.train.header)}\n")
        w("Its groups, each a folder `conf/<group>/` of options, chosen with `group=option`:\n")
        for g in conf.groups.values():
            default = f"default `{g.default}`" if g.default else "none unless chosen"
            w(f"- [`{g.name}`](#group-{g.name}) ({default}): {', '.join(f'`{o}`' for o in g.options)}")
        w("\n### Top-level keys {#top-level}\n")
        values = {k: v for k, v in (conf.train.data or {}).items() if k not in ("defaults", "hydra", "trainer")}
        self.schema_node("", "", values, {k: f for k, f in top.items() if k != "trainer"},
                         lambda p: self.d.describe("train", conf.train, p))
        w("### trainer {#trainer}\n")
        w("The `trainer:` node of `conf/train.yaml`: how each fold trains.\n")
        node = top["trainer"].node if "trainer" in top and top["trainer"].node else "TrainerConfig"
        self.schema_node("trainer.", "trainer.", (conf.train.data or {}).get("trainer", {}) or {},
                         schema_fields(node), lambda p: self.d.describe("train", conf.train, ("trainer",) + p))

    def node_group(self, group: Group) -> None:
        """data, model: fixed keys (a schema node). Each option and the values it changes, then one entry per
        key at the default option's values."""
        fields = schema_fields(NODE_GROUPS[group.name])
        default = group.default or next(iter(group.options))
        values = {name: composed([f"{group.name}={name}"]).get(group.name, {}) or {} for name in group.options}
        for name, file in group.options.items():
            changed = [(k, v) for k, v in values[name].items() if name != default and values[default].get(k) != v]
            label = f"`{group.name}={name}`" + (" (default)" if name == default else "")
            text = self.md.block(file.header, "    ") or "(no description)"
            sets = "" if not changed else "\n\n    Sets " + ", ".join(
                f"`{group.name}.{k}` to {_value(v)}" for k, v in changed) + "."
            self.w(f"{label}\n:   {text}{sets}\n")
        self.w(f"### {group.name} keys {{#{group.name}-keys}}\n")
        self.w(f"Defaults are those of `{group.name}={default}`.\n")
        self.schema_node(f"{group.name}.", f"{group.name}.", values[default], fields,
                         lambda p: self.d.describe(group.name, group.options[default], p))

    def target_group(self, group: Group) -> None:
        """Groups whose option builds a `_target_`, and the `@package _global_` groups: each option, its keys."""
        for name, file in group.options.items():
            default = " (default)" if name == group.default else ""
            self.w(f"### {group.name}={name}{default} {{#{anchor(group.name + '-' + name)}}}\n")
            data = file.data if isinstance(file.data, dict) else {}
            builds = data.get("_target_") or next((v.get("_target_") for v in data.values()
                                                   if isinstance(v, dict) and "_target_" in v), None)
            if file.header:
                self.w(self.md.block(file.header) + "\n")
            if builds:
                self.w(f"Builds `{builds}`" + (" (called later with the run's arguments)." if data.get("_partial_")
                                               else ".") + "\n")
            if file.package == "_global_":
                chosen = [e.replace("override ", "").lstrip("/").replace(": ", "=") for e, _ in file.defaults]
                chosen = [c for c in chosen if not c.startswith("_self_")]
                if chosen:
                    self.w("Chooses " + ", ".join(f"`{c}`" for c in chosen) + ".\n")
            leaves = [e for e in file.leaves() if e.path[-1] not in INSTANTIATE_DOCS]
            if not leaves and not builds:
                self.w("Builds nothing.\n")
            for e in leaves:
                dotted = ".".join(e.path)
                if file.package == "_global_":
                    key = dotted
                    if not e.comment and not dotted.startswith("hydra."):  # a key documented where it lives
                        self.entry(key, e.value, "", rendered=f"See {self.link(dotted)}.", value_label="set to")
                        continue
                else:
                    key = f"{group.name}.{dotted}"
                own = anchor(key) if len(group.options) == 1 or name == group.default else None
                self.entry(key, e.value, self.d.describe(group.name, file, e.path), anchor_id=own)

    def command(self, name: str, file: YamlFile, cls: str) -> None:
        self.w(f"## textclf {name} {{#{name}}}\n")
        self.w(f"`conf/{name}.yaml`: {self.md.block(file.header)}\n")
        values = {k: v for k, v in (file.data or {}).items() if k not in ("defaults", "hydra")}
        self.schema_node("", f"{name}.", values, schema_fields(cls), lambda p: self.d.describe(name, file, p))

    def render(self) -> str:
        conf, w = self.conf, self.w
        w("# Configuration reference\n")
        w("Every option of `textclf train`, `textclf predict` and `textclf export`: its default, type, the values "
          "it accepts and what it does. This page is generated from the YAML files under `conf/` (values and "
          "comments) and `textclf/config/schema.py` (types and allowed values) by `scripts/config_reference.py` "
          "each time the documentation is built, so it always matches the code.\n")
        w("Set a key on the command line with `key=value` (`textclf train trainer.epochs=3`), choose a group's "
          "option with `group=option` (`textclf train loss=focal`), and print the composed config with "
          "`textclf train --cfg job`. A default of `???` means the key must be given; `${...}` takes another "
          "key's value.\n")
        self.train()
        w("## Groups {#groups}\n")
        w("Each group is a folder `conf/<group>/`; each option is a file `<option>.yaml` in it. Choose one with "
          "`group=option`, then set its keys with `group.key=value`. The presets, `debug` and the multirun groups "
          "(`@package _global_`) set keys anywhere in the config instead.\n")
        global_groups = [g for g in conf.groups.values()
                         if any(f.package == "_global_" for f in g.options.values())]
        for group in [g for g in conf.groups.values() if g not in global_groups] + global_groups:
            w(f"## {group.name} {{#group-{group.name}}}\n")
            if group.intro:
                w(self.md.block(group.intro) + "\n")
            default = f"`{group.name}={group.default}`" if group.default else "none (nothing unless chosen)"
            w(f"Options: {', '.join(f'`{o}`' for o in group.options)}. Default: {default}.\n")
            if group.name in NODE_GROUPS:
                self.node_group(group)
            else:
                self.target_group(group)
        self.command("predict", conf.predict, "PredictConfig")
        self.command("export", conf.export, "ExportConfig")
        return "\n".join(self.lines).rstrip() + "\n"


def _flatten(data: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(data, dict) and data:
        out = []
        for k, v in data.items():
            out += _flatten(v, path + (str(k),))
        return out
    return [(path, data)] if path else []


def render(conf: Conf | None = None) -> str:
    """The whole reference page, as markdown."""
    return Page(conf or load_conf()).render()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", help="write the page to this file instead of printing it")
    parser.add_argument("--check", action="store_true", help="list the keys without a description; exit 1 if any")
    args = parser.parse_args(argv)
    if args.check:
        missing = undocumented()
        print("\n".join(missing) if missing else "every key in conf/ has a description")
        return 1 if missing else 0
    page = render()
    if args.output:
        Path(args.output).write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
