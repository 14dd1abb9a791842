"""The ``tensafe`` command line.

Each command group lives next to the code it drives and registers itself here
through a ``register(subparsers)`` function, so this module stays a thin index.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a group whose extra is not installed
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
