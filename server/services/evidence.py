"""The signed evidence bundle of each saved checkpoint (see :mod:`tensafe.evidence`).

At save time the worker gathers what the bundle states — the artifact's content and
plaintext hashes, base model, dataset version and commitment, privacy unit, sampling,
the run's DP history and ε (its accountant's, PRV and Google PLD), the latest audit's
ε_lb for the run if any, the charged dataset's ledger head, versions, and the ids of
the tenant key and KEK — and signs it with the current evidence key of the key provider
(:mod:`tensafe.evidence.keys`). The bundle is stored on the artifact row and served
beside the artifact; the public keys, old ones included, at a well-known route.
"""

from __future__ import annotations

import math
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.orm import Session

import tensafe
from server.db.models import DatasetRow, LedgerEventRow, PrivacyBudgetRow
from tensafe.artifacts import TenantKey, TenantKeyring
from tensafe.artifacts.manifest import library_versions
from tensafe.engine import TrainingEngine
from tensafe.evidence import CheckpointEvidence, sign_statement, statement_for
from tensafe.privacy import compute_epsilon


def checkpoint_bundle(
    session: Session,
    *,
    keyring: TenantKeyring,
    private_key: Ed25519PrivateKey,
    engine: TrainingEngine,
    tenant_id: str,
    run_id: str,
    dataset_id: str | None,
    charged_dataset: str,
    labels: dict[str, str],
    artifact_id: str,
    kind: str,
    created_at: datetime,
    content_sha256: str,
    plaintext_sha256: str,
    tenant_key: TenantKey,
    base_model_sha256: str | None,
) -> bytes:
    """The signed bundle (DSSE envelope JSON) of a checkpoint just sealed, signed with
    ``private_key`` (:func:`tensafe.evidence.keys.signing_key`, fetched before
    ``session`` opened: the keyring uses its own connection). ``base_model_sha256`` is
    the frozen base weights' hash, computed where the engine lives."""
    dataset = session.get(DatasetRow, dataset_id) if dataset_id else None
    budget = session.scalars(
        select(PrivacyBudgetRow).where(
            PrivacyBudgetRow.tenant_id == tenant_id, PrivacyBudgetRow.dataset_id == charged_dataset
        )
    ).first()
    audit = session.scalars(
        select(LedgerEventRow)
        .where(LedgerEventRow.run_id == run_id, LedgerEventRow.kind == "privacy_audit")
        .order_by(LedgerEventRow.id.desc())
    ).first()
    dp = engine.dp
    history = dp.accountant.history if dp is not None else ()
    fields: dict[str, object] = {}
    if dp is not None:
        cfg = dp.config
        fields = {
            "history": history,
            "max_grad_norm": cfg.max_grad_norm,
            "dataset_size": cfg.dataset_size,
            "delta": cfg.delta,
            "accountant": cfg.accountant,
            "epsilon_reported": engine.epsilon(),
            "epsilon_prv": compute_epsilon(history=history, delta=cfg.delta, accountant="prv"),
            "epsilon_pld": _pld(history, cfg.delta),
        }
    evidence = CheckpointEvidence(
        artifact_id=artifact_id,
        artifact_kind=kind,
        created_at=created_at.isoformat(),
        content_sha256=content_sha256,
        plaintext_sha256=plaintext_sha256,
        base_model=engine.name,
        base_model_sha256=base_model_sha256,
        dataset_id=dataset_id,
        dataset_version=None if dataset is None else dataset.version,
        dataset_commitment=None if dataset is None else dataset.commitment,
        privacy_unit=labels.get("privacy_unit"),
        sampling=labels.get("sampling"),
        epsilon_lower_bound=None if audit is None else audit.epsilon_lower_bound,
        ledger_seq=None if budget is None else budget.head_seq,
        ledger_link=None if budget is None else budget.head_link,
        code_version=tensafe.__version__,
        library_versions=library_versions(),
        tenant_id=tenant_id,
        tenant_key_version=tenant_key.version,
        kek_id=keyring.kek_id,
        **fields,  # type: ignore[arg-type]
    )
    return sign_statement(statement_for(evidence), private_key)


def _pld(history: tuple[tuple[float, float, int], ...], delta: float) -> float | None:
    """ε by Google dp-accounting PLD (one fixed discretization; an upper bound)."""
    from tensafe.audit.references import pld_epsilon

    if not history or any(sigma == 0 for sigma, _, _ in history):
        return None
    value = pld_epsilon(history, delta=delta)
    return value if math.isfinite(value) else None


__all__ = ["checkpoint_bundle"]
