"""Target-token log-probabilities from hidden states, a chunk of positions at a time.

The full logits of a batch are a ``(B, T, V)`` tensor: for SmolLM2's 49,152-token
vocabulary, 8 × 128 positions are 192 MiB in float32 and 4 × 4096 are 3 GiB, and the
log-softmax and its gradient add two more of the same size. Only one number per
position is needed — ``log p(target)`` — so :func:`chunked_token_logprobs` applies the
output head and the log-softmax to ``(B, w)`` slices of the positions and keeps only
the ``(B, w)`` result. With autograd on and more than one slice, each slice is checkpointed
(:func:`torch.utils.checkpoint.checkpoint`, non-reentrant): its logits are dropped
after the forward and recomputed, one slice at a time, in the backward pass. Peak
memory for the logits is therefore a few ``B × w × V`` buffers, with
``B × w ≤ chunk_tokens`` (``w ≥ 1``), whatever ``T``.

Slices keep the batch dimension first, so every call of the head sees a
``(B, w, hidden)`` input: per-example gradient clipping
(:mod:`tensafe.privacy.per_example`) still attributes each position to its example.
A trainable head is called once per slice; the clipper must be told so (its
``repeated`` modules), because a ghost norm needs all of a layer's positions at once.

The vocabulary is not split: the head runs as the module it is (a ``Linear``, or a
LoRA-wrapped one), which is what lets the clipper see it; splitting its weight by
rows would bypass the module. A slice of ``B × w`` positions holds ``B × w × V``
logits, bounded by ``chunk_tokens × V``.

Example:
    >>> import torch
    >>> head = torch.nn.Linear(8, 50, bias=False)
    >>> hidden, targets = torch.randn(2, 7, 8), torch.randint(0, 50, (2, 7))
    >>> lp = chunked_token_logprobs(hidden, head=head, targets=targets, chunk_tokens=4)
    >>> full = token_logprobs(head(hidden), targets)
    >>> bool(torch.allclose(lp, full, atol=1e-6))
    True
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tensafe.errors import ConfigError
from tensafe.losses.functions import token_logprobs

#: Positions (summed over the batch) whose logits are held at once by default:
#: 1024 × 49,152 float32 logits are 192 MiB per buffer.
DEFAULT_CHUNK_TOKENS = 1024


def check_chunk_tokens(chunk_tokens: object, *, field: str = "chunk_tokens") -> int:
    """``chunk_tokens`` as an int, if it is a positive integer.

    Raises:
        ConfigError: (``field``) not an integer ≥ 1.
    """
    if not isinstance(chunk_tokens, int) or isinstance(chunk_tokens, bool) or chunk_tokens < 1:
        raise ConfigError(field, f"must be an integer ≥ 1, got {chunk_tokens!r}")
    return chunk_tokens


def chunk_width(batch_size: int, *, chunk_tokens: int) -> int:
    """Positions per slice, ``w = max(1, chunk_tokens // batch_size)``: a slice holds
    ``batch_size × w`` positions, at most ``chunk_tokens`` unless one position per
    example already exceeds it."""
    return max(1, check_chunk_tokens(chunk_tokens) // max(1, batch_size))


def num_chunks(batch_size: int, seq_len: int, *, chunk_tokens: int) -> int:
    """How many slices :func:`chunked_token_logprobs` cuts a ``(batch_size, seq_len)``
    batch into."""
    width = chunk_width(batch_size, chunk_tokens=chunk_tokens)
    return max(1, -(-seq_len // width))


def _slice_logprobs(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return token_logprobs(head(hidden), targets)


def chunked_token_logprobs(
    hidden: torch.Tensor, *, head: nn.Module, targets: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """``log softmax(head(hidden))[b, t, targets[b, t]]`` as a ``(B, T)`` float32 tensor,
    equal to :func:`~tensafe.losses.token_logprobs` of the full logits, computed over
    slices of at most ``chunk_tokens`` positions (see the module docstring).

    Differentiable with respect to ``hidden`` and the head's parameters when autograd
    is on; the backward pass recomputes each slice's logits (``head`` must therefore
    be deterministic, or draw its randomness from the RNG state checkpointing restores,
    like dropout).

    Raises:
        ConfigError: ``chunk_tokens`` is not a positive integer.
        ValueError: ``hidden`` is not ``(B, T, hidden)`` or ``targets`` not ``(B, T)``.
    """
    if hidden.dim() != 3 or tuple(targets.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"hidden must be (B, T, H) and targets (B, T); got {tuple(hidden.shape)} "
            f"and {tuple(targets.shape)}"
        )
    width = chunk_width(hidden.shape[0], chunk_tokens=chunk_tokens)
    record = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in head.parameters())
    )
    # One slice: recomputing it in the backward would lower no peak (the backward starts
    # at the head, so its logits are needed at once) and cost a second head pass.
    record = record and hidden.shape[1] > width
    pieces = []
    for start in range(0, hidden.shape[1], width):
        h, t = hidden[:, start : start + width], targets[:, start : start + width]
        if record:  # keep only the (B, w) result; the backward recomputes this slice
            pieces.append(checkpoint(_slice_logprobs, head, h, t, use_reentrant=False))
        else:
            pieces.append(_slice_logprobs(head, h, t))
    return torch.cat(pieces, dim=1)


__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "check_chunk_tokens",
    "chunk_width",
    "chunked_token_logprobs",
    "num_chunks",
]
