"""Chunked target log-probabilities equal the full-logits ones, values and gradients."""

from __future__ import annotations

import pytest
import torch

from tensafe.errors import ConfigError
from tensafe.losses import chunked_token_logprobs, num_chunks, token_logprobs
from tensafe.losses.chunked import chunk_width

B, T, H, V = 3, 7, 16, 101


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(H, V, bias=True).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g, dtype=torch.float64))
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, V, (B, T), generator=g)
    return head, hidden, targets


def test_known_slicing():
    assert chunk_width(4, chunk_tokens=10) == 2
    assert chunk_width(16, chunk_tokens=10) == 1  # never less than one position
    assert num_chunks(4, 7, chunk_tokens=10) == 4
    assert num_chunks(4, 7, chunk_tokens=1000) == 1


@pytest.mark.parametrize("chunk_tokens", [1, 4, 7, 1000])  # width 1, 1, 2 (ragged), all
def test_values_and_gradients_equal_the_full_logits(chunk_tokens):
    head, hidden, targets = _inputs()
    weights = torch.rand(B, T, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    want = token_logprobs(head(hidden), targets)
    want_grads = torch.autograd.grad((want * weights).sum(), [hidden, head.weight, head.bias])
    got = chunked_token_logprobs(hidden, head=head, targets=targets, chunk_tokens=chunk_tokens)
    grads = torch.autograd.grad((got * weights).sum(), [hidden, head.weight, head.bias])
    assert got.shape == (B, T) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-9)


def test_the_head_never_sees_more_than_a_chunk_and_backward_recomputes_each_slice():
    head, hidden, targets = _inputs()
    seen: list[tuple[int, ...]] = []
    head.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape)))
    got = chunked_token_logprobs(hidden, head=head, targets=targets, chunk_tokens=6)
    assert seen == [(B, 2, V)] * 3 + [(B, 1, V)]
    got.sum().backward()
    assert len(seen) == 8  # each slice recomputed once in the backward pass
    assert hidden.grad is not None and head.weight.grad is not None


def test_without_autograd_no_slice_is_recomputed():
    head, hidden, targets = _inputs()
    calls = []
    head.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        got = chunked_token_logprobs(hidden, head=head, targets=targets, chunk_tokens=B)
        want = token_logprobs(head(hidden), targets)
    assert len(calls) == T + 1 and not got.requires_grad
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, None])
def test_chunk_tokens_must_be_a_positive_integer(bad):
    head, hidden, targets = _inputs()
    with pytest.raises(ConfigError, match="chunk_tokens"):
        chunked_token_logprobs(hidden, head=head, targets=targets, chunk_tokens=bad)


def test_mismatched_shapes_are_refused():
    head, hidden, targets = _inputs()
    with pytest.raises(ValueError, match="targets"):
        chunked_token_logprobs(hidden, head=head, targets=targets[:, 1:], chunk_tokens=4)
