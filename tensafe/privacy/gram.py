"""Per-example norms and clipped sums of embeddings and shared weights, from Gram matrices.

A weight ``W`` (``rows × cols``) can receive per-example gradient from several *uses* in
one forward pass — the input embedding and the tied LM head share one tensor. Example
``i``'s gradient is the sum of its uses' contributions, and the clip norm must be taken
of that sum. Materialising it costs a ``(B, rows, cols)`` buffer (8 × 49152 × 576 floats,
905 MB, for SmolLM2's tied embedding at batch 8). Instead each use keeps what it already
has — activations and output gradients — and the squared norm is expanded into inner
products of uses, each a sum over pairs of token positions ``(t, s)``:

* **linear** use ``(a, g)``: ``U = Σ_t g_t a_tᵀ`` (``g_t`` output gradient, ``a_t`` input),
  ``⟨U, U'⟩ = Σ_{t,s} ⟨g_t, g'_s⟩·⟨a_t, a'_s⟩`` — the ghost norm of Goodfellow / Li et al.
  (two ``T × T`` Gram matrices per example);
* **embedding** use ``(ids, e)``: ``U = Σ_t onehot(id_t) e_tᵀ``,
  ``⟨U, U'⟩ = Σ_{t,s} [id_t = id'_s]·⟨e_t, e'_s⟩`` (token-id equality × output-gradient Gram);
* embedding × linear: ``⟨U_emb, U_lin⟩ = Σ_{t,s} g_s[id_t]·⟨e_t, a_s⟩``.

``‖Σ_u U_u‖² = Σ_{u,v} ⟨U_u, U_v⟩``, exact in real arithmetic; computed in at least float32
(:func:`compute_dtype`). The clipped sum ``Σ_i c_i Σ_u U_{u,i}`` is then formed per use
without any per-example tensor: ``gᵀ (c·a)`` or ``(c·g)ᵀ a`` (the narrower side scaled) for
a linear use, an ``index_add`` of ``c·e`` rows for an embedding use. Cost per example is
``O(T²·(rows + cols))`` instead of ``O(T·rows·cols)``, and it keeps ``T·(rows + cols)`` values
per example instead of ``rows·cols``: it pays when ``T·(rows + cols) < rows·cols``
(:func:`gram_pays`).

Example:
    >>> import torch
    >>> ids = torch.tensor([[1, 2, 1]])
    >>> e = torch.ones(1, 3, 4)
    >>> float(squared_norms([EmbeddingUse(ids=ids, grad_out=e)])[0])  # rows 1: 2·1, 2: 1
    20.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype clip norms, factors and sums are formed in: ``dtype`` promoted to at
    least float32 (bfloat16 and float16 gradients are summed in float32)."""
    return torch.promote_types(dtype, torch.float32)


def zero_rows(values: torch.Tensor, finite: torch.Tensor | None) -> torch.Tensor:
    """``values`` with the rows (leading dimension) of non-finite examples set to 0."""
    if finite is None:
        return values
    return torch.where(finite.view((-1,) + (1,) * (values.dim() - 1)), values, 0.0)


def example_rows(
    values: torch.Tensor,
    *,
    finite: torch.Tensor | None,
    factors: torch.Tensor | None = None,
) -> torch.Tensor:
    """``values`` ``(B, …, d)`` as ``(B·P, d)`` rows in :func:`compute_dtype`, the rows
    of examples not ``finite`` zeroed (``None``: all finite) and, with ``factors``
    ``(B,)``, every example's rows multiplied by its factor. For a linear use with
    activations ``a`` and output gradients ``g``, ``rows(g)ᵀ · rows(a, factors=c)`` and
    ``rows(g, factors=c)ᵀ · rows(a)`` are both its clipped weight sum; scaling the
    narrower side (or an input several layers share) costs fewer passes."""
    dtype = compute_dtype(values.dtype)
    rows = zero_rows(values.to(dtype), finite)
    if factors is not None:
        scale = factors.to(dtype).view((-1,) + (1,) * (values.dim() - 1))
        rows = rows * scale
    return rows.reshape(-1, values.shape[-1])


