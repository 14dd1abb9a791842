"""Sessions and models of clients speaking the Tinker protocol (``/api/v1``).

A Tinker *model* is an ordinary training run. Its id is the one the official client
derives itself (``{session_id}:train:{seq}``), stored as the run's idempotency key
``tinker:{model_id}``: a retried ``create_model`` finds the run it created, another
tenant's model id finds nothing (404), and no table maps the two.

DP settings come from the tenant's DP policy (set by its privacy officer,
:mod:`server.services.dp_policy`) and from ``user_metadata`` keys
``tensafe.dp.<field>`` (any field of :class:`tg_tinker.types.DPConfig`, e.g.
``tensafe.dp.noise_multiplier``), given on ``create_session`` (defaults for its
models) or ``create_model`` (they win). Under a policy the keys may only tighten the
policy's settings (or not change them at all), and fill in what it leaves to the client
(N and q of a client-declared run); without one, the server's ``tinker_default_dp``
fills in what the keys leave out. ``tensafe.dp`` = ``"off"`` asks for a run without
DP, which a policy and a server with ``require_dp`` refuse. Checkpoint paths are ``tinker://{model_id}/weights/{name}``
and ``tinker://{model_id}/sampler_weights/{name}``; they name the same encrypted
artifacts as ``tensafe://{run_id}/…``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from tg_tinker.types import DPConfig, DPPolicyInfo, LoRAConfig, TrainingConfig

from server.db.models import ArtifactRow, OperationRow, TinkerSessionRow, TrainingRunRow, utcnow
from server.db.session import Database
from server.errors import ConflictError, NotFoundError, ValidationError
from server.services import artifacts as artifact_service
from server.services.dp_policy import POLICY_FIELDS, apply_dp_policy
from server.services.runs import LOAD_MODEL, run_for_key
from tensafe.models.smollm2 import SMOLLM2_HUB_ID, SMOLLM2_NAME
from tensafe.models.tiny import is_tiny_llama_ref

MODEL_KEY_PREFIX = "tinker:"
TINKER_SCHEME = "tinker://"
DP_PREFIX = "tensafe.dp."
DP_SWITCH = "tensafe.dp"
_FOLDERS = {"weights": "training_state", "sampler_weights": "lora_adapter"}
_MAX_METADATA_BYTES = 16 * 1024


# ------------------------------------------------------------------ sessions
def create_session(
    db: Database,
    *,
    tenant_id: str,
    tags: list[str],
    user_metadata: Mapping[str, Any] | None,
    sdk_version: str | None,
    policy: DPPolicyInfo | None = None,
) -> str:
    """Start a session for the tenant; returns its id.

    Raises:
        ValidationError: ``user_metadata`` over 16 KiB as JSON, or ``tensafe.dp.*``
            keys that do not make a valid DP config or that loosen the tenant's
            ``policy`` (checked now, not at the first model).
    """
    metadata = dict(user_metadata or {})
    _check_metadata(metadata)
    _policy_settings(policy, _requested(metadata))
    session_id = "ses_" + secrets.token_hex(12)
    with db.transaction() as session:
        session.add(
            TinkerSessionRow(
                session_id=session_id,
                tenant_id=tenant_id,
                tags=[str(t) for t in tags],
                user_metadata=metadata,
                sdk_version=sdk_version,
                created_at=utcnow(),
            )
        )
    return session_id


def get_session(session: Session, *, tenant_id: str, session_id: str) -> TinkerSessionRow:
    """The tenant's session.

    Raises:
        NotFoundError: no such session for this tenant.
    """
    row = session.get(TinkerSessionRow, session_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFoundError(f"no session {session_id!r}", field="session_id")
    return row


def open_session(session: Session, *, tenant_id: str, session_id: str) -> TinkerSessionRow:
    """The tenant's session, which must not be finished (``ServiceClient.close()``).

    Raises:
        NotFoundError: no such session for this tenant.
        ConflictError: (``session_id``) the session was finished.
    """
    row = get_session(session, tenant_id=tenant_id, session_id=session_id)
    if row.finished_at is not None:
        raise ConflictError(
            f"session {session_id} was closed ({row.finish_reason}); start a new ServiceClient",
            field="session_id",
        )
    return row


def heartbeat(db: Database, *, tenant_id: str, session_id: str) -> None:
    """Record a heartbeat for the session and every run of its models.

    Raises:
        NotFoundError: no such session for this tenant.
    """
    now = utcnow()
    with db.transaction() as session:
        row = get_session(session, tenant_id=tenant_id, session_id=session_id)
        row.last_heartbeat_at = now
        session.execute(
            update(TrainingRunRow)
            .where(
                TrainingRunRow.tenant_id == tenant_id,
                TrainingRunRow.idempotency_key.like(f"{MODEL_KEY_PREFIX}{session_id}:%"),
            )
            .values(last_heartbeat_at=now)
        )


def finish_session(db: Database, *, tenant_id: str, session_id: str, reason: str) -> None:
    """Mark the session finished (its runs and checkpoints stay).

    Raises:
        NotFoundError: no such session for this tenant.
    """
    with db.transaction() as session:
        row = get_session(session, tenant_id=tenant_id, session_id=session_id)
        row.finished_at = utcnow()
        row.finish_reason = reason[:32]


# ------------------------------------------------------------------ models
def model_id_for(*, session_id: str, seq: int) -> str:
    """The id the 0.38 client derives for a session's ``seq``-th model."""
    return f"{session_id}:train:{seq}"


