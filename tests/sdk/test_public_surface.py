"""The SDK's public surface: light imports, a curated __all__, and docs/sdk.md
covering every public name and method."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tg_tinker

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "sdk.md"
FORBIDDEN = ("torch", "transformers", "tensafe", "server", "peft", "opacus", "fastapi")


def test_importing_the_sdk_pulls_nothing_heavy_or_ours():
    code = (
        "import sys, tg_tinker, tg_tinker.data, tg_tinker.types\n"
        "from tg_tinker import ServiceClient, TrainingClient, APIFuture\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_all_is_curated_and_importable():
    names = tg_tinker.__all__
    assert len(names) == len(set(names)) and len(names) <= 45
    for name in names:
        assert getattr(tg_tinker, name) is not None
    from tg_tinker import types  # the wire types stay importable as a module

    assert types.Datum is tg_tinker.Datum


def _docs() -> str:
    return DOCS.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [n for n in tg_tinker.__all__ if n != "__version__"])
def test_every_public_name_is_documented(name):
    assert re.search(rf"\b{re.escape(name)}\b", _docs()), f"{name} missing from docs/sdk.md"


def _public_methods(cls: type) -> list[str]:
    return sorted(n for n, _ in inspect.getmembers(cls) if not n.startswith("_"))


@pytest.mark.parametrize(
    "cls",
    [
        tg_tinker.ServiceClient,
        tg_tinker.TrainingClient,
        tg_tinker.SamplingClient,
        tg_tinker.APIFuture,
    ],
)
def test_every_public_method_is_documented(cls):
    docs = _docs()
    missing = [m for m in _public_methods(cls) if f"`{m}" not in docs and f".{m}(" not in docs]
    assert not missing, f"{cls.__name__}: {missing} missing from docs/sdk.md"


def test_docs_examples_are_valid_python():
    blocks = re.findall(r"```python\n(.*?)```", _docs(), flags=re.S)
    assert len(blocks) >= 10
    for block in blocks:
        ast.parse(block)


def test_public_signatures_have_no_any():
    for cls in (tg_tinker.ServiceClient, tg_tinker.TrainingClient):
        for name in _public_methods(cls):
            member = getattr(cls, name)
            if callable(member):
                assert "Any" not in str(inspect.signature(member)), f"{cls.__name__}.{name}"
