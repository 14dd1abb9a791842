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
            if _is_optional(name, exc):
                continue
            raise
        register(sub)
    return parser


def _is_optional(group: str, exc: ModuleNotFoundError) -> bool:
    """Whether a failed import only means the group is not installed: the group's
    module itself is absent, or a third-party dependency of it (torch, fastapi, ...)
    is. A missing module *inside* our own package is a bug and is re-raised."""
    if not exc.name:
        return False
    module = group.split(":")[0]
    third_party = exc.name.split(".")[0] != module.split(".")[0]
    return third_party or module.startswith(exc.name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
