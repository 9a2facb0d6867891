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
                if any(part.startswith("_") for part in name.split(".")[1:]):
                    problems.append(f"{path.relative_to(SRC)} imports private {name}")
    assert checked > 10
    assert not problems, "\n".join(problems)


def test_importing_millpond_imports_no_driver() -> None:
    code = (
        "import sys, millpond, millpond.testing\n"
        "bad = [m for m in ('psycopg', 'psycopg2', 'pymysql', 'mysql', 'sqlite3', 'rich')"
        " if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
