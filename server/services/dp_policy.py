"""Each tenant's DP policy: the settings its privacy officer gives every new DP run.

One policy per tenant (``PUT /v1/dp_policy``, a ``privacy-officer`` key; table
``dp_policies``, migration 0011). It names the dataset whose budget new runs are charged
to, σ or a target ε (+ planned steps), the clipping norm C, optionally δ, and whether
clients may change those settings (``client_overrides``):

* ``tighten`` (default): a client may only ask for *more* privacy — a larger σ, a
  smaller target ε, more planned steps (σ calibrated for more steps is larger), a
  smaller C, a smaller δ (only where the policy sets one). A client may not name another
  dataset, switch DP off, or trade σ for a target ε (or back).
* ``none``: a client may not change any of them (repeating the policy's value is fine).

Whatever the policy does not set — N and q of a client-declared run, the accountant,
``secure_mode``, the sampling of a server-held dataset — stays the client's, guarded as
before (declared-batch guards, the budget's sampling policy and cap).

The policy is applied when a run is created — a native ``POST /v1/training_runs`` and a
Tinker ``create_model`` alike (:func:`apply_dp_policy`) — and the run stores the
settings it got; changing the policy later does not change existing runs. The ledger is
unchanged: each noisy step records its σ, q, C and dataset as before.

Example:
    >>> policy = DPPolicyInfo(
    ...     dataset_id="notes", noise_multiplier=1.0, max_grad_norm=0.5,
    ...     updated_by="api:k", updated_at=utcnow(),
    ... )
    >>> settings = apply_dp_policy(policy, requested={"noise_multiplier": 2.0}, field=str)
    >>> (settings["dataset_id"], settings["noise_multiplier"], settings["max_grad_norm"])
    ('notes', 2.0, 0.5)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from sqlalchemy.exc import IntegrityError as SAIntegrityError
from tg_tinker.types import DPConfig, DPPolicy, DPPolicyInfo, TrainingConfig

from server.db.models import DPPolicyRow, utcnow
from server.db.session import Database
from server.errors import ConflictError, NotFoundError, ValidationError
from server.services.budgets import BudgetService, no_budget
from tensafe.privacy.config import (
    MAX_NOISE_MULTIPLIER,
    MAX_TARGET_EPSILON,
    MIN_NOISE_MULTIPLIER,
)

#: The ``DPConfig`` fields a policy decides; every other field stays the client's.
POLICY_FIELDS: Final = (
    "dataset_id",
    "noise_multiplier",
    "target_epsilon",
    "planned_steps",
    "max_grad_norm",
    "target_delta",
)

#: For each policy field: +1 if a larger value is tighter, -1 if smaller is.
_TIGHTER: Final = {
    "noise_multiplier": +1,
    "planned_steps": +1,
    "target_epsilon": -1,
    "max_grad_norm": -1,
    "target_delta": -1,
}


# ------------------------------------------------------------------ storage
def get_dp_policy(db: Database, *, tenant_id: str) -> DPPolicyInfo | None:
    """The tenant's policy, or ``None`` if its privacy officer set none."""
    with db.sessions() as session:
        row = session.get(DPPolicyRow, tenant_id)
        return None if row is None else _info(row)


def read_dp_policy(db: Database, *, tenant_id: str) -> DPPolicyInfo:
    """The tenant's policy.

    Raises:
        NotFoundError: (``dp_policy``) the tenant has none (another tenant's is never
            visible).
    """
    policy = get_dp_policy(db, tenant_id=tenant_id)
    if policy is None:
        raise NotFoundError(
            "this tenant has no DP policy; a privacy officer sets one with PUT /v1/dp_policy",
            field="dp_policy",
        )
    return policy


def set_dp_policy(
    db: Database,
    budgets: BudgetService,
    *,
    tenant_id: str,
    policy: DPPolicy,
    actor: str,
) -> DPPolicyInfo:
    """Create or replace the tenant's policy; new runs get it, existing runs keep the
    settings they were created with.

    Raises:
        ValidationError: a σ or target ε outside what a run accepts (naming the field).
        ConflictError: (``dataset_id``) the dataset has no privacy budget and the
            server creates none on first use; (``dp_policy``) a concurrent request
            created the tenant's first policy.
    """
    _check_ranges(policy)
    with db.sessions() as session:
        has_budget = (
            budgets.find_row(session, tenant_id=tenant_id, dataset_id=policy.dataset_id) is not None
        )
    if not has_budget and budgets.default_epsilon_cap is None:
        raise no_budget(policy.dataset_id)
    values = policy.model_dump()
    try:
        with db.transaction() as session:
            row = session.get(DPPolicyRow, tenant_id)
            if row is None:
                row = DPPolicyRow(tenant_id=tenant_id)
                session.add(row)
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_by = actor
            row.updated_at = utcnow()
            session.flush()
            return _info(row)
    except SAIntegrityError:  # another request created the tenant's first policy meanwhile
        raise ConflictError(
            "the DP policy was set by another request at the same time; read it and retry",
            field="dp_policy",
        ) from None


def delete_dp_policy(db: Database, *, tenant_id: str) -> None:
    """Remove the tenant's policy (new runs then take their settings from the client
    and the server's defaults again).

    Raises:
        NotFoundError: (``dp_policy``) the tenant has none.
    """
    with db.transaction() as session:
        row = session.get(DPPolicyRow, tenant_id)
        if row is None:
            raise NotFoundError("this tenant has no DP policy", field="dp_policy")
        session.delete(row)