def ghost_operands(
    inp: torch.Tensor,
    grad_out: torch.Tensor,
    *,
    factors: torch.Tensor,
    finite: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(B·T, out)`` re-weighted output gradients and ``(B·T, in)`` activations of
    a linear use, in :func:`compute_dtype`, with the rows of examples not ``finite``
    zeroed (``None``: all finite): ``g.t() @ a`` is then the use's clipped weight sum
    and ``g.sum(0)`` its bias sum."""
    g = example_rows(grad_out, finite=finite, factors=factors)
    return g, example_rows(inp, finite=finite)


def position_gram(values: torch.Tensor) -> torch.Tensor:
    """``values`` ``(B, …, d)`` read as ``(B, P, d)`` (``P`` positions per example) →
    the per-example Gram matrices ``(B, P, P)`` of inner products between positions,
    in :func:`compute_dtype`."""
    b = values.shape[0]
    v = values.reshape(b, -1, values.shape[-1]).to(compute_dtype(values.dtype))
    return v.bmm(v.transpose(1, 2))


def ghost_squared_norms(
    *, input_gram: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example squared norms of a linear layer's weight and bias gradients,
    ``(B,)`` each, in :func:`compute_dtype`, from the activations' position Gram
    ``input_gram`` (:func:`position_gram` of the input, which layers fed the same
    tensor can share) and the output gradients ``(B, …, out)``:
    ``‖Σ_t g_t a_tᵀ‖² = Σ_{t,s} ⟨g_t, g_s⟩·⟨a_t, a_s⟩`` and ``‖Σ_t g_t‖² = Σ_{t,s} ⟨g_t, g_s⟩``.
    Not clamped: rounding can leave a tiny negative value (the caller clamps)."""
    grad_gram = position_gram(grad_out)
    return (grad_gram * input_gram).sum(dim=(1, 2)), grad_gram.sum(dim=(1, 2))


@dataclass(frozen=True)
class LinearUse:
    """A call of a linear layer with weight ``W``: ``inp`` ``(B, T, cols)`` and
    ``grad_out`` ``(B, T, rows)`` (``(B, d)`` is read as ``T = 1``)."""

    inp: torch.Tensor
    grad_out: torch.Tensor

    def operands(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, g)`` as ``(B, T, ·)`` in :func:`compute_dtype`."""
        dtype = compute_dtype(self.grad_out.dtype)
        b = self.grad_out.shape[0]
        a = self.inp.reshape(b, -1, self.inp.shape[-1]).to(dtype)
        g = self.grad_out.reshape(b, -1, self.grad_out.shape[-1]).to(dtype)
        return a, g


@dataclass(frozen=True)
class EmbeddingUse:
    """A lookup in an embedding table ``W``: token ``ids`` ``(B, T)`` and output
    gradients ``grad_out`` ``(B, T, cols)``; positions that give ``W`` no gradient
    (the padding index) must already be zero in ``grad_out``."""

    ids: torch.Tensor
    grad_out: torch.Tensor

    def operands(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, e)`` as ``(B, T)`` and ``(B, T, cols)`` in :func:`compute_dtype`."""
        b = self.grad_out.shape[0]
        e = self.grad_out.reshape(b, -1, self.grad_out.shape[-1])
        return self.ids.reshape(b, -1), e.to(compute_dtype(e.dtype))


Use = LinearUse | EmbeddingUse


def _inner(u: Use, v: Use) -> torch.Tensor:
    """``⟨U_i, V_i⟩`` for every example ``i``, ``(B,)``."""
    if isinstance(u, LinearUse) and isinstance(v, LinearUse):
        a1, g1 = u.operands()
        a2, g2 = v.operands()
        return (g1.bmm(g2.transpose(1, 2)) * a1.bmm(a2.transpose(1, 2))).sum(dim=(1, 2))
    if isinstance(u, EmbeddingUse) and isinstance(v, EmbeddingUse):
        ids1, e1 = u.operands()
        ids2, e2 = v.operands()
        same = ids1.unsqueeze(2) == ids2.unsqueeze(1)
        return (e1.bmm(e2.transpose(1, 2)) * same).sum(dim=(1, 2))
    emb, lin = (u, v) if isinstance(u, EmbeddingUse) else (v, u)
    ids, e = emb.operands()  # type: ignore[union-attr]
    a, g = lin.operands()  # type: ignore[union-attr]
    # g_s[id_t] for every (s, t): the linear use's output gradient at the looked-up rows
    picked = g.gather(2, ids.unsqueeze(1).expand(-1, g.shape[1], -1))
    return (picked * a.bmm(e.transpose(1, 2))).sum(dim=(1, 2))


def squared_norms(uses: Sequence[Use]) -> torch.Tensor:
    """Per-example ``‖Σ_u U_u‖²`` of one weight's uses, ``(B,)`` in at least float32
    (may be slightly negative or NaN: the caller clamps and checks finiteness).

    A NaN or infinity in one example's values reaches only that example's norm."""
    total: torch.Tensor | None = None
    for i, u in enumerate(uses):
        for j in range(i, len(uses)):
            term = _inner(u, uses[j])
            term = term if i == j else 2 * term
            total = term if total is None else total + term
    if total is None:
        raise ValueError("squared_norms needs at least one use")
    return total


def clipped_sum(
    uses: Sequence[Use],
    *,
    shape: torch.Size,
    factors: torch.Tensor,
    finite: torch.Tensor | None,
) -> torch.Tensor:
    """``Σ_i factors[i] · Σ_u U_{u,i}`` for a weight of ``shape`` ``(rows, cols)``, in
    :func:`compute_dtype`; the values of examples not ``finite`` are zeroed first
    (``None``: every example is finite), so their NaN never reaches the sum."""
    dtype = compute_dtype(uses[0].grad_out.dtype)
    out = torch.zeros(shape, dtype=dtype, device=uses[0].grad_out.device)
    for use in uses:
        if isinstance(use, LinearUse):
            # scale the narrower side (a tied head's activations, not its vocab-wide
            # output gradients): the same sum, one small scaled copy
            if use.inp.shape[-1] <= use.grad_out.shape[-1]:
                g = example_rows(use.grad_out, finite=finite)
                a = example_rows(use.inp, finite=finite, factors=factors)
            else:
                g, a = ghost_operands(use.inp, use.grad_out, factors=factors, finite=finite)
            out.addmm_(g.t(), a)
        else:
            ids, e = use.operands()
            scale = factors.to(dtype).view(-1, 1, 1)
            rows = (zero_rows(e, finite) * scale).reshape(-1, e.shape[-1])
            out.index_add_(0, ids.reshape(-1), rows)
    return out


def gram_pays(*, tokens: int, shape: Sequence[int]) -> bool:
    """Whether the Gram route beats instantiating the per-example gradients of a
    ``(rows, cols)`` weight used with ``tokens`` positions per example:
    ``T·(rows + cols) < rows·cols``. Per example the Gram route keeps ``T·(rows + cols)``
    values (activations and output gradients) and spends ``O(T²·(rows + cols))``
    operations; instantiating keeps ``rows·cols`` and spends ``O(T·rows·cols)``, so
    the one test decides both. For SmolLM2's tied ``49152 × 576`` table the Gram
    route wins below 569 positions; for a 64-wide toy model below 64."""
    rows, cols = int(shape[0]), int(shape[-1])
    return tokens * (rows + cols) < rows * cols


__all__ = [
    "EmbeddingUse",
    "LinearUse",
    "Use",
    "clipped_sum",
    "compute_dtype",
    "example_rows",
    "ghost_operands",
    "ghost_squared_norms",
    "gram_pays",
    "position_gram",
    "squared_norms",
]
