"""The layers of ARCHITECTURE.md hold: a module imports only from its own layer or one below (function-local
imports included), every module belongs to a layer, and no modules import each other in a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import textclf

PACKAGE = Path(textclf.__file__).parent
#: lowest first; the base is textclf/__init__.py, errors.py and io.py
LAYERS = ("base", "config", "data", "models", "run", "engine", "inference", "observe", "commands", "cli")
BASE = {"textclf", "textclf.errors", "textclf.io"}
CLI = {"textclf.cli", "textclf.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    if module in BASE:
        return "base"
    if module in CLI:
        return "cli"
    layer = module.split(".")[1]
    assert layer in LAYERS, f"{module} belongs to no layer: put it in one of textclf/{{{','.join(LAYERS[1:-1])}}}/"
    return layer


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported textclf module, line) for every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; textclf imports are absolute")
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "textclf":
            for alias in node.names:  # `from textclf.engine import distributed` imports a module
                sub = f"{node.module}.{alias.name}"
                found.append((sub if is_module(sub) else node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "textclf"]
    return found


def graph() -> dict[str, list[tuple[str, int]]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_imports_from_a_layer_above():
    upward = [f"{module} ({layer_of(module)}) line {line} imports {target} ({layer_of(target)})"
              for module, targets in graph().items() for target, line in targets
              if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module))]
    assert not upward, "imports from a higher layer (see ARCHITECTURE.md):\n" + "\n".join(upward)


def test_no_import_cycles():
    edges = {m: {t for t, _ in targets if t != m} for m, targets in graph().items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_see_an_upward_import(tmp_path):
    """The walk above finds imports inside functions too (they hid the cycles this test now forbids)."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from textclf.commands.train import train\n", encoding="utf-8")
    assert imports(source) == [("textclf.commands.train", 2)]
