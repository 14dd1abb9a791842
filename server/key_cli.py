"""``tensafe keys``: tenant-key rotation, KEK rotation and crypto-shredding.

    tensafe keys list TENANT_ID                    key versions held for a tenant
    tensafe keys rotate-tenant TENANT_ID           new key version for new artifacts
    tensafe keys rotate-kek                        new KEK version; rewrap every tenant key
    tensafe keys shred TENANT_ID --yes             destroy all of a tenant's keys (irreversible)
    tensafe keys rotate-evidence                   new evidence signing key for new bundles
    tensafe keys evidence-keys [--json]            the evidence public keys, old ones too

All commands take ``--data-dir`` / ``--database-url`` like ``tensafe admin`` and act on the
same database and key provider the server uses. Key material is never printed.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from typing import Any

from server.cli import _add_command, _add_group, _admin_session, _fail, _settings


def _keyring(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from server.services.keys import build_keyring

    db, _ = _admin_session(args)
    return db, build_keyring(_settings(args), db)


def _require_tenant(db: Any, tenant_id: str) -> None:
    from server.db.models import Tenant
    from server.errors import NotFoundError

    with db.transaction() as session:
        if session.get(Tenant, tenant_id) is None:
            raise NotFoundError(f"no tenant {tenant_id!r}", field="tenant_id")


def _list(args: argparse.Namespace) -> int:
    db, keyring = _keyring(args)
    _require_tenant(db, args.tenant_id)
    versions = keyring.key_versions(args.tenant_id)
    print(json.dumps({"tenant_id": args.tenant_id, "versions": list(versions)}))
    return 0


def _rotate_tenant(args: argparse.Namespace) -> int:
    db, keyring = _keyring(args)
    _require_tenant(db, args.tenant_id)
    key = keyring.rotate_tenant_key(args.tenant_id)
    print(
        f"tenant {args.tenant_id}: new artifacts now use key {key.key_id} version {key.version}; "
        "artifacts sealed under earlier versions stay readable"
    )
    return 0


def _rotate_kek(args: argparse.Namespace) -> int:
    _, keyring = _keyring(args)
    result = keyring.rotate_kek()
    print(
        f"KEK rotated to version {result.kek_version}; {result.rewrapped} tenant key record(s) "
        "rewrapped; no artifact was touched"
    )
    return 0


def _rotate_evidence(args: argparse.Namespace) -> int:
    from tensafe.evidence.keys import rotate_signing_key

    _, keyring = _keyring(args)
    key = rotate_signing_key(keyring)
    print(
        f"evidence signing key rotated to version {key.version} (key id {key.keyid}); bundles "
        "signed earlier keep verifying with the earlier public keys, which stay published"
    )
    return 0


def _evidence_keys(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tensafe.evidence.keys import published_keys

    _, keyring = _keyring(args)
    keys = published_keys(keyring)
    if args.json:
        print(json.dumps([asdict(k) for k in keys], indent=2))
        return 0
    for key in keys:
        mark = " (current)" if key.current else ""
        print(f"version {key.version}{mark}: key id {key.keyid}\n{key.public_key_pem}")
    return 0


def _shred(args: argparse.Namespace) -> int:
    if not args.yes:
        return _fail("crypto-shredding is irreversible: pass --yes to confirm", 2)
    db, keyring = _keyring(args)
    _require_tenant(db, args.tenant_id)
    print(keyring.destroy_tenant_keys(args.tenant_id))
    return 0


def _flags(parser: argparse.ArgumentParser) -> None:
    """The settings flags of every ``keys`` command (fewer than ``tensafe admin``'s)."""
    parser.add_argument("--data-dir", dest="data_dir")
    parser.add_argument("--database-url", dest="database_url")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``keys`` command group."""
    commands = _add_group(
        subparsers, "keys", "tenant keys: rotation and crypto-shredding", metavar="COMMAND"
    )
    add = partial(_add_command, commands, flags=_flags)
    add("list", _list, "key versions held for a tenant", "tenant_id")
    add(
        "rotate-tenant",
        _rotate_tenant,
        "new key version for the tenant's new artifacts",
        "tenant_id",
    )
    add("rotate-kek", _rotate_kek, "new KEK version; rewrap all tenant keys")
    shred = add(
        "shred",
        _shred,
        "destroy every key of a tenant (its artifacts become unreadable)",
        "tenant_id",
    )
    shred.add_argument("--yes", action="store_true", help="confirm the irreversible shred")
    add("rotate-evidence", _rotate_evidence, "new evidence signing key for new bundles")
    keys = add("evidence-keys", _evidence_keys, "the evidence public keys (PEM), old ones too")
    keys.add_argument("--json", action="store_true")