def model_key(model_id: str) -> str:
    """The run idempotency key that stores a model id."""
    return MODEL_KEY_PREFIX + model_id


def model_id_of(run: TrainingRunRow) -> str | None:
    """The Tinker model id of a run, or ``None`` for a run of the native API."""
    key = run.idempotency_key or ""
    return key[len(MODEL_KEY_PREFIX) :] if key.startswith(MODEL_KEY_PREFIX) else None


def run_for_model(session: Session, *, tenant_id: str, model_id: str) -> TrainingRunRow:
    """The tenant's run behind ``model_id``.

    Raises:
        NotFoundError: no such model for this tenant (another tenant's id included).
    """
    run = run_for_key(session, tenant_id=tenant_id, idempotency_key=model_key(model_id))
    if run is None:
        raise NotFoundError(f"no model {model_id!r}", field="model_id")
    return run


def load_future_id(session: Session, *, run_id: str) -> str:
    """The future of the run's ``load_model`` (what ``create_model`` answers with)."""
    future_id = session.scalar(
        select(OperationRow.future_id).where(
            OperationRow.run_id == run_id, OperationRow.operation == LOAD_MODEL
        )
    )
    assert future_id is not None, "every run is created with its load_model operation"
    return future_id


def _check_metadata(metadata: Mapping[str, Any]) -> None:
    try:
        size = len(json.dumps(metadata))
    except (TypeError, ValueError):
        raise ValidationError("must be JSON", field="user_metadata") from None
    if size > _MAX_METADATA_BYTES:
        raise ValidationError(
            f"must be at most {_MAX_METADATA_BYTES} bytes as JSON", field="user_metadata"
        )


def dp_settings(metadata: Mapping[str, Any]) -> DPConfig | None:
    """The ``tensafe.dp.*`` settings of ``metadata`` as a :class:`DPConfig`; ``None``
    when it has none; ``DPConfig(enabled=False)`` when ``tensafe.dp`` is ``"off"``.

    Raises:
        ValidationError: (``user_metadata.tensafe.dp.<field>``) an unknown field or a
            value the field does not accept.
    """
    switch = str(metadata.get(DP_SWITCH, "on")).strip().lower()
    if switch not in ("on", "off", "true", "false"):
        raise ValidationError("must be 'on' or 'off'", field=f"user_metadata.{DP_SWITCH}")
    if switch in ("off", "false"):
        return DPConfig(enabled=False)
    fields = {
        key[len(DP_PREFIX) :]: value for key, value in metadata.items() if key.startswith(DP_PREFIX)
    }
    if not fields:
        return None
    unknown = sorted(set(fields) - set(DPConfig.model_fields) - {"enabled"})
    if unknown or "enabled" in fields:
        bad = unknown[0] if unknown else "enabled"
        allowed = ", ".join(sorted(set(DPConfig.model_fields) - {"enabled"}))
        raise ValidationError(
            f"unknown DP setting; allowed: {allowed}", field=f"user_metadata.{DP_PREFIX}{bad}"
        )
    return _config(fields)


