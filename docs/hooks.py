"""MkDocs hooks (mkdocs.yml: `hooks: [docs/hooks.py]`).

- reference/configuration.md is generated at build time by scripts/config_reference.py from conf/ and
  textclf/config/schema.py, so it can never be stale; nothing is written into docs/.
- architecture.md: when the repository has an ARCHITECTURE.md, its text becomes a page, added to the nav.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "reference/configuration.md"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"


def _generator():
    """scripts/config_reference.py, loaded afresh (scripts/ is not a package), so `mkdocs serve` sees edits."""
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def on_config(config, **kwargs):
    """Watch conf/ and the generator when serving; put the architecture page into the nav when there is one."""
    config.setdefault("watch", [])
    for path in (ROOT / "conf", ROOT / "scripts" / "config_reference.py", ROOT / "textclf" / "config" / "schema.py"):
        if str(path) not in config["watch"]:
            config["watch"].append(str(path))
    nav = config.get("nav")
    if ARCHITECTURE.exists() and nav is not None and not any(
            isinstance(item, dict) and "architecture.md" in item.values() for item in nav):
        at = next((i for i, item in enumerate(nav) if isinstance(item, dict) and "Reference" in item), len(nav))
        nav.insert(at, {"Architecture": "architecture.md"})
    return config


def on_files(files, config, **kwargs):
    files.append(File.generated(config, REFERENCE, content=_generator().render()))
    if ARCHITECTURE.exists():
        files.append(File.generated(config, "architecture.md", content=ARCHITECTURE.read_text(encoding="utf-8")))
    return files
