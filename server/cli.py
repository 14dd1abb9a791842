"""``tensafe serve | db | admin``: run the server, migrate its database, manage tenants.

    tensafe serve [--host H] [--port P] [--data-dir D] [--database-url URL]
    tensafe db upgrade [--revision head]        apply migrations (also done at start)
    tensafe db current                          show the database's revision
    tensafe admin create-tenant NAME [--json]   the tenant id, a train key and a
                                                privacy-officer key (shown once)
    tensafe admin create-key TENANT_ID [--scope S ...] [--label L] [--json]
    tensafe admin list-keys TENANT_ID [--json]  key ids, scopes, labels (no secrets)
    tensafe admin revoke-key KEY_ID
    tensafe admin list-tenants [--json]
    tensafe admin create-budget TENANT_ID DATASET --epsilon-cap E [--delta D] [--reason R]
    tensafe admin raise-budget TENANT_ID DATASET --epsilon-cap E [--reason R]
    tensafe audit report --dataset D [--tenant T] [--format json|html] [-o FILE]
    tensafe audit verify [--dataset D] [--tenant T]   exit 1 naming the first broken row
    tensafe audit canaries [...] [--dataset D]        one-run privacy audit, ε_lb vs ε
                                                      (see server.canary_cli)

Every command reads the same settings as the server (``TENSAFE_*`` variables; the
flags override them). This module is imported whenever the ``tensafe`` CLI starts,
so it imports FastAPI, SQLAlchemy and torch only inside the commands.
Exit status: 0 success, 1 failure, 2 bad input or settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from server.canary_cli import ServerCommands, register_canaries
from server.evidence_cli import register_evidence

_SETTINGS_FLAGS = ("data_dir", "database_url", "environment", "log_level")


def _settings(args: argparse.Namespace, **extra: Any):  # type: ignore[no-untyped-def]
    from server.settings import Settings

    overrides = {k: getattr(args, k) for k in _SETTINGS_FLAGS if getattr(args, k, None) is not None}
    overrides.update({k: v for k, v in extra.items() if v is not None})
    return Settings(**overrides)


def _fail(message: str, status: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _guarded(handler):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        from pydantic import ValidationError as SettingsError

        from server.errors import ServiceError
        from tensafe.errors import TenSafeError

        try:
            return int(handler(args) or 0)
        except SettingsError as exc:
            return _fail(f"invalid settings: {exc}", 2)
        except ServiceError as exc:
            return _fail(str(exc), 2 if exc.category == "user" else 1)
        except (TenSafeError, OSError) as exc:
            return _fail(str(exc))

    return run


# ----------------------------------------------------------------- serve
#: How long an idle keep-alive connection stays open. Longer than the clients' own
#: expiry (httpx: 5 s, the same as uvicorn's default), so the client drops an idle
#: connection first: with equal timeouts a POST sent just as the server closes it is
#: reset, and a client cannot safely resend a POST that may have arrived.
KEEP_ALIVE_S = 30


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app
    from server.json_logs import configure_logging

    settings = _settings(args, host=args.host, port=args.port, worker_threads=args.worker_threads)
    configure_logging(level=settings.log_level, json_lines=settings.log_json)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    return 0


# ----------------------------------------------------------------- db
def _db_upgrade(args: argparse.Namespace) -> int:
    from server.db.migrate import head_revision, upgrade_database
    from server.services.legacy_dp_steps import carry_over_legacy_dp_steps

    settings = _settings(args)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    upgrade_database(settings.resolved_database_url(), revision=args.revision)
    print(f"database at revision {args.revision}")
    if args.revision not in ("head", head_revision()):
        return 0  # the legacy dp_steps rows move into the ledger at head only
    with _budget_service(args) as service:
        carried = carry_over_legacy_dp_steps(service.db, service)
    if carried:
        print(f"carried {carried} step(s) of the old dp_steps table into the privacy ledger")
    return 0


def _db_current(args: argparse.Namespace) -> int:
    from server.db.migrate import current_revision, head_revision
    from server.db.session import make_engine

    settings = _settings(args)
    engine = make_engine(settings.resolved_database_url())
    try:
        current = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    print(f"current: {current or '(empty)'}  head: {head}")
    return 0 if current == head else 1


# ----------------------------------------------------------------- admin
def _admin_session(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from server.db.migrate import upgrade_database
    from server.db.session import Database
    from server.services.tenants import build_hasher

    settings = _settings(args)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    url = settings.resolved_database_url()
    upgrade_database(url)
    return Database(url), build_hasher(settings)


@contextmanager
def _admin_database(args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    """:func:`_admin_session`'s database and hasher; the database is disposed on exit."""
    db, hasher = _admin_session(args)
    try:
        yield db, hasher
    finally:
        db.dispose()


