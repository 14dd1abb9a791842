"""The server's policy for new runs: what a ``TrainingConfig`` may ask of this server.

Checked when a run is created, not when an existing run is rebuilt (a policy change
must not strand runs that were accepted under the old one).
"""

from __future__ import annotations

from tg_tinker.types import TrainingConfig

from server.errors import ValidationError
from server.services.capacity import check_run_capacity
from server.settings import Settings

#: Seeds are stored and used as signed 64-bit integers (torch, numpy, the database).
MAX_SEED = 2**63 - 1


def check_run_policy(config: TrainingConfig, *, settings: Settings) -> None:
    """Refuse a config the server's settings do not allow.

    ``seed`` must be a signed 64-bit value ≥ 0. DP is required unless
    ``settings.require_dp`` is off — a run without ``dp_config`` (or with
    ``enabled=False``) is refused, so no client can opt out;
    ``batch_size`` must be within ``max_batch_size``; local model paths need
    ``allow_model_paths``; the model, LoRA rank, metadata and memory must fit the
    server (:func:`~server.services.capacity.check_run_capacity`). Nothing here looks
    at the server's disk, so a refusal says nothing about which paths exist.

    Raises:
        ValidationError: naming the field (``seed``, ``batch_size``, ``model_ref``,
            ``dp_config``, ``lora_config.rank``, ``metadata``).
        CapacityError: the run would not fit in the worker's memory budget (409).
    """
    if not 0 <= config.seed <= MAX_SEED:
        raise ValidationError(f"must be in [0, 2**63 - 1], got {config.seed}", field="seed")
    if config.batch_size > settings.max_batch_size:
        raise ValidationError(
            f"must be at most {settings.max_batch_size} (server limit)", field="batch_size"
        )
    if not settings.allow_model_paths and looks_like_path(config.model_ref):
        raise ValidationError(
            "local model paths are disabled on this server; name a model (e.g. "
            "'smollm2-135m-instruct' or a hub id) or ask the operator to set "
            "TENSAFE_ALLOW_MODEL_PATHS=true",
            field="model_ref",
        )
    wire_dp = config.dp_config
    if settings.require_dp and (wire_dp is None or not wire_dp.enabled):
        raise ValidationError(
            "this server trains only with differential privacy: give a dp_config with "
            "enabled=true (dataset_size, noise_multiplier or target_epsilon, sample_rate "
            "or expected_batch_size)",
            field="dp_config",
        )
    check_run_capacity(config, settings=settings)


def looks_like_path(model_ref: str) -> bool:
    """Whether ``model_ref`` is written as a directory (absolute, home-relative, dotted
    or with a backslash). Decided from the text alone, never from the disk; the worker
    loads with paths switched off unless ``allow_model_paths`` is set."""
    ref = model_ref.strip()
    return ref.startswith(("/", "~", ".")) or ".." in ref or "\\" in ref


__all__ = ["MAX_SEED", "check_run_policy", "looks_like_path"]
