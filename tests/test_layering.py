"""Dependencies point one way: sdk → nothing of ours; tensafe → no web/DB; server → both."""

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
