"""``tensafe evidence verify``: check an evidence bundle offline.

    tensafe evidence verify BUNDLE --artifact FILE --public-key KEY [--json] [--no-epsilon]

It lives with the server's commands (the library may not import the SDK) but needs no
server and no tenant key: the signature (Ed25519 over the DSSE encoding), that the
artifact is the bundle's subject, and ε recomputed from the predicate with Google
dp-accounting (:mod:`tg_tinker.evidence`). Exit status: 0 verified, 1 not (the reason
is printed), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys


def _verify(args: argparse.Namespace) -> int:
    from tg_tinker.evidence import EvidenceError, verify_bundle

    try:
        result = verify_bundle(
            args.bundle,
            artifact=args.artifact,
            public_key=args.public_key,
            recompute_epsilon=not args.no_epsilon,
        )
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EvidenceError as exc:
        print(f"NOT VERIFIED: {exc.reason}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    "verified": True,
                    "keyid": result.keyid,
                    "artifact_id": result.artifact_id,
                    "content_sha256": result.content_sha256,
                    "plaintext_sha256": result.plaintext_sha256,
                    "epsilon_recomputed": result.epsilon_recomputed,
                    "epsilon_check": result.epsilon_check,
                    "predicate": result.predicate,
                },
                indent=2,
            )
        )
    else:
        eps = result.predicate.get("epsilon", {})
        print(
            f"verified: artifact {result.artifact_id} (sha256 {result.content_sha256[:16]}…), "
            f"signed by key {result.keyid[:16]}…; ε = {eps.get('reported')} "
            f"({result.epsilon_check}); ε_lb = {result.predicate.get('epsilon_lower_bound')}"
        )
    return 0


def register_evidence(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``evidence`` command group to the ``tensafe`` CLI."""
    group = subparsers.add_parser("evidence", help="signed evidence bundles of checkpoints")
    commands = group.add_subparsers(dest="evidence_command", required=True, metavar="ACTION")
    verify = commands.add_parser("verify", help="verify a bundle offline")
    verify.add_argument("bundle", help="the bundle (DSSE envelope, JSON)")
    verify.add_argument("--artifact", required=True, help="the encrypted artifact (.tsf)")
    verify.add_argument("--public-key", required=True, help="the server's evidence key (PEM)")
    verify.add_argument("--json", action="store_true", help="print the verified predicate")
    verify.add_argument("--no-epsilon", action="store_true", help="skip recomputing ε")
    verify.set_defaults(func=_verify)


__all__ = ["register_evidence"]