def _requested(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The ``DPConfig`` fields ``metadata``'s ``tensafe.dp*`` keys give (validated as
    :func:`dp_settings` does, and raising what it raises)."""
    dp = dp_settings(metadata)
    if dp is None:
        return {}
    return {"enabled": False} if not dp.enabled else dp.model_dump(exclude_unset=True)


def _metadata_key(field: str) -> str:
    return f"user_metadata.{DP_SWITCH if field == 'enabled' else DP_PREFIX + field}"


def _policy_settings(policy: DPPolicyInfo | None, requested: Mapping[str, Any]) -> dict[str, Any]:
    """``requested`` under ``policy`` (itself without one)."""
    if policy is None:
        return dict(requested)
    return apply_dp_policy(policy, requested=requested, field=_metadata_key)


def _config(fields: Mapping[str, Any]) -> DPConfig:
    """``fields`` as a :class:`DPConfig`; a refusal names the ``tensafe.dp.*`` key."""
    try:
        return DPConfig.model_validate(fields)
    except PydanticValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error.get("loc", ()))
        raise ValidationError(
            str(error.get("msg", "invalid value")), field=_metadata_key(where)
        ) from None


def merged_dp(
    session_metadata: Mapping[str, Any],
    model_metadata: Mapping[str, Any],
    *,
    defaults: Mapping[str, Any] | None = None,
    policy: DPPolicyInfo | None = None,
) -> DPConfig:
    """The DP config of a new model.

    Without a ``policy``: the server's ``defaults`` (``DPConfig`` fields, the
    ``tinker_default_dp`` setting) overlaid by the session's ``tensafe.dp.*`` keys,
    overlaid by the model's (``enabled=False`` when ``tensafe.dp`` is ``off``). With
    one: the policy's settings, tightened by the session's and the model's keys where
    the policy allows (:func:`~server.services.dp_policy.apply_dp_policy`), with the
    fields the policy leaves to the client (N, q, ...) from the keys, else from
    ``defaults``.

    Raises:
        ValidationError: as :func:`dp_settings`; a key the policy refuses (naming it);
            no DP settings at all (naming the keys).
    """
    if policy is not None:
        requested = _requested({**session_metadata, **model_metadata})
        base = {k: v for k, v in (defaults or {}).items() if k not in POLICY_FIELDS}
        return _config({**base, **_policy_settings(policy, requested)})
    server = {DP_PREFIX + key: value for key, value in (defaults or {}).items()}
    merged = {**server, **session_metadata, **model_metadata}
    dp = dp_settings(merged)
    if dp is None:
        raise ValidationError(
            "this server trains with differential privacy: give its settings as "
            "user_metadata keys 'tensafe.dp.<field>' on the ServiceClient or the training "
            "client, e.g. tensafe.dp.noise_multiplier (or tensafe.dp.target_epsilon + "
            "tensafe.dp.planned_steps), tensafe.dp.dataset_size and "
            "tensafe.dp.expected_batch_size (or tensafe.dp.dataset_id of a server-held "
            "dataset); see docs/tinker.md",
            field=f"user_metadata.{DP_PREFIX}noise_multiplier",
        )
    return dp


def training_config(
    *,
    base_model: str,
    lora_rank: int,
    seed: int | None,
    train_attn: bool,
    train_mlp: bool,
    train_unembed: bool,
    dp: DPConfig | None,
    metadata: Mapping[str, Any],
) -> TrainingConfig:
    """The native config of a Tinker ``create_model``.

    Raises:
        ValidationError: no layer trained, or a rank the LoRA config refuses.
    """
    if not (train_attn or train_mlp or train_unembed):
        raise ValidationError(
            "at least one of train_attn, train_mlp, train_unembed must be true",
            field="lora_config",
        )
    try:
        lora = LoRAConfig(
            rank=lora_rank,
            alpha=float(2 * lora_rank),
            train_attn=train_attn,
            train_mlp=train_mlp,
            train_unembed=train_unembed,
        )
    except PydanticValidationError:
        raise ValidationError("must be a positive integer", field="lora_config.rank") from None
    return TrainingConfig(
        model_ref=base_model,
        lora_config=lora,
        dp_config=dp,
        seed=seed or 0,
        metadata={"tinker": True, **{str(k): v for k, v in metadata.items()}},
    )


def config_from_checkpoint(
    source: TrainingConfig,
    *,
    session_metadata: Mapping[str, Any],
    metadata: Mapping[str, Any],
    policy: DPPolicyInfo | None = None,
) -> TrainingConfig:
    """The config of a model created from a checkpoint: the source run's model and LoRA
    shape; DP from the new ``tensafe.dp.*`` metadata if any, else the source run's.
    Under a ``policy`` the policy's settings apply (tightened by the new keys as
    :func:`merged_dp` allows), the rest from the keys, else from the source run.

    Raises:
        ValidationError: as :func:`dp_settings`; a key the policy refuses.
    """
    merged = {**session_metadata, **metadata}
    if policy is not None:
        source_dp = (
            {}
            if source.dp_config is None
            else source.dp_config.model_dump(exclude_unset=True, exclude={"sampling"})
        )
        return source.model_copy(
            update={
                "dp_config": merged_dp(
                    session_metadata, metadata, defaults=source_dp, policy=policy
                ),
                "metadata": {"tinker": True, **{str(k): v for k, v in metadata.items()}},
            }
        )
    dp = dp_settings(merged)
    return source.model_copy(
        update={
            "dp_config": source.dp_config if dp is None else dp,
            "metadata": {"tinker": True, **{str(k): v for k, v in metadata.items()}},
        }
    )


def tokenizer_id(*, model_ref: str, override: str | None) -> str:
    """Where a Tinker client loads the model's tokenizer from (``get_info``): the
    server's ``tinker_tokenizer_id`` setting, else the hub id of the model's tokenizer
    (SmolLM2's for ``smollm2-135m-instruct`` and the tiny test models), else the
    model name itself."""
    if override:
        return override
    if model_ref == SMOLLM2_NAME or is_tiny_llama_ref(model_ref):
        return SMOLLM2_HUB_ID
    return model_ref


# ------------------------------------------------------------------ paths
def tinker_path(*, model_id: str, native_path: str) -> str:
    """``tensafe://{run_id}/{folder}/{name}`` as ``tinker://{model_id}/{folder}/{name}``."""
    _run, folder, name = native_path[len(artifact_service.PATH_SCHEME) :].split("/", 2)
    return f"{TINKER_SCHEME}{model_id}/{folder}/{name}"


def parse_tinker_path(path: str) -> tuple[str, str, str]:
    """``(model_id, folder, name)`` of a ``tinker://`` checkpoint path.

    Raises:
        ValidationError: (``path``) not of the form ``tinker://{model_id}/weights/{name}``
            or ``…/sampler_weights/{name}``.
    """
    if not path.startswith(TINKER_SCHEME):
        raise ValidationError("must look like tinker://{model_id}/weights/{name}", field="path")
    parts = path[len(TINKER_SCHEME) :].split("/")
    if len(parts) != 3 or parts[1] not in _FOLDERS or not parts[0] or not parts[2]:
        raise ValidationError(
            "must look like tinker://{model_id}/weights/{name} or "
            "tinker://{model_id}/sampler_weights/{name}",
            field="path",
        )
    return parts[0], parts[1], parts[2]


def resolve_tinker_path(session: Session, *, tenant_id: str, path: str) -> ArtifactRow:
    """The tenant's artifact behind a ``tinker://`` path.

    Raises:
        ValidationError: a malformed path.
        NotFoundError: no such checkpoint for this tenant (another tenant's included).
    """
    model_id, folder, name = parse_tinker_path(path)
    try:
        run = run_for_model(session, tenant_id=tenant_id, model_id=model_id)
    except NotFoundError:
        raise NotFoundError(f"no checkpoint {path!r}", field="path") from None
    native = artifact_service.artifact_path(
        run_id=run.run_id,
        kind=_FOLDERS[folder],  # type: ignore[arg-type]
        name=name,
    )
    try:
        return artifact_service.resolve_reference(
            session, tenant_id=tenant_id, artifact_id=None, path=native
        )
    except NotFoundError:
        raise NotFoundError(f"no checkpoint {path!r}", field="path") from None


def native_path(session: Session, *, tenant_id: str, path: str) -> str:
    """The ``tensafe://`` path of the checkpoint a ``tinker://`` path names.

    Raises:
        ValidationError, NotFoundError: as :func:`resolve_tinker_path`.
    """
    return resolve_tinker_path(session, tenant_id=tenant_id, path=path).path


__all__ = [
    "DP_PREFIX",
    "DP_SWITCH",
    "MODEL_KEY_PREFIX",
    "TINKER_SCHEME",
    "config_from_checkpoint",
    "create_session",
    "dp_settings",
    "finish_session",
    "get_session",
    "heartbeat",
    "load_future_id",
    "merged_dp",
    "model_id_for",
    "model_id_of",
    "model_key",
    "native_path",
    "open_session",
    "parse_tinker_path",
    "resolve_tinker_path",
    "run_for_model",
    "tinker_path",
    "tokenizer_id",
    "training_config",
]
