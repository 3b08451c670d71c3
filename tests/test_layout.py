"""Rules of the code base that a reader should not have to trust: the app serves on the
loopback address by default, and only alphaprune/ui/ imports Streamlit.

    .venv/bin/python -m pytest tests/test_layout.py -q
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_server_listens_on_loopback_by_default():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    makefile = (ROOT / "Makefile").read_text()
    assert "--server.address $(or $(ADDRESS),127.0.0.1)" in makefile


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_ui_package_imports_streamlit():
    library = ROOT / "alphaprune"
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted(library.rglob("*.py"))
        if "streamlit" in _imports(path) and library / "ui" not in path.parents
    ]
    assert offenders == []