def _info(row: DPPolicyRow) -> DPPolicyInfo:
    return DPPolicyInfo(
        dataset_id=row.dataset_id,
        noise_multiplier=row.noise_multiplier,
        target_epsilon=row.target_epsilon,
        planned_steps=row.planned_steps,
        max_grad_norm=row.max_grad_norm,
        target_delta=row.target_delta,
        client_overrides=row.client_overrides,  # type: ignore[arg-type]
        updated_by=row.updated_by,
        updated_at=row.updated_at,
    )


def _check_ranges(policy: DPPolicy) -> None:
    sigma, epsilon = policy.noise_multiplier, policy.target_epsilon
    if sigma is not None and not MIN_NOISE_MULTIPLIER <= sigma <= MAX_NOISE_MULTIPLIER:
        raise ValidationError(
            f"must be in [{MIN_NOISE_MULTIPLIER:g}, {MAX_NOISE_MULTIPLIER:g}]",
            field="noise_multiplier",
        )
    if epsilon is not None and epsilon > MAX_TARGET_EPSILON:
        raise ValidationError(f"must be at most {MAX_TARGET_EPSILON:g}", field="target_epsilon")


# ------------------------------------------------------------------ applying
def apply_dp_policy(
    policy: DPPolicyInfo,
    *,
    requested: Mapping[str, Any],
    field: Callable[[str], str],
) -> dict[str, Any]:
    """The ``DPConfig`` fields of a new run under ``policy``: ``requested`` (the fields
    the client gave; ``None`` values count as not given) with the policy's settings
    filled in where the client gave none, and checked where it gave one.

    ``field`` names a ``DPConfig`` field as the client wrote it (``dp_config.<f>`` for a
    native run, ``user_metadata.tensafe.dp.<f>`` for a Tinker one) in refusals.

    Raises:
        ValidationError: naming the client's key — DP switched off (``enabled``),
            another dataset, a looser value than the policy's, σ where the policy sets a
            target ε (or the reverse), δ where the policy sets none, or any change at
            all under ``client_overrides="none"``.
    """
    given = {k: v for k, v in requested.items() if v is not None}
    if given.get("enabled") is False:
        raise _refusal(
            field("enabled"),
            "this tenant's DP policy requires differential privacy for every run",
        )
    settings = policy.model_dump(include=set(POLICY_FIELDS), exclude_none=True)
    noise = "noise_multiplier" if policy.noise_multiplier is not None else "target_epsilon"
    other = "target_epsilon" if noise == "noise_multiplier" else "noise_multiplier"
    if other in given:
        raise _refusal(
            field(other),
            f"this tenant's DP policy sets {noise} = {settings[noise]!r}; "
            f"give {noise} instead (or leave both out)",
        )
    for name in POLICY_FIELDS:
        if name not in given:
            continue
        value, fixed = given[name], settings.get(name)
        if name == "planned_steps" and noise == "noise_multiplier":
            settings[name] = value  # informational when σ is fixed
            continue
        if fixed is None:  # target_delta: the policy keeps the server's default δ
            raise _refusal(
                field(name), f"this tenant's DP policy leaves {name} to the server's default"
            )
        if value == fixed:
            continue
        if name == "dataset_id":
            raise _refusal(
                field(name),
                f"this tenant's DP policy charges every run to dataset {fixed!r}; leave it "
                f"out or name {fixed!r}",
            )
        if policy.client_overrides == "none":
            raise _refusal(
                field(name),
                f"this tenant's DP policy sets {name} = {fixed!r} and lets clients change "
                "none of its settings",
            )
        if (value - fixed) * _TIGHTER[name] < 0:
            direction = "at least" if _TIGHTER[name] > 0 else "at most"
            raise _refusal(
                field(name),
                f"this tenant's DP policy sets {name} = {fixed!r}; a client may only tighten "
                f"it ({name} {direction} {fixed!r}), not loosen it to {value!r}",
            )
        settings[name] = value
    rest = {k: v for k, v in given.items() if k not in POLICY_FIELDS and k != "enabled"}
    return {**rest, **settings}


def config_under_policy(config: TrainingConfig, policy: DPPolicyInfo) -> TrainingConfig:
    """A native run's config with its ``dp_config`` under ``policy``: the fields its
    JSON named are checked (:func:`apply_dp_policy`, refusals naming
    ``dp_config.<field>``), the policy fills in the rest.

    Raises:
        ValidationError: (``dp_config``) no ``dp_config``; as :func:`apply_dp_policy`.
    """
    dp = config.dp_config
    if dp is None:
        raise _refusal(
            "dp_config",
            "this tenant's DP policy requires differential privacy for every run: give a "
            "dp_config (the policy fills in its dataset, noise and clipping norm)",
        )
    fields = apply_dp_policy(
        policy, requested=dp.model_dump(exclude_unset=True), field=lambda f: f"dp_config.{f}"
    )
    return config.model_copy(update={"dp_config": DPConfig.model_validate(fields)})


def _refusal(field: str, message: str) -> ValidationError:
    return ValidationError(
        f"{message}; ask the tenant's privacy officer to change the policy "
        "(PUT /v1/dp_policy) if this run needs other settings",
        field=field,
    )


__all__ = [
    "POLICY_FIELDS",
    "apply_dp_policy",
    "config_under_policy",
    "delete_dp_policy",
    "get_dp_policy",
    "read_dp_policy",
    "set_dp_policy",
]
