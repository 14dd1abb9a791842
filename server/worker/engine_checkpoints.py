"""What goes into a checkpoint, and how an engine is restored from one.

* ``training_state`` (save_state): trainable weights by parameter name, optimizer
  state (optional), the accountant history at save time (informational), step.
  The noise generator state is deliberately **not** saved: whoever holds it could
  predict — and subtract — the noise of later steps.
* ``lora_adapter`` / ``full_weights`` (save_weights_for_sampler): what
  ``peft.PeftModel.from_pretrained`` / ``from_pretrained`` load (the adapter's
  ``adapter_config.json`` travels in the manifest's ``lora_config``).

Restoring (:func:`restore_engine`) takes weights and optimizer from the checkpoint
but the accountant history from the caller — the run's history in the ledger, never the
checkpoint's copy — and re-seeds the noise generator from the OS, so resuming from
an older checkpoint can neither under-report ε nor replay earlier noise.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from server.db.models import ArtifactRow, TrainingRunRow
from server.errors import ValidationError
from server.services.artifacts import shape_signature
from server.services.run_history import accountant_state
from tensafe.artifacts import Manifest
from tensafe.artifacts.training_state import pack_training_state, unpack_training_state
from tensafe.engine import TrainingEngine
from tensafe.engine.engine import STATE_FORMAT


def lora_shape(engine: TrainingEngine) -> dict[str, object] | None:
    """The adapter's shape (what must match to load a checkpoint), or ``None`` (full FT)."""
    lora = engine.lora_config
    if lora is None:
        return None
    return {"rank": lora.rank, "modules": list(lora.selected_modules), "bias": lora.bias}


def engine_signature(engine: TrainingEngine) -> str:
    return shape_signature(base_model=engine.name, lora=lora_shape(engine))


def dp_manifest(
    engine: TrainingEngine, labels: Mapping[str, str] | None = None
) -> dict[str, object] | None:
    """DP parameters and ε at save time for the manifest (``None`` without DP), with
    ``labels`` (``sampling``, ``privacy_unit``) when given."""
    if engine.dp is None:
        return None
    p = engine.dp.config
    return {
        "noise_multiplier": p.noise_multiplier,
        "sample_rate": p.sample_rate,
        "max_grad_norm": p.max_grad_norm,
        "dataset_size": p.dataset_size,
        "delta": p.delta,
        "accountant": p.accountant,
        "epsilon": engine.epsilon(),
        **(labels or {}),
    }


def _lora_manifest(engine: TrainingEngine) -> dict[str, object] | None:
    lora = engine.lora_config
    if lora is None:
        return None
    return {
        "rank": lora.rank,
        "alpha": lora.alpha,
        "dropout": lora.dropout,
        "target_modules": list(lora.selected_modules),
        "bias": lora.bias,
    }


def training_state_payload(
    engine: TrainingEngine,
    *,
    include_optimizer: bool,
    metadata: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], Manifest]:
    """Tensors and manifest of a ``training_state`` checkpoint of the engine now.

    Raises:
        EngineStateError: gradients are pending (checkpoints sit on step boundaries).
        ConfigError: (``metadata``) not JSON or larger than 64 KiB.
    """
    state = engine.state_dict()
    history = []
    if engine.dp is not None:
        history = [
            {"noise_multiplier": sigma, "sample_rate": q, "steps": steps}
            for sigma, q, steps in engine.dp.accountant.history
        ]
    tensors, training_state = pack_training_state(
        model_state=state["weights"],
        optimizer_state=state["optimizer"] if include_optimizer else {},
        accountant_history=history,
    )
    manifest = Manifest(
        kind="training_state",
        base_model=engine.name,
        step=int(state["step"]),
        lora_config=_lora_manifest(engine),
        dp=dp_manifest(engine, labels),
        metadata=dict(metadata),
        training_state=training_state,
    )
    return tensors, manifest


