"""Dependencies point one way: sdk → nothing of ours; tensafe → no web/DB; server → both.

``lint-imports`` (import-linter, contracts in pyproject.toml) checks static imports;
these tests add what it cannot see — ``importlib.import_module("...")`` and
``__import__("...")`` with a literal name — and the package graph inside ``server``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WEB_DB = {
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "boto3",
    "botocore",
    "server",
    "sqlite3",
    "httpx",
}
OURS = {"tensafe", "server"}
HEAVY = {"torch", "transformers", "peft", "opacus", "safetensors"}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, imported at module level?) for every import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, bool]] = []
    module_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], id(node) in module_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module.split(".")[0], id(node) in module_level))
    return found


_DYNAMIC_IMPORTERS = {"import_module", "__import__"}


def _dynamic_imports(tree: ast.AST) -> list[tuple[str, int]]:
    """(module, line) of ``importlib.import_module("m")`` / ``import_module("m")`` /
    ``__import__("m")`` calls whose module is a string literal."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        first = node.args[0]
        if (
            name in _DYNAMIC_IMPORTERS
            and isinstance(first, ast.Constant)
            and isinstance(first.value, str)
        ):
            found.append((first.value, node.lineno))
    return found


def forbidden_imports(path: Path, forbidden: set[str]) -> list[str]:
    """``file:line: module`` for every static or literal dynamic import of a forbidden
    top-level package in ``path`` (at any depth: module level or inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    hits: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            hits += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            hits.append((node.module, node.lineno))
    hits += _dynamic_imports(tree)
    return [f"{path}:{line}: {m}" for m, line in hits if m.split(".")[0] in forbidden]


def _py_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_tensafe_imports_no_web_or_db_code():
    bad = [
        (str(p.relative_to(ROOT)), m)
        for p in _py_files("tensafe")
        for m, _ in _imports(p)
        if m in WEB_DB
    ]
    assert not bad, bad


def test_sdk_imports_nothing_of_ours_and_no_heavy_ml_at_module_level():
    files = _py_files("sdk/tg_tinker")
    assert files
    bad = [(str(p.relative_to(ROOT)), m) for p in files for m, _ in _imports(p) if m in OURS]
    heavy = [
        (str(p.relative_to(ROOT)), m) for p in files for m, top in _imports(p) if m in HEAVY and top
    ]
    assert not bad, bad
    assert not heavy, heavy


@pytest.mark.parametrize("module", ["tg_tinker", "tensafe.errors", "tensafe.models.cli"])
def test_light_modules_do_not_pull_torch(module):
    heavy = sorted(HEAVY)
    code = (
        f"import sys, {module}; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_no_forbidden_dynamic_or_static_imports_in_tensafe_and_sdk():
    bad = [hit for p in _py_files("tensafe") for hit in forbidden_imports(p, WEB_DB)]
    bad += [hit for p in _py_files("sdk/tg_tinker") for hit in forbidden_imports(p, OURS)]
    assert not bad, bad


def test_the_checker_catches_what_it_should(tmp_path: Path):
    module = tmp_path / "added_to_tensafe.py"
    module.write_text(
        "import importlib\n"
        "import sqlite3\n"
        "def load():\n"
        "    db = importlib.import_module('server.db')\n"
        "    return db, __import__('sqlalchemy.orm'), importlib.import_module(name)\n"
    )
    assert forbidden_imports(module, WEB_DB) == [
        f"{module}:2: sqlite3",
        f"{module}:4: server.db",
        f"{module}:5: sqlalchemy.orm",
    ]


# ----------------------------------------------------------------- inside server
def _server_package_graph() -> dict[str, set[str]]:
    """server's top-level packages/modules (api, services, worker, queue, db, ...) →
    the ones they import, from every import statement (function-level ones too)."""
    graph: dict[str, set[str]] = {}
    for path in _py_files("server"):
        rel = path.relative_to(ROOT / "server")
        if rel.parts[0] == "db" and "migrations" in rel.parts:
            continue  # Alembic scripts, run by Alembic, not imported
        if len(rel.parts) == 1 and rel.name == "__init__.py":
            continue
        source = rel.parts[0].removesuffix(".py")
        targets = graph.setdefault(source, set())
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                if parts[0] == "server" and len(parts) > 1 and parts[1] != source:
                    targets.add(parts[1])
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (``[a, b, a]``), or ``None`` if it is acyclic."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_server_packages_import_each_other_without_cycles():
    graph = _server_package_graph()
    assert {"api", "services", "worker", "queue", "db", "storage"} <= set(graph)
    assert import_cycle(graph) is None, import_cycle(graph)
    assert not graph["services"] & {"api", "worker"}, graph["services"]
    assert "api" not in graph["worker"]
    assert "worker" not in graph["api"]


def test_the_cycle_check_finds_a_cycle():
    graph = {"services": {"queue", "worker"}, "worker": {"services"}, "queue": set()}
    assert import_cycle(graph) == ["services", "worker", "services"]


def test_import_linter_contracts_are_kept():
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint)] if lint.exists() else ["lint-imports"]
    out = subprocess.run(
        [*command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