_SHOWN_ONCE = "Store the API key(s) now: they are shown only once."


def _print_key(issued: Any, *, as_json: bool, what: str) -> None:
    scopes = list(issued.scopes)
    if as_json:
        print(
            json.dumps(
                {
                    "tenant_id": issued.tenant_id,
                    "key_id": issued.key_id,
                    "api_key": issued.api_key,
                    "scopes": scopes,
                }
            )
        )
        return
    print(f"{what}: tenant_id={issued.tenant_id} key_id={issued.key_id} scopes={','.join(scopes)}")
    print(f"api_key: {issued.api_key}")
    print(_SHOWN_ONCE, file=sys.stderr)


def _create_tenant(args: argparse.Namespace) -> int:
    """A tenant, its ``train`` key (``api_key``: for the data scientist) and its
    ``privacy-officer`` key (``privacy_officer_api_key``: budgets and caps)."""
    from server.services.scopes import PRIVACY_OFFICER, TRAIN
    from server.services.tenants import create_api_key, create_tenant

    with _admin_database(args) as (db, hasher), db.transaction() as session:
        train = create_tenant(session, name=args.name, hasher=hasher, scopes=(TRAIN,))
        officer = create_api_key(
            session, tenant_id=train.tenant_id, hasher=hasher, scopes=(PRIVACY_OFFICER,)
        )
    if args.json:
        out = {"tenant_id": train.tenant_id, "key_id": train.key_id, "api_key": train.api_key}
        out |= {"privacy_officer_key_id": officer.key_id}
        out |= {"privacy_officer_api_key": officer.api_key}
        print(json.dumps(out))
        return 0
    print(f"tenant created: tenant_id={train.tenant_id}")
    print(f"train key (training runs, datasets, artifacts) key_id={train.key_id}")
    print(f"api_key: {train.api_key}")
    print(f"privacy-officer key (budgets and caps) key_id={officer.key_id}")
    print(f"privacy_officer_api_key: {officer.api_key}")
    print(_SHOWN_ONCE, file=sys.stderr)
    return 0


def _create_key(args: argparse.Namespace) -> int:
    from server.services.tenants import create_api_key

    scopes = args.scope or ["train"]
    with _admin_database(args) as (db, hasher), db.transaction() as session:
        issued = create_api_key(
            session, tenant_id=args.tenant_id, hasher=hasher, label=args.label, scopes=scopes
        )
    _print_key(issued, as_json=args.json, what="key created")
    return 0


