"""Turning user arguments into checked settings and wire configs.

Errors are raised here, before anything is sent, as :class:`ValidationError`
naming the offending field.
"""

from __future__ import annotations

import ipaddress
import os
import warnings
from typing import TypeVar
from urllib.parse import urlsplit

import pydantic

from tg_tinker.errors import ValidationError
from tg_tinker.types import DPConfig, LoRAConfig, OptimizerConfig, TrainingConfig

W = TypeVar("W", bound=pydantic.BaseModel)

ENV_BASE_URL = "TG_TINKER_BASE_URL"
ENV_API_KEY = "TG_TINKER_API_KEY"
_SCHEME = "tensafe://"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_base_url(base_url: str | None) -> str:
    """The server URL (argument, else environment), checked; warns on remote plain HTTP."""
    url = base_url or os.environ.get(ENV_BASE_URL)
    if not url:
        raise ValidationError(
            f"no server URL: pass base_url=... or set {ENV_BASE_URL}", field="base_url"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"must be an http(s) URL, got {url!r}", field="base_url")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        warnings.warn(
            f"{url} is plain HTTP: your API key and training data cross the network "
            "unencrypted. Use https:// for anything but a local server.",
            UserWarning,
            stacklevel=3,
        )
    return url.rstrip("/")


def run_id_from_path(path: str) -> str:
    """The run id in ``tensafe://{run_id}/weights/{name}``."""
    if not path.startswith(_SCHEME) or "/" not in path[len(_SCHEME) :]:
        raise ValidationError(
            f"expected tensafe://{{run_id}}/weights/{{name}}, got {path!r}", field="path"
        )
    return path[len(_SCHEME) :].split("/", 1)[0]


def lora_training_config(
    base_model: str,
    rank: int,
    *,
    alpha: float | None,
    dropout: float,
    target_modules: list[str] | None,
    train_attn: bool,
    train_mlp: bool,
    train_unembed: bool,
    dp_config: DPConfig | None,
    optimizer: OptimizerConfig | None,
    batch_size: int,
    gradient_accumulation_steps: int,
    seed: int,
    metadata: dict[str, object] | None,
) -> TrainingConfig:
    """The TrainingConfig of ``create_lora_training_client`` (``alpha`` defaults to 2·rank)."""
    lora = build_model(
        LoRAConfig,
        rank=rank,
        alpha=2.0 * rank if alpha is None else alpha,
        dropout=dropout,
        target_modules=target_modules,
        train_attn=train_attn,
        train_mlp=train_mlp,
        train_unembed=train_unembed,
    )
    return build_model(
        TrainingConfig,
        model_ref=base_model,
        lora_config=lora,
        optimizer=optimizer or OptimizerConfig(),
        dp_config=dp_config,
        batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        seed=seed,
        metadata=dict(metadata or {}),
    )


def build_model(model: type[W], field: str | None = None, **values: object) -> W:
    """Construct a wire model, turning pydantic's error into ours (naming the field)."""
    try:
        return model(**values)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or field
        raise ValidationError(first["msg"], field=loc) from None