def _json_ready(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def sampler_payload(
    engine: TrainingEngine,
    *,
    metadata: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
) -> tuple[str, dict[str, torch.Tensor], Manifest]:
    """``(kind, tensors, manifest)`` of the weights for sampling: the peft adapter
    (``lora_adapter``; decrypts to a directory ``PeftModel.from_pretrained`` loads)
    or the full model weights (``full_weights``; tied tensors stored once)."""
    if engine.lora_config is not None:
        from peft import get_peft_model_state_dict

        tensors = {k: v.detach() for k, v in get_peft_model_state_dict(engine.model).items()}
        peft_config = engine.model.peft_config["default"].to_dict()  # type: ignore[union-attr, index, operator]
        peft_config["base_model_name_or_path"] = engine.name
        peft_config["inference_mode"] = True
        config = json.loads(json.dumps(peft_config, default=_json_ready))
        manifest = Manifest(
            kind="lora_adapter",
            base_model=engine.name,
            step=engine.step,
            lora_config=config,
            dp=dp_manifest(engine, labels),
            metadata=dict(metadata),
        )
        return "lora_adapter", tensors, manifest
    seen: set[int] = set()
    tensors = {}
    for name, tensor in engine.model.state_dict().items():
        if tensor.data_ptr() in seen:  # tied weights (lm_head = embed_tokens) once
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach()
    manifest = Manifest(
        kind="full_weights",
        base_model=engine.name,
        step=engine.step,
        dp=dp_manifest(engine, labels),
        metadata=dict(metadata),
    )
    return "full_weights", tensors, manifest


def restore_engine(
    engine: TrainingEngine,
    *,
    tensors: Mapping[str, torch.Tensor],
    manifest: Manifest,
    history: Sequence[tuple[float, float]],
    include_optimizer: bool = True,
) -> int:
    """Load a ``training_state`` checkpoint into ``engine`` with the accountant
    history given (the run's DP rows); returns the restored step.

    A checkpoint saved without optimizer state, or loaded with ``include_optimizer``
    false (weights only), gets a fresh optimizer. Everything
    is validated by the engine before anything changes.

    Raises:
        ConfigError: not a training_state checkpoint.
        ArtifactFormatError: malformed stored structure.
        EngineStateError: weights or optimizer do not fit this engine.
    """
    state = unpack_training_state(tensors, manifest)
    optimizer_state = (state.optimizer_state if include_optimizer else None) or (
        engine.fresh_optimizer_state()
    )
    accountant = None
    if engine.dp is not None:
        accountant = accountant_state(history, accountant=engine.dp.accountant.accountant)
    engine.load_state_dict(
        {
            "format": STATE_FORMAT,
            "step": manifest.step,
            "weights": state.model_state,
            "optimizer": optimizer_state,
            "accountant": accountant,
            "noise": {},
        }
    )
    reseed_noise(engine)
    return manifest.step


def reseed_noise(engine: TrainingEngine) -> None:
    """Draw the noise generator's seed from the OS (no replay of earlier noise)."""
    engine.reseed_noise()


def check_compatible(
    artifact: ArtifactRow,
    source: TrainingRunRow,
    run: TrainingRunRow,
    engine: TrainingEngine,
    *,
    field: str,
) -> None:
    """Refuse a checkpoint that cannot be loaded into ``run``.

    Raises:
        ValidationError: not a training_state checkpoint; another base model or
            adapter shape; or DP and non-DP mixed (which would misstate the guarantee).
    """
    if artifact.kind != "training_state":
        raise ValidationError(
            f"{artifact.path} is a {artifact.kind} artifact (weights for sampling); "
            "load_state needs a training_state checkpoint from save_state",
            field=field,
        )
    if artifact.shape_signature != engine_signature(engine):
        raise ValidationError(
            f"checkpoint {artifact.artifact_id} was trained on {artifact.base_model} with another "
            f"model or adapter shape than this run ({engine.name}, "
            f"{lora_shape(engine) or 'full fine-tuning'})",
            field=field,
        )
    if source.dp_enabled != run.dp_enabled:
        raise ValidationError(
            "a checkpoint of a DP run can only be loaded into a DP run, and a non-DP "
            "checkpoint only into a non-DP run",
            field=field,
        )


__all__ = [
    "check_compatible",
    "dp_manifest",
    "engine_signature",
    "lora_shape",
    "reseed_noise",
    "restore_engine",
    "sampler_payload",
    "training_state_payload",
]
