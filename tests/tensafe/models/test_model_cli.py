"""``tensafe model prepare|info`` (driven through this group's own parser)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tensafe.models import cli
from tensafe.models.cache import STAMP_FILE


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tensafe")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_info_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["model", "info", "tiny-llama:tied=false"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["name"] == "tiny-llama:tied=false"
    assert (summary["arch"], summary["vocab_size"], summary["source"]) == (
        "llama",
        49152,
        "builtin",
    )
    assert summary["tied_embeddings"] is False
    assert summary["total_params"] == 3219776 + 49152 * 64


def test_info_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["model", "info", "acme/nothing", "--cache-dir", str(tmp_path)]) == 1
    assert "tried, in order" in capsys.readouterr().err


def test_prepare_is_idempotent_and_prints_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepared = tmp_path / "models" / "smollm2-135m-instruct"
    prepared.mkdir(parents=True)
    (prepared / STAMP_FILE).write_text("{}")  # already prepared: returns without converting
    assert run(["model", "prepare", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(prepared)
    assert (
        run(
            [
                "model",
                "prepare",
                "HuggingFaceTB/SmolLM2-135M-Instruct",
                "--cache-dir",
                str(tmp_path),
            ]
        )
        == 0
    )


def test_prepare_rejects_other_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["model", "prepare", "gpt2"]) == 2
    assert "allowed: smollm2-135m-instruct" in capsys.readouterr().err


def test_registering_the_group_imports_no_torch() -> None:
    code = (
        "import sys, tensafe.models.cli; "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
