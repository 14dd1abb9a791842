"""The ``tensafe`` command line.

Each command group lives next to the code it drives and registers itself through
a ``register(subparsers)`` function. The library's own groups are listed below;
packages layered on top (the server: ``serve``, ``db``, ``admin``, ``audit``) add
theirs through the ``tensafe.cli`` entry-point group, so this library never
imports them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

# Modules that expose ``register(subparsers: argparse._SubParsersAction) -> None``.
# Each registered sub-command sets ``func(args) -> int`` as its default.
_COMMAND_MODULES: tuple[str, ...] = (
    "tensafe.models.cli",
    "tensafe.artifacts.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available command group."""
    parser = argparse.ArgumentParser(prog="tensafe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    loaders = [
        (name, lambda n=name: importlib.import_module(n).register) for name in _COMMAND_MODULES
    ]
    loaders += [
        (ep.value, ep.load)
        for ep in sorted(entry_points(group="tensafe.cli"), key=lambda e: e.name)
    ]
    for name, load in loaders:
        try:
            register = load()
        except ModuleNotFoundError as exc:
            # A group whose optional extra (torch, fastapi, ...) is not installed is
            # left out; a missing module *inside* an installed group is a bug.
            if exc.name and not name.startswith(exc.name.split(".")[0] + "."):
                continue
            if exc.name and name.split(":")[0].startswith(exc.name):
                continue
            raise
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
