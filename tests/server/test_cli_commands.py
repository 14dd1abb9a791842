"""``tensafe admin create-budget | raise-budget`` and ``tensafe audit`` from the shell,
and the flags each command group takes (``server/cli.py``, ``server/key_cli.py``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tensafe.cli import build_parser, main

SETTINGS_FLAGS = ["--data-dir", "--database-url", "--environment", "--log-level"]


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, (*path, name))


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_every_server_command_has_a_handler_and_its_settings_flags() -> None:
    groups = {"serve", "db", "admin", "audit", "keys"}
    leaves = [(p, c) for p, c in _leaves(build_parser()) if p and p[0] in groups]
    assert {" ".join(p) for p, _ in leaves} >= {
        "serve",
        "db upgrade",
        "db current",
        "admin create-tenant",
        "admin create-budget",
        "admin raise-budget",
        "audit report",
        "audit verify",
        "keys list",
        "keys shred",
    }
    for path, parser in leaves:
        assert callable(parser.get_default("func")), path
        wanted = SETTINGS_FLAGS[:2] if path[0] == "keys" else SETTINGS_FLAGS
        assert set(wanted) <= _flags(parser), path
        if path[0] == "keys":  # keys commands take only the storage flags
            assert not {"--environment", "--log-level"} & _flags(parser), path


def test_missing_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["admin", "create-budget", "ten_x"])
    assert exc.value.code == 2
    assert "dataset_id, --epsilon-cap" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["keys", "list", "ten_x", "--environment", "production"])
    assert exc.value.code == 2


def test_budget_and_audit_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["admin", "create-tenant", "lab", "--json", *data]) == 0
    tenant = json.loads(capsys.readouterr().out)["tenant_id"]

    create = ["admin", "create-budget", tenant, "ds", "--epsilon-cap", "2", *data]
    assert main([*create, "--delta", "1e-6", "--reason", "pilot"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["epsilon_cap"] == 2 and created["dataset_id"] == "ds"
    assert main(create) == 2  # exists already

    assert main(["admin", "raise-budget", tenant, "ds", "--epsilon-cap", "5", *data]) == 0
    assert json.loads(capsys.readouterr().out)["epsilon_cap"] == 5
    assert main(["admin", "raise-budget", tenant, "nope", "--epsilon-cap", "5", *data]) == 2

    assert main(["audit", "verify", "--dataset", "ds", *data]) == 0
    assert f"{tenant}/ds: " in capsys.readouterr().out
    assert main(["audit", "report", "--dataset", "ds", *data]) == 0
    assert json.loads(capsys.readouterr().out)
    out = tmp_path / "report.html"
    assert (
        main(["audit", "report", "--dataset", "ds", "--format", "html", "-o", str(out), *data]) == 0
    )
    assert "chain ok: True" in capsys.readouterr().out and out.read_text().strip()
    assert main(["audit", "report", "--dataset", "nope", *data]) == 2


def test_create_budget_refuses_a_delta_no_dataset_could_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["admin", "create-tenant", "lab", "--json", *data]) == 0
    tenant = json.loads(capsys.readouterr().out)["tenant_id"]
    create = ["admin", "create-budget", tenant, "ds", "--epsilon-cap", "2", *data]
    assert main([*create, "--delta", "0.09"]) != 0
    assert "delta: must be < 0.01" in capsys.readouterr().err
    assert main(["audit", "verify", "--dataset", "ds", *data]) == 0  # nothing was created
    assert "ds" not in capsys.readouterr().out
