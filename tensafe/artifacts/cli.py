"""``tensafe artifact``: decrypt, verify and inspect artifacts from the shell.

    tensafe artifact decrypt FILE --key-file K -o DIR   full verification, then files
    tensafe artifact verify FILE [--content-hash H]      ciphertext integrity, no key
    tensafe artifact inspect FILE                         the public header as JSON

Exit status: 0 success, 1 integrity or key failure, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tensafe.artifacts.format import body_layout
from tensafe.artifacts.payload import decrypt_to_directory
from tensafe.artifacts.reader import read_header, verify_ciphertext
from tensafe.artifacts.tenant_key import TenantKeySet, read_key_file
from tensafe.errors import (
    ArtifactFormatError,
    ConfigError,
    IntegrityError,
    KeyProviderError,
    TenSafeError,
)


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _run(action: argparse.Namespace) -> int:
    try:
        return int(action.handler(action))
    except (IntegrityError, KeyProviderError) as exc:
        return _fail(str(exc), 1)
    except (ArtifactFormatError, ConfigError, FileExistsError) as exc:
        return _fail(str(exc), 2)
    except TenSafeError as exc:
        return _fail(str(exc), 1)
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 2)


def _decrypt(args: argparse.Namespace) -> int:
    keys = [read_key_file(path) for path in args.key_file]
    tenants = {key.tenant_id for key in keys}
    if len(tenants) != 1:
        return _fail("all --key-file keys must belong to one tenant", 2)
    with open(args.file, "rb") as src:
        result = decrypt_to_directory(
            src,
            args.output,
            keys=TenantKeySet(keys),
            tenant_id=tenants.pop(),
            artifact_id=args.artifact_id,
            expected_content_hash=args.content_hash,
            overwrite=args.overwrite,
        )
    summary = {
        "directory": str(result.directory),
        "files": [path.name for path in result.files],
        "kind": result.manifest.kind,
        "artifact_id": result.header.artifact_id,
        "content_hash": result.content_hash,
        "plaintext_sha256": result.manifest.plaintext_sha256,
    }
    print(json.dumps(summary, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    with open(args.file, "rb") as src:
        report = verify_ciphertext(src, expected_content_hash=args.content_hash)
    summary = {
        "ok": True,
        "content_hash_checked": args.content_hash is not None,
        "content_hash": report.content_hash,
        "size_bytes": report.size_bytes,
        "chunk_count": report.chunk_count,
        "header": report.header.public_dict(),
    }
    print(json.dumps(summary, indent=2))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    path = Path(args.file)
    with path.open("rb") as src:
        header = read_header(src)
    info: dict[str, object] = header.public_dict()
    size = path.stat().st_size
    info["size_bytes"] = size
    try:
        layout = body_layout(size - header.length, header.chunk_size)
    except IntegrityError:
        info["framing"] = "invalid (truncated or extended)"
    else:
        info["framing"] = "consistent"
        info["chunk_count"] = layout.chunk_count
        info["payload_size"] = layout.payload_size
    print(json.dumps(info, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``artifact`` command group to the ``tensafe`` CLI."""
    group = subparsers.add_parser("artifact", help="decrypt, verify and inspect artifacts")
    commands = group.add_subparsers(dest="artifact_command", required=True, metavar="ACTION")

    decrypt = commands.add_parser(
        "decrypt", help="verify and decrypt an artifact into a directory (safetensors + manifest)"
    )
    decrypt.add_argument("file", help="the artifact file")
    decrypt.add_argument(
        "--key-file",
        action="append",
        required=True,
        help="exported tenant key (JSON); repeat for several key versions",
    )
    decrypt.add_argument("-o", "--output", required=True, help="output directory")
    decrypt.add_argument(
        "--artifact-id", help="require this artifact id (default: the id in the header)"
    )
    decrypt.add_argument("--content-hash", help="also require this ciphertext SHA-256 (hex)")
    decrypt.add_argument("--overwrite", action="store_true", help="replace existing files")
    decrypt.set_defaults(func=_run, handler=_decrypt)

    verify = commands.add_parser("verify", help="check ciphertext integrity without a key")
    verify.add_argument("file", help="the artifact file")
    verify.add_argument("--content-hash", help="expected SHA-256 of the whole file (hex)")
    verify.set_defaults(func=_run, handler=_verify)

    inspect = commands.add_parser("inspect", help="print the public header as JSON")
    inspect.add_argument("file", help="the artifact file")
    inspect.set_defaults(func=_run, handler=_inspect)


__all__ = ["register"]
