"""A content hash of a model's frozen (base) weights, for evidence bundles.

``SHA-256`` over the parameters that do not train, sorted by their Hugging Face name
(PEFT's ``base_model.model.`` prefix and ``.base_layer`` segment removed, so a LoRA run
hashes the same names as the bare model), each contributing
``name ‖ 0x00 ‖ dtype ‖ 0x00 ‖ shape ‖ 0x00 ‖ raw little-endian bytes``. Tied parameters
count once. Anyone holding the base model can recompute it.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def frozen_weights_sha256(model: nn.Module) -> str | None:
    """The hash described in the module docstring; ``None`` when every parameter trains
    (full fine-tuning: there is no frozen base)."""
    frozen = {_hf_name(name): p for name, p in model.named_parameters() if not p.requires_grad}
    if not frozen:
        return None
    digest = hashlib.sha256()
    for name in sorted(frozen):
        tensor = frozen[name].detach().to("cpu").contiguous()
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(str(tensor.dtype).encode("ascii") + b"\0")
        digest.update(",".join(map(str, tensor.shape)).encode("ascii") + b"\0")
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _hf_name(name: str) -> str:
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


__all__ = ["frozen_weights_sha256"]
