"""``tensafe audit canaries``: an empirical privacy audit of the DP step, on CPU.

    tensafe audit canaries [--canaries M] [--steps T] [--noise-multiplier S]
        [--sample-rate Q] [--dataset-size N] [--max-grad-norm C] [--delta D]
        [--accountant prv|rdp] [--seed S] [--test-fault sigma/10|no-clipping]
        [-o RESULT.json] [--html PAGE.html] [--dataset D [--tenant T]] [--run RUN_ID]

Trains the tiny model with the production engine and m gradient canaries
(:mod:`tensafe.audit.canary_audit`), prints ε_lb beside ε, writes the result as JSON
and/or an HTML page with the score histograms, and with ``--dataset`` records it in
that dataset's ledger (a ``privacy_audit`` row: the dataset's audit report then shows
it). ``--run RUN_ID`` takes σ, q, C, steps and δ from that run's ledger rows and files
the audit under the run (its checkpoints' evidence bundles then carry the ε_lb): an audit
of the DP step *at the run's setting*, on the tiny model with synthetic records — not of
the run's own updates. Exit status: 0 the audit passed (ε_lb ≤ ε), 1 it failed, 2 bad
input.

``--test-fault`` deliberately breaks the engine, to see the audit fail; recording such
an audit in a ledger is refused outside ``--environment development``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ServerCommands:
    """What this command borrows from :mod:`server.cli` (passed in, so neither module
    imports the other's internals in a cycle)."""

    add_command: Callable[..., argparse.ArgumentParser]
    settings: Callable[[argparse.Namespace], Any]
    budget_service: Callable[[argparse.Namespace], AbstractContextManager[Any]]
    resolve_tenant: Callable[[Any, str, str | None], str]


def _audit_canaries(server: ServerCommands, args: argparse.Namespace) -> int:
    from server.errors import ValidationError
    from server.services.privacy_audits import audited_run, record_privacy_audit
    from tensafe.audit.canary_audit import run_canary_audit
    from tensafe.audit.canary_render import render_canary_html
    from tensafe.errors import ConfigError

    if args.dataset and args.test_fault and server.settings(args).environment != "development":
        raise ValidationError(
            "an audit of a deliberately broken engine (--test-fault) is recorded in a ledger "
            "only with --environment development",
            field="test_fault",
        )
    if args.run:  # audit the step at a run's own parameters, filed under its id
        if args.test_fault:
            raise ValidationError("--run audits a real run's setting: no --test-fault", field="run")
        with server.budget_service(args) as service:
            run = audited_run(service, run_id=args.run)
        args.noise_multiplier, args.sample_rate = run.noise_multiplier, run.sample_rate
        args.max_grad_norm, args.steps, args.delta = run.max_grad_norm, run.steps, run.delta
        args.accountant, args.run_id = run.accountant, args.run
        args.dataset, args.tenant = run.dataset_id, run.tenant_id
        args.reason = args.reason or (
            "the DP step audited at this run's σ, q, C, steps and δ (the production engine on "
            "the tiny model with synthetic records), not inside the run itself"
        )
    tenant_id = None
    if args.dataset:  # before the audit runs: an unknown dataset is refused at once
        with server.budget_service(args) as service:
            tenant_id = server.resolve_tenant(service, args.dataset, args.tenant)
            with service.db.sessions() as session:
                service.get_row(session, tenant_id=tenant_id, dataset_id=args.dataset)
    try:
        result = run_canary_audit(_config(args), run_id=args.run_id)
    except ConfigError as exc:  # bad settings: exit 2, like every other bad input
        raise ValidationError(exc.message, field=exc.field) from None
    if args.output:
        Path(args.output).write_text(result.to_json() + "\n", encoding="utf-8")
    if args.html:
        Path(args.html).write_text(render_canary_html(result), encoding="utf-8")
    print(
        f"ε_lb = {result.epsilon_lower_bound:.4g} ({result.confidence:.0%} lower bound) vs ε = "
        f"{result.epsilon_upper:.4g} (accountant) at δ = {result.delta:g}: "
        f"{'passed' if result.passed else 'FAILED'} — {result.correct}/{result.guesses} "
        f"guesses right, m = {result.canaries}, {result.steps} steps, {result.seconds:.1f} s"
    )
    if tenant_id is not None:
        with server.budget_service(args) as service:
            event = record_privacy_audit(
                service,
                tenant_id=tenant_id,
                dataset_id=args.dataset,
                result=result,
                actor="cli:admin",
                reason=args.reason,
            )
        print(f"recorded in the ledger of {tenant_id}/{args.dataset} as row seq {event.seq}")
    return 0 if result.passed else 1


def _config(args: argparse.Namespace) -> Any:
    """The audit's settings from the flags (raises ConfigError naming a bad one)."""
    from tensafe.audit.canary_audit import CanaryAuditConfig

    return CanaryAuditConfig(
        canaries=args.canaries,
        steps=args.steps,
        noise_multiplier=args.noise_multiplier,
        sample_rate=args.sample_rate,
        dataset_size=args.dataset_size,
        max_grad_norm=args.max_grad_norm,
        delta=args.delta,
        accountant=args.accountant,
        seed=args.seed,
        test_fault=args.test_fault,
    )


def register_canaries(
    audit: argparse._SubParsersAction,  # type: ignore[type-arg]
    server: ServerCommands,
) -> None:
    """Add ``canaries`` to the ``tensafe audit`` group (with the server CLI's
    ``add_command``, so the settings flags and error handling are the same)."""
    parser = server.add_command(
        audit,
        "canaries",
        partial(_audit_canaries, server),
        "one-run empirical privacy audit (ε lower bound)",
    )
    parser.add_argument("--canaries", type=int, default=1000, help="m (default 1000)")
    parser.add_argument("--steps", type=int, default=100, help="noisy steps (default 100)")
    parser.add_argument("--noise-multiplier", type=float, default=8.0, help="σ (default 8)")
    parser.add_argument("--sample-rate", type=float, default=0.5, help="q (default 0.5)")
    parser.add_argument("--dataset-size", type=int, default=16, help="N real records (16)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="C (default 1)")
    parser.add_argument("--delta", type=float, help="δ (default min(1e-5, N^-1.1))")
    parser.add_argument("--accountant", choices=("prv", "rdp"), default="prv")
    parser.add_argument("--seed", type=int, help="seed the audit's own randomness (tests)")
    parser.add_argument(
        "--test-fault",
        choices=("sigma/10", "no-clipping"),
        help="deliberately break the engine (to see the audit fail)",
    )
    parser.add_argument("--run-id", default="canary-audit", help="the audited run's name")
    parser.add_argument(
        "--run",
        help="audit the DP step at this training run's σ, q, C, steps and δ (from its ledger "
        "rows) and record the audit under the run, in its dataset's ledger",
    )
    parser.add_argument("-o", "--output", help="write the result as JSON to FILE")
    parser.add_argument("--html", help="write an HTML page with the score plot to FILE")
    parser.add_argument("--dataset", help="record the audit in this dataset's ledger")
    parser.add_argument("--tenant", help="the dataset's tenant (if several own the name)")
    parser.add_argument("--reason", help="a note recorded with the ledger row")


__all__ = ["ServerCommands", "register_canaries"]