def _list_keys(args: argparse.Namespace) -> int:
    from server.services.scopes import SCOPES, decode_scopes
    from server.services.tenants import list_api_keys

    with _admin_database(args) as (db, _), db.sessions() as session:
        rows = [
            {
                "key_id": k.key_id,
                "scopes": [s for s in SCOPES if s in decode_scopes(k.scopes)],
                "label": k.label,
                "created_at": k.created_at.isoformat(),
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in list_api_keys(session, tenant_id=args.tenant_id)
        ]
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        label = f"  {row['label']}" if row["label"] else ""
        scopes = ",".join(row["scopes"]) or "(none)"
        print(f"{row['key_id']}  {scopes}  {state}  {row['created_at']}{label}")
    return 0


def _revoke_key(args: argparse.Namespace) -> int:
    from server.services.tenants import revoke_api_key

    with _admin_database(args) as (db, _), db.transaction() as session:
        revoke_api_key(session, key_id=args.key_id)
    print(f"revoked {args.key_id}")
    return 0


def _list_tenants(args: argparse.Namespace) -> int:
    from server.services.tenants import list_tenants

    with _admin_database(args) as (db, _), db.sessions() as session:
        rows = [
            {
                "tenant_id": t.tenant_id,
                "name": t.name,
                "created_at": t.created_at.isoformat(),
                "disabled": t.disabled_at is not None,
            }
            for t in list_tenants(session)
        ]
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(f"{row['tenant_id']}  {row['name']}  {row['created_at']}")
    return 0


# ----------------------------------------------------------------- budgets / audit
@contextmanager
def _budget_service(args: argparse.Namespace) -> Iterator[Any]:
    """A :class:`BudgetService` on the admin database; closed (and the database
    disposed) on exit."""
    from server.services.admission import default_policy
    from server.services.budgets import BudgetService
    from server.services.keys import build_keyring

    db, _ = _admin_session(args)
    settings = _settings(args)
    service = BudgetService(
        db, build_keyring(settings, db), default_sampling_policy=default_policy(settings)
    )
    try:
        yield service
    finally:
        service.close()
        db.dispose()


def _print_budget(service: Any, tenant_id: str, dataset_id: str) -> None:
    from server.services.audits import budget_summary

    summary = budget_summary(service, tenant_id=tenant_id, dataset_id=dataset_id, exact=False)
    print(
        json.dumps(
            {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in summary.items()}
        )
    )


def _create_budget(args: argparse.Namespace) -> int:
    with _budget_service(args) as service:
        service.create_budget(
            tenant_id=args.tenant_id,
            dataset_id=args.dataset_id,
            epsilon_cap=args.epsilon_cap,
            delta=args.delta,
            accountant=args.accountant,
            actor="cli:admin",
            reason=args.reason,
            sampling_policy=args.sampling_policy,
        )
        _print_budget(service, args.tenant_id, args.dataset_id)
    return 0


def _raise_budget(args: argparse.Namespace) -> int:
    with _budget_service(args) as service:
        service.change_cap(
            tenant_id=args.tenant_id,
            dataset_id=args.dataset_id,
            epsilon_cap=args.epsilon_cap,
            sampling_policy=args.sampling_policy,
            actor="cli:admin",
            reason=args.reason,
        )
        _print_budget(service, args.tenant_id, args.dataset_id)
    return 0


def _resolve_tenant(service: Any, dataset_id: str, tenant_id: str | None) -> str:
    from server.errors import NotFoundError, ValidationError

    if tenant_id is not None:
        return tenant_id
    owners = sorted({b.tenant_id for b in service.list_budgets() if b.dataset_id == dataset_id})
    if not owners:
        raise NotFoundError(f"no privacy budget for dataset {dataset_id!r}", field="dataset")
    if len(owners) > 1:
        raise ValidationError(
            f"dataset {dataset_id!r} exists for several tenants ({', '.join(owners)}); "
            "pass --tenant",
            field="tenant",
        )
    return owners[0]


def _audit_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from server.services.audits import audit_report
    from tensafe.audit import render_html

    with _budget_service(args) as service:
        tenant_id = _resolve_tenant(service, args.dataset, args.tenant)
        report = audit_report(service, tenant_id=tenant_id, dataset_id=args.dataset)
    text = render_html(report) if args.format == "html" else report.to_json() + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output} (chain ok: {report.chain is not None and report.chain.ok})")
    else:
        sys.stdout.write(text)
    return 0 if report.ok else 1


def _audit_verify(args: argparse.Namespace) -> int:
    from server.services.audits import first_broken, verify_chains

    with _budget_service(args) as service:
        results = verify_chains(service, tenant_id=args.tenant, dataset_id=args.dataset)
    for result in results:
        r = result.report
        state = "ok" if r.ok else f"BROKEN at seq {r.first_broken_seq}: {r.reason}"
        print(f"{result.tenant_id}/{result.dataset_id}: {r.checked} row(s) verified; {state}")
    broken = first_broken(results)
    if broken is not None:
        print(
            f"error: ledger of {broken.tenant_id}/{broken.dataset_id} is broken at row seq "
            f"{broken.report.first_broken_seq}: {broken.report.reason}",
            file=sys.stderr,
        )
        return 1
    if not results:
        print("no ledgers to verify")
    return 0


# ----------------------------------------------------------------- wiring
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data directory (default ~/.local/share/tensafe)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)")
    parser.add_argument(
        "--environment", choices=("development", "production"), help="default: production"
    )
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def _add_group(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help_text: str,
    *,
    metavar: str = "ACTION",
) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """Add command group ``name`` (its choice is stored as ``<name>_command``)."""
    group = subparsers.add_parser(name, help=help_text)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar=metavar)


