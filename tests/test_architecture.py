"""Imports flow one way: config -> core -> shells -> drivers; the rest uses the public API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "millpond"

# what each layer may import from millpond itself
ALLOWED: dict[str, tuple[str, ...]] = {
    "errors": (),
    "_config": ("millpond.errors",),
    "_core": ("millpond._core", "millpond._config", "millpond.errors"),
    "drivers": ("millpond.drivers", "millpond.errors"),
    "_shell": ("millpond._core", "millpond._config", "millpond.drivers", "millpond.errors"),
    "_sync": (
        "millpond._sync",
        "millpond._shell",
        "millpond._core",
        "millpond._config",
        "millpond.drivers",
        "millpond.errors",
    ),
    "_async": (
        "millpond._async",
        "millpond._shell",
        "millpond._core",
        "millpond._config",
        "millpond.drivers",
        "millpond.errors",
    ),
    "testing": ("millpond.drivers", "millpond.errors"),
}
# layers above the engine may use only the public API: no private module of millpond
PUBLIC_ONLY = ("cli", "compat", "integrations", "observability")


def millpond_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return [n for n in names if n == "millpond" or n.startswith("millpond.")]


def layer_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def test_imports_flow_one_way() -> None:
    problems = []
    checked = 0
    for path in sorted(SRC.rglob("*.py")):
        layer = layer_of(path)
        for name in millpond_imports(path):
            if layer in ALLOWED:
                checked += 1
                if not any(name == a or name.startswith(a + ".") for a in ALLOWED[layer]):
                    problems.append(f"{path.relative_to(SRC)} imports {name}")
            elif layer in PUBLIC_ONLY:
                checked += 1
                if not private_import_allowed(path, name):
                    problems.append(f"{path.relative_to(SRC)} imports private {name}")
    assert checked > 10
    assert not problems, "\n".join(problems)


def private_import_allowed(path: Path, name: str) -> bool:
    """A module above the engine may import a private module only from a package it lives in
    (``compat/mysql.py`` may use ``millpond.compat._shared``; nothing outside ``compat/dbutils/``
    may use ``millpond.compat.dbutils._engine``)."""
    parts = name.split(".")
    for i, part in enumerate(parts[1:], start=1):
        if part.startswith("_"):
            owner = SRC.joinpath(*parts[1:i])
            return owner != SRC and owner in path.parents
    return True


def private_names_imported(path: Path) -> list[str]:
    """``from millpond.x import _name``: a private name of another module."""
    tree = ast.parse(path.read_text(), str(path))
    return [
        f"{node.module}.{a.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("millpond")
        for a in node.names
        if a.name.startswith("_") and not a.name.startswith("__")
    ]


def test_layers_above_the_engine_import_no_private_names() -> None:
    problems = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in sorted(SRC.rglob("*.py"))
        if layer_of(path) in PUBLIC_ONLY
        for name in private_names_imported(path)
    ]
    assert not problems, "\n".join(problems)


def test_private_import_rule() -> None:
    mysql, engine_user = SRC / "compat" / "mysql.py", SRC / "compat" / "dbutils" / "pooled_db.py"
    assert private_import_allowed(mysql, "millpond.compat._shared")
    assert private_import_allowed(engine_user, "millpond.compat.dbutils._engine")
    assert private_import_allowed(engine_user, "millpond.compat._reclaim")
    assert not private_import_allowed(mysql, "millpond.compat.dbutils._engine")
    assert not private_import_allowed(mysql, "millpond._core.state")
    assert not private_import_allowed(SRC / "cli" / "bench.py", "millpond.compat._shared")


def test_compat_starts_nothing_at_import() -> None:
    code = (
        "import threading, millpond.compat.dbutils, millpond.compat.psycopg2\n"
        "print(threading.active_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_importing_millpond_imports_no_driver() -> None:
    code = (
        "import sys, millpond, millpond.testing\n"
        "bad = [m for m in ('psycopg', 'psycopg2', 'pymysql', 'mysql', 'sqlite3', 'rich')"
        " if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
