"""Stream torch tensors as safetensors bytes, and view them back without copies.

Writing never materializes the file: :func:`safetensors_layout` computes the
header from shapes and dtypes, then each tensor's bytes are handed out as a
zero-copy ``memoryview`` of its (CPU, contiguous) storage. Reading builds tensors
as views into one buffer. The bytes are standard safetensors, loadable by
``safetensors.torch.load_file``.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from tensafe.errors import ArtifactFormatError, ConfigError

_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
}
_DTYPES: dict[str, torch.dtype] = {name: dtype for dtype, name in _DTYPE_NAMES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the limit safetensors itself enforces
DEFAULT_METADATA: dict[str, str] = {"format": "pt"}


def _require_little_endian() -> None:
    if sys.byteorder != "little":
        raise RuntimeError("safetensors streaming needs a little-endian host")


@dataclass(frozen=True)
class SafetensorsLayout:
    """The header bytes and tensor order of a safetensors file not yet written."""

    header: bytes
    tensors: tuple[tuple[str, torch.Tensor], ...]
    total_size: int


def _prepared(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if not isinstance(name, str) or not name:
        raise ConfigError("tensors", "tensor names must be non-empty strings")
    if not isinstance(tensor, torch.Tensor):
        raise ConfigError(f"tensors[{name!r}]", "must be a torch.Tensor")
    if tensor.dtype not in _DTYPE_NAMES:
        raise ConfigError(f"tensors[{name!r}]", f"dtype {tensor.dtype} is not supported")
    if tensor.is_sparse or tensor.layout != torch.strided:
        raise ConfigError(f"tensors[{name!r}]", "must be a dense (strided) tensor")
    # Copies only when needed (GPU or non-contiguous); one tensor at a time.
    return tensor.detach().to("cpu").contiguous()


def safetensors_layout(
    tensors: Mapping[str, torch.Tensor], *, metadata: Mapping[str, str] | None = None
) -> SafetensorsLayout:
    """Plan a safetensors file for ``tensors`` (largest element size first, then name,
    so every tensor's data is aligned to its element size).

    Raises:
        ConfigError: for a bad name, an unsupported dtype or a non-dense tensor.
    """
    _require_little_endian()
    meta = dict(DEFAULT_METADATA if metadata is None else metadata)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ConfigError("metadata", "safetensors metadata must map str to str")
    prepared = [(name, _prepared(name, tensor)) for name, tensor in tensors.items()]
    prepared.sort(key=lambda item: (-item[1].element_size(), item[0]))
    entries: dict[str, object] = {"__metadata__": meta} if meta else {}
    offset = 0
    for name, tensor in prepared:
        if name == "__metadata__":
            raise ConfigError("tensors", "'__metadata__' is reserved by safetensors")
        size = tensor.numel() * tensor.element_size()
        entries[name] = {
            "dtype": _DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(len(text) + 8) % 8)
    header = struct.pack("<Q", len(text)) + text
    return SafetensorsLayout(
        header=header, tensors=tuple(prepared), total_size=len(header) + offset
    )


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a CPU contiguous tensor (as prepared by the layout)."""
    flat = tensor.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def iter_safetensors_bytes(layout: SafetensorsLayout) -> Iterator[memoryview]:
    """Yield the file's bytes (the header, then each tensor's data) without copying."""
    yield memoryview(layout.header)
    for _, tensor in layout.tensors:
        yield tensor_bytes(tensor)


def _entry(name: str, raw: object, data_size: int) -> tuple[torch.dtype, list[int], int, int]:
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        raise ArtifactFormatError(f"safetensors entry {name!r} is malformed")
    dtype = _DTYPES.get(raw["dtype"]) if isinstance(raw["dtype"], str) else None
    shape, offsets = raw["shape"], raw["data_offsets"]
    if (
        dtype is None
        or not isinstance(shape, list)
        or not all(isinstance(d, int) and d >= 0 for d in shape)
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
    ):
        raise ArtifactFormatError(f"safetensors entry {name!r} is malformed")
    begin, end = offsets
    itemsize = torch.empty((), dtype=dtype).element_size()
    if not 0 <= begin <= end <= data_size or end - begin != math.prod(shape) * itemsize:
        raise ArtifactFormatError(f"safetensors entry {name!r} has inconsistent offsets")
    return dtype, shape, begin, end


def tensors_from_buffer(buffer: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse a safetensors file held in a 1-D uint8 tensor; tensors are views into it.

    Returns the tensors and the ``__metadata__`` dict.

    Raises:
        ArtifactFormatError: if the bytes are not a well-formed safetensors file.
    """
    _require_little_endian()
    raw = memoryview(buffer.numpy()) if buffer.numel() else memoryview(b"")
    if len(raw) < 8:
        raise ArtifactFormatError("safetensors data is truncated")
    (header_size,) = struct.unpack("<Q", raw[:8])
    if header_size > min(_MAX_HEADER, len(raw) - 8):
        raise ArtifactFormatError("safetensors header size is invalid")
    try:
        header = json.loads(bytes(raw[8 : 8 + header_size]))
    except (ValueError, UnicodeDecodeError):
        raise ArtifactFormatError("safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ArtifactFormatError("safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    start = 8 + header_size
    data_size = len(raw) - start
    if not isinstance(metadata, dict):
        raise ArtifactFormatError("safetensors __metadata__ is not a JSON object")
    tensors: dict[str, torch.Tensor] = {}
    spans: list[tuple[int, int]] = []
    for name, entry in header.items():
        dtype, shape, begin, end = _entry(name, entry, data_size)
        spans.append((begin, end))
        segment = buffer[start + begin : start + end]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if (start + begin) % itemsize:  # unaligned (not written by us): copy
            segment = segment.clone()
        tensors[name] = segment.view(dtype).reshape(shape)
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise ArtifactFormatError("safetensors data has gaps or overlapping tensors")
        position = end
    if position != data_size:
        raise ArtifactFormatError("safetensors data has trailing bytes")
    return tensors, metadata


__all__ = [
    "DEFAULT_METADATA",
    "SafetensorsLayout",
    "iter_safetensors_bytes",
    "safetensors_layout",
    "tensor_bytes",
    "tensors_from_buffer",
]