def _add_command(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    handler: Callable[[argparse.Namespace], int],
    help_text: str,
    *positionals: str,
    flags: Callable[[argparse.ArgumentParser], None] = _common,
) -> argparse.ArgumentParser:
    """Add command ``name``: the settings ``flags``, then the plain ``positionals``;
    it runs ``handler`` through :func:`_guarded`. Returns its parser for more arguments."""
    parser = commands.add_parser(name, help=help_text)
    flags(parser)
    for positional in positionals:
        parser.add_argument(positional)
    parser.set_defaults(func=_guarded(handler))
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``serve``, ``db`` and ``admin`` command groups to the ``tensafe`` CLI."""
    serve = _add_command(subparsers, "serve", _serve, "run the TenSafe training server")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--worker-threads", type=int, help="runs trained concurrently (default 2)")

    db = _add_group(subparsers, "db", "database migrations")
    upgrade = _add_command(db, "upgrade", _db_upgrade, "apply migrations up to a revision")
    upgrade.add_argument("--revision", default="head", help="target revision (default head)")
    _add_command(db, "current", _db_current, "show the revision (exit 1 if not head)")

    admin = _add_group(subparsers, "admin", "tenants and API keys")
    tenant = _add_command(
        admin,
        "create-tenant",
        _create_tenant,
        "create a tenant, its train key and its privacy-officer key",
    )
    tenant.add_argument("name", help="tenant name (unique)")
    tenant.add_argument(
        "--json",
        action="store_true",
        help='print {"tenant_id", "key_id", "api_key", "privacy_officer_key_id", '
        '"privacy_officer_api_key"} as JSON',
    )
    key = _add_command(
        admin, "create-key", _create_key, "issue another API key for a tenant", "tenant_id"
    )
    key.add_argument(
        "--scope",
        action="append",
        choices=("train", "privacy-officer", "admin"),
        help="what the key may do (repeat for several; default train): train = runs, "
        "datasets, artifacts; privacy-officer = create budgets, change caps; admin = all",
    )
    key.add_argument("--label", help="a note to remember the key by")
    key.add_argument("--json", action="store_true")
    keys = _add_command(
        admin, "list-keys", _list_keys, "a tenant's API keys and their scopes", "tenant_id"
    )
    keys.add_argument("--json", action="store_true")
    _add_command(admin, "revoke-key", _revoke_key, "revoke an API key", "key_id")
    tenants = _add_command(admin, "list-tenants", _list_tenants, "list tenants")
    tenants.add_argument("--json", action="store_true")
    create_budget = _add_command(
        admin,
        "create-budget",
        _create_budget,
        "create a dataset's privacy budget (ε cap)",
        "tenant_id",
        "dataset_id",
    )
    create_budget.add_argument("--epsilon-cap", type=float, required=True)
    create_budget.add_argument(
        "--delta",
        type=float,
        default=None,
        help="default 1e-5; must be < 0.01, and each run on the dataset needs δ < 1/N",
    )
    create_budget.add_argument("--accountant", choices=("prv", "rdp"), default="prv")
    create_budget.add_argument("--reason")
    policy_help = (
        "server-only: only runs whose batches the server draws from a server-held dataset; "
        "any: client-declared runs too (default: server-only in production, else any)"
    )
    create_budget.add_argument("--sampling-policy", choices=("server-only", "any"),
                               help=policy_help)  # fmt: skip
    raise_budget = _add_command(
        admin,
        "raise-budget",
        _raise_budget,
        "change a dataset's ε cap (never below the ε spent) and/or its sampling policy",
        "tenant_id",
        "dataset_id",
    )
    raise_budget.add_argument("--epsilon-cap", type=float)
    raise_budget.add_argument("--sampling-policy", choices=("server-only", "any"),
                              help=policy_help)  # fmt: skip
    raise_budget.add_argument("--reason")

    audit = _add_group(subparsers, "audit", "privacy ledger: reports and verification")
    report = _add_command(audit, "report", _audit_report, "audit report of one dataset")
    report.add_argument("--dataset", required=True)
    report.add_argument("--tenant", help="the owning tenant (needed if several own the name)")
    report.add_argument("--format", choices=("json", "html"), default="json")
    report.add_argument("-o", "--output", help="write to FILE instead of stdout")
    verify = _add_command(audit, "verify", _audit_verify, "verify the ledger's HMAC chains")
    verify.add_argument("--dataset")
    verify.add_argument("--tenant")
    register_canaries(
        audit,
        ServerCommands(
            add_command=_add_command,
            settings=_settings,
            budget_service=_budget_service,
            resolve_tenant=_resolve_tenant,
        ),
    )
    register_evidence(subparsers)


__all__ = ["register"]
