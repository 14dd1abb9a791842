"""``tensafe model ...``: prepare and inspect models.

    tensafe model prepare [NAME] [--cache-dir DIR]   convert a packaged model; print its directory
    tensafe model info NAME [--cache-dir DIR]        load a model; print a JSON summary

This module imports no torch or transformers at import time, so registering the
group keeps ``tensafe --help`` fast and works on installs without the engine extra.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tensafe.errors import TenSafeError

_DEFAULT_MODEL = "smollm2-135m-instruct"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``model`` command group to the top-level parser."""
    group = subparsers.add_parser("model", help="prepare and inspect models")
    commands = group.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")

    prepare = commands.add_parser(
        "prepare",
        help="prepare a packaged model in the cache (idempotent) and print its directory",
    )
    prepare.add_argument("name", nargs="?", default=_DEFAULT_MODEL, metavar="NAME")
    _add_cache_dir(prepare)
    prepare.set_defaults(func=_prepare)

    info = commands.add_parser("info", help="load a model and print a JSON summary")
    info.add_argument("name", metavar="NAME", help="alias, hub id, directory or tiny-llama[:opts]")
    _add_cache_dir(info)
    info.set_defaults(func=_info)


def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="TenSafe cache (default: $TENSAFE_CACHE_DIR or ~/.cache/tensafe)",
    )


def _prepare(args: argparse.Namespace) -> int:
    try:
        from tensafe.models.smollm2 import SMOLLM2_NAME, is_smollm2_ref, prepare_default_model
    except ModuleNotFoundError as exc:
        return _missing_engine(exc)
    if not is_smollm2_ref(args.name):
        print(
            f"error: name: only packaged models can be prepared; allowed: {SMOLLM2_NAME}",
            file=sys.stderr,
        )
        return 2
    try:
        directory = prepare_default_model(cache_dir=args.cache_dir)
    except TenSafeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(directory)
    return 0


def _info(args: argparse.Namespace) -> int:
    try:
        from tensafe.models.info import model_info
        from tensafe.models.resolve import load_causal_lm
    except ModuleNotFoundError as exc:
        return _missing_engine(exc)
    try:
        loaded = load_causal_lm(args.name, cache_dir=args.cache_dir)
    except TenSafeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = {"source": loaded.source, **model_info(loaded.model).to_dict()}
    summary["name"] = loaded.name
    print(json.dumps(summary, indent=2))
    return 0


def _missing_engine(exc: ModuleNotFoundError) -> int:
    print(
        f"error: the model commands need the engine extra ({exc.name} is missing): "
        "pip install 'tensafe[engine]'",
        file=sys.stderr,
    )
    return 1


__all__ = ["register"]
