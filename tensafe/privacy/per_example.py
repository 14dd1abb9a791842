"""Per-example gradient clipping in a single backward pass ("book-keeping").

How it works. Every module that owns a trainable parameter has its ``forward``
routed through a custom autograd function. In the backward pass that function
returns the gradient for the module *input* only — autograd never builds the
summed weight gradient — and hands the layer's activations and output gradients
to a :class:`ClipCollector`, which computes each example's contribution by one of
three routes:

* **instantiate** (Opacus ``GRAD_SAMPLERS``): the ``(B, *param.shape)`` per-example
  gradient is materialised; used for small layers (all LoRA matrices), norms, and for
  embeddings and shared weights when ``T·(rows + cols) ≥ rows·cols`` (long sequences).
* **ghost** (:func:`~tensafe.privacy.gram.ghost_squared_norms`): for a large linear
  layer used once per forward (``2T² < in·out``, Bu et al.), only the per-example norm
  is computed, from the position Gram matrices of activations and output gradients;
  layers fed the same tensor (q/k/v, gate/up) share the activations' Gram. The
  clipped sum is formed afterwards as one matmul per layer of the stored activations
  and output gradients, the clip factors applied to the narrower side (the shared
  activations once for q/k/v and gate/up), and each layer's stored tensors are
  released once its sum is formed.
  A layer the forward calls several times on purpose — the output head applied a
  chunk of positions at a time (:mod:`tensafe.losses.chunked`) — is named in
  ``collect(repeated=...)`` and instantiated instead: its per-example gradient is
  summed over the calls (memory ``B × out × in``, independent of the sequence
  length), where a ghost norm would need every call's output gradients at once.
* **gram** (:mod:`tensafe.privacy.gram`): for an embedding table and for a weight
  shared by several modules (tied input embedding / LM head) when
  ``T·(rows + cols) < rows·cols`` (:func:`~tensafe.privacy.gram.gram_pays`): the
  per-example norm of the *sum* over the weight's uses comes from Gram matrices of
  activations and output gradients (and token-id equality for embedding lookups),
  cross terms included, so tied weights are clipped exactly without a
  ``(B, vocab, hidden)`` buffer; the clipped sum is a matmul plus an ``index_add``.
  All uses of one weight take the same route (the first use in a pass decides); a
  head named in ``repeated`` (chunked) makes its weight take the instantiate route.

After the backward pass, :meth:`ClipCollector.clip` computes the per-example
global norms, the clip factors ``min(1, C / (‖g_i‖ + 1e-6))`` (Opacus' formula),
and the clipped sum ``Σ_i c_i g_i`` for every parameter. Compared with Opacus'
stock hooks this skips autograd's redundant summed weight gradient; compared with
its ghost clipping it needs one backward pass, not two.

Exactness in low precision: norms, clip factors and clipped sums are formed in at
least float32 whatever the parameter dtype (:func:`compute_dtype`), from the exact
float32 image of the per-example values, so removing one example moves the sum by at
most ``C`` up to float32 rounding even in bfloat16 or float16 (a factor rounded to
bfloat16 alone is off by up to 0.4 %).

Non-finite examples: an example whose gradient norm is not finite (a NaN or an
infinity anywhere in its gradient, or a norm beyond float32) gets clip factor 0 and
its per-example values are replaced by zeros before they are summed, so it
contributes exactly nothing and the clipped sum stays finite; ``ClipResult.nonfinite``
marks it. Zeroing is a per-example function like clipping itself, so the
sensitivity bound ``C`` is unchanged.

Fail-closed rules: a trainable parameter owned by a module type we cannot handle
is refused at attach time; a layer whose input does not lead with the batch
dimension is refused at backward time; a backward pass without an active
collector is refused. Nothing falls back to non-private gradients.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from opacus.grad_sample import GradSampleModule
from torch import nn

from tensafe.errors import ConfigError, PrivacyError
from tensafe.privacy import gram
from tensafe.privacy.gram import (
    compute_dtype,
    example_rows,
    ghost_squared_norms,
    position_gram,
    zero_rows,
)
from tensafe.privacy.groups import Grouping

# RMSNorm implementations whose forward is exactly ``weight * (x * rsqrt(mean(x²) + eps))``
# computed in fp32 and cast back (LLaMA-family). Others (e.g. Gemma's ``1 + weight``)
# are refused rather than handled approximately.
_RMSNORM_CLASSES = frozenset(
    {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm"}
)

CLIP_EPS = 1e-6  # as in opacus.optimizers.optimizer: C / (norm + 1e-6)

# Elements of the (at least) float32 working copy used per slice of a clipped sum.
_SUM_CHUNK_ELEMENTS = 1 << 22

# Input position Grams kept for reuse by the next ghost layers fed the same tensor
# (q/k/v, gate/up run their backward one after another).
_INPUT_GRAM_CACHE = 2

_TensorKey = tuple[object, ...]


def _tensor_key(t: torch.Tensor) -> _TensorKey:
    """Identifies the values of ``t`` while ``t`` is alive: same memory, layout, dtype
    and version counter (an in-place write bumps it) mean the same values."""
    return (t.device, t.dtype, t.data_ptr(), tuple(t.shape), t.stride(), t._version)


@dataclass(frozen=True)
class ClipResult:
    """Outcome of clipping one backward pass.

    ``norms``: per-example gradient norms before clipping, ``(B,)``, in at least float32.
    ``factors``: per-example clip factors, ``(B,)``; 0 for a non-finite example.
    ``sums``: parameter → ``Σ_i factor_i · g_i`` in at least float32, always finite
    (parameters no example touched are absent).
    ``nonfinite``: ``(B,)`` bool, the examples whose norm was not finite and which
    contributed nothing.
    """

    norms: torch.Tensor
    factors: torch.Tensor
    sums: dict[nn.Parameter, torch.Tensor]
    nonfinite: torch.Tensor


class _Site:
    """One patched module and how its per-example contributions are computed."""

    def __init__(self, module: nn.Module, kind: str, shared: bool, owner: PerExampleClipper):
        self.module = module
        self.kind = kind
        self.shared = shared
        self.owner = owner

    def record(self, inp: torch.Tensor, grad_out: torch.Tensor) -> None:
        collector = self.owner._active
        if collector is None:
            raise PrivacyError(
                "a backward pass ran through a DP-wrapped layer with no active clip collector"
            )
        inp, grad_out = inp.detach(), grad_out.detach()
        if collector.grouping is not None:  # a unit's datums clipped as one contribution
            inp, grad_out = collector.grouping.apply(inp), collector.grouping.apply(grad_out)
        collector.add(self, inp, grad_out)


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, site):  # type: ignore[override]
        ctx.site = site
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_x = grad_out.matmul(weight.to(grad_out.dtype)) if ctx.needs_input_grad[0] else None
        ctx.site.record(x, grad_out)
        return grad_x, None, None, None


class _EmbeddingFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, site):  # type: ignore[override]
        ctx.site = site
        ctx.save_for_backward(ids)
        return F.embedding(ids, weight, site.module.padding_idx)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (ids,) = ctx.saved_tensors
        ctx.site.record(ids, grad_out)
        return None, None, None


class _ScaleFn(torch.autograd.Function):
    """``x * weight`` with weight broadcast over the last dim (the RMSNorm gain)."""

    @staticmethod
    def forward(ctx, x, weight, site):  # type: ignore[override]
        ctx.site = site
        ctx.save_for_backward(x, weight)
        return weight * x

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_x = grad_out * weight if ctx.needs_input_grad[0] else None
        ctx.site.record(x, grad_out)
        return grad_x, None, None


def _linear_forward(site: _Site):
    def forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return _LinearFn.apply(x, self.weight, self.bias, site)

    return forward


def _embedding_forward(site: _Site):
    def forward(self: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        return _EmbeddingFn.apply(ids, self.weight, site)

    return forward


def _rmsnorm_forward(site: _Site):
    def forward(self: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        dtype = hidden.dtype
        h = hidden.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return _ScaleFn.apply(h.to(dtype), self.weight, site)

    return forward


def _site_kind(module: nn.Module) -> str | None:
    if type(module) is nn.Linear:
        return "linear"
    if type(module) is nn.Embedding:
        if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
            return None
        return "embedding"
    if type(module).__name__ in _RMSNORM_CLASSES and hasattr(module, "variance_epsilon"):
        return "rmsnorm"
    return None


_FORWARDS = {
    "linear": _linear_forward,
    "embedding": _embedding_forward,
    "rmsnorm": _rmsnorm_forward,
}


class ClipCollector:
    """Gathers per-example contributions during one backward pass of a batch of ``B``."""

    def __init__(
        self,
        batch_size: int,
        grouping: Grouping | None = None,
        repeated: Collection[nn.Module] = (),
    ) -> None:
        self.batch_size = batch_size if grouping is None else grouping.num_groups
        #: datums clipped together (per unit); ``batch_size`` then counts units
        self.grouping = grouping
        #: ids of the modules called several times per forward (never ghost-clipped)
        self.repeated = frozenset(id(m) for m in repeated)
        self._per_sample: dict[nn.Parameter, torch.Tensor] = {}
        #: ghost-clipped calls: (site, activations, output gradients, activations' key)
        self._ghost: list[tuple[_Site, torch.Tensor, torch.Tensor, _TensorKey]] = []
        self._ghost_sq: torch.Tensor | None = None
        #: the latest input position Grams: (key, the input itself — held so that its
        #: memory cannot be reused while the key is cached —, its Gram)
        self._input_grams: list[tuple[_TensorKey, torch.Tensor, torch.Tensor]] = []
        #: ghost calls whose input Gram was reused from a layer fed the same tensor
        self.shared_input_grams = 0
        self._ghost_seen: set[int] = set()
        #: weight → its uses, for weights whose norm comes from Gram matrices
        self._gram: dict[nn.Parameter, list[gram.Use]] = {}
        #: weight → whether the Gram route was chosen (by its first use in this pass)
        self._gram_chosen: dict[nn.Parameter, bool] = {}
        #: how many layer calls used each strategy in this pass (for tests and metrics);
        #: "gram" appears once a use took the Gram route
        self.strategy_counts: dict[str, int] = {"ghost": 0, "instantiate": 0}

    def _accumulate(self, param: nn.Parameter, grad_sample: torch.Tensor) -> None:
        prev = self._per_sample.get(param)
        self._per_sample[param] = grad_sample if prev is None else prev.add_(grad_sample)

    def _use_gram(self, weight: nn.Parameter, *, tokens: int) -> bool:
        """Whether ``weight`` (an embedding table or a shared linear weight) takes the
        Gram route; decided by its first use in this pass so all its uses agree (mixing
        routes would drop the cross terms between them from the norm)."""
        chosen = self._gram_chosen.get(weight)
        if chosen is None:
            chosen = gram.gram_pays(tokens=tokens, shape=weight.shape)
            self._gram_chosen[weight] = chosen
        return chosen

    def _add_gram(self, weight: nn.Parameter, use: gram.Use) -> None:
        self._gram.setdefault(weight, []).append(use)
        self.strategy_counts["gram"] = self.strategy_counts.get("gram", 0) + 1

    def _add_linear_in_place(
        self, module: nn.Linear, inp: torch.Tensor, grad_out: torch.Tensor
    ) -> None:
        """Add one call's per-example ``grad_outᵀ · inp`` (and bias gradient) to the
        existing ``(B, out, in)`` buffer in place — what Opacus' linear sampler computes,
        without a second buffer-sized temporary (a head called once per chunk would
        otherwise allocate one per call)."""
        buf = self._per_sample[module.weight]
        g = grad_out.reshape(self.batch_size, -1, grad_out.shape[-1]).to(buf.dtype)
        buf.baddbmm_(g.transpose(1, 2), inp.reshape(self.batch_size, -1, inp.shape[-1]).to(g))
        if module.bias is not None and module.bias.requires_grad:
            self._accumulate(module.bias, g.sum(dim=1))

    def _input_gram(self, inp: torch.Tensor, key: _TensorKey) -> torch.Tensor:
        """The position Gram of a ghost layer's input, reused when the previous ghost
        layers were fed the same tensor (q/k/v, gate/up): their weight norms share
        the activations' half of the work."""
        for cached_key, _, gram_matrix in self._input_grams:
            if cached_key == key:
                self.shared_input_grams += 1
                return gram_matrix
        gram_matrix = position_gram(inp)
        self._input_grams = [*self._input_grams[1 - _INPUT_GRAM_CACHE :], (key, inp, gram_matrix)]
        return gram_matrix

    def add(self, site: _Site, inp: torch.Tensor, grad_out: torch.Tensor) -> None:
        """Record one layer call's activations and output gradients."""
        if inp.shape[0] != self.batch_size or grad_out.shape[0] != self.batch_size:
            raise PrivacyError(
                f"layer {type(site.module).__name__} saw a leading dimension of {inp.shape[0]} "
                f"but the batch has {self.batch_size} examples; "
                "per-example attribution is impossible"
            )
        module = site.module
        if site.kind == "linear":
            seq = inp.shape[1] if inp.dim() == 3 else 1
            shared_weight = site.shared and module.weight.requires_grad
            if shared_weight and id(module) in self.repeated:
                # a head applied chunk by chunk keeps its memory bound (B × out × in)
                # instantiated; unless a use already chose the Gram route, which stays exact
                self._gram_chosen.setdefault(module.weight, False)
            if shared_weight and self._use_gram(module.weight, tokens=seq):
                self._add_gram(module.weight, gram.LinearUse(inp=inp, grad_out=grad_out))
                if module.bias is not None and module.bias.requires_grad:
                    bias = grad_out.reshape(self.batch_size, -1, grad_out.shape[-1]).sum(1)
                    self._accumulate(module.bias, bias)
                return
            big = 2 * seq * seq < module.in_features * module.out_features
            once = not site.shared and id(module) not in self.repeated
            if big and once and id(module) not in self._ghost_seen:
                self._ghost_seen.add(id(module))
                key = _tensor_key(inp)
                # Gram matrices in at least float32 (in bf16 they misjudge norms)
                weight_sq, bias_sq = ghost_squared_norms(
                    input_gram=self._input_gram(inp, key), grad_out=grad_out
                )
                for sq, param in ((weight_sq, module.weight), (bias_sq, module.bias)):
                    if param is not None and param.requires_grad:
                        self._ghost_sq = sq if self._ghost_sq is None else self._ghost_sq + sq
                self._ghost.append((site, inp, grad_out, key))
                self.strategy_counts["ghost"] += 1
                return
            if id(module) in self._ghost_seen:
                raise PrivacyError(
                    f"{type(module).__name__} was used twice in one forward pass after ghost "
                    "clipping was chosen for it; this model is not supported"
                )
            if module.weight in self._per_sample:  # a repeated call or a tied weight's other use
                self._add_linear_in_place(module, inp, grad_out)
            else:
                sampler = GradSampleModule.GRAD_SAMPLERS[nn.Linear]
                for param, gs in sampler(module, [inp], grad_out).items():
                    self._accumulate(param, gs)
            self.strategy_counts["instantiate"] += 1
        elif site.kind == "embedding":
            if not module.weight.requires_grad:
                return
            weight = module.weight
            ids = inp.reshape(self.batch_size, -1)
            g = grad_out.reshape(self.batch_size, -1, module.embedding_dim)
            if module.padding_idx is not None:  # F.embedding gives the padding row no gradient
                g = g.masked_fill((ids == module.padding_idx).unsqueeze(-1), 0)
            if self._use_gram(weight, tokens=ids.shape[1]):
                self._add_gram(weight, gram.EmbeddingUse(ids=ids, grad_out=g))
                return
            self.strategy_counts["instantiate"] += 1
            buf = self._per_sample.get(weight)
            if buf is None:
                buf = torch.zeros(self.batch_size, *weight.shape, dtype=g.dtype, device=g.device)
                self._per_sample[weight] = buf
            index = ids.unsqueeze(-1).expand(-1, -1, module.embedding_dim)
            buf.scatter_add_(1, index, g.to(buf.dtype))
        else:  # rmsnorm gain
            if not module.weight.requires_grad:
                return
            gs = (grad_out * inp).reshape(self.batch_size, -1, inp.shape[-1]).sum(dim=1)
            self._accumulate(module.weight, gs)
            self.strategy_counts["instantiate"] += 1

    def _ghost_sums(
        self,
        sums: dict[nn.Parameter, torch.Tensor],
        *,
        factors: torch.Tensor,
        finite: torch.Tensor | None,
    ) -> None:
        """Add the ghost-clipped layers' clipped sums ``Σ_i c_i g_iᵀ a_i`` to ``sums``,
        releasing each layer's activations and output gradients once used (the sums
        grow while they shrink, so the peak stays near the backward's).

        Layers fed the same input are done together: the factors multiply the shared
        activations once when that is narrower than their output gradients together
        (q/k/v, gate/up, a wide output), else each layer's output gradients."""
        groups: dict[_TensorKey, list[tuple[_Site, torch.Tensor, torch.Tensor]]] = {}
        for site, inp, grad_out, key in self._ghost:
            groups.setdefault(key, []).append((site, inp, grad_out))
        self._ghost.clear()
        while groups:
            _, calls = groups.popitem()  # the latest first: the order of the backward
            inp = calls[0][1]
            outs = sum(grad_out.shape[-1] for _, _, grad_out in calls)
            scaled_inp = (
                example_rows(inp, finite=finite, factors=factors) if inp.shape[-1] <= outs else None
            )
            plain_inp = None if scaled_inp is not None else example_rows(inp, finite=finite)
            del inp  # the calls' own references go as each is popped
            while calls:
                site, _, grad_out = calls.pop()
                module = site.module
                weight = module.weight if module.weight.requires_grad else None
                bias = module.bias
                bias = bias if bias is not None and bias.requires_grad else None
                w = b = None
                if scaled_inp is not None:
                    g = example_rows(grad_out, finite=finite)
                    w = None if weight is None else g.t().matmul(scaled_inp)
                    if bias is not None:  # Σ_i c_i Σ_t g_{i,t}
                        per_example = g.reshape(factors.shape[0], -1, g.shape[-1]).sum(dim=1)
                        b = factors.to(g.dtype) @ per_example
                else:
                    g = example_rows(grad_out, finite=finite, factors=factors)
                    w = None if weight is None else g.t().matmul(plain_inp)
                    b = None if bias is None else g.sum(dim=0)
                del grad_out, g
                for param, value in ((weight, w), (bias, b)):
                    if param is not None and value is not None:
                        sums[param] = sums[param] + value if param in sums else value
            del scaled_inp, plain_inp

    def clip(self, max_grad_norm: float) -> ClipResult:
        """Clip every example's gradient to ``max_grad_norm`` and sum over examples."""
        sq = self._ghost_sq
        for gs in self._per_sample.values():
            contrib = (
                gs.reshape(self.batch_size, -1)
                .to(torch.promote_types(gs.dtype, torch.float32))
                .pow(2)
                .sum(dim=1)
            )
            sq = contrib if sq is None else sq + contrib
        for uses in self._gram.values():
            contrib = gram.squared_norms(uses)
            sq = contrib if sq is None else sq + contrib
        if sq is None:  # no trainable parameter was touched
            sq = torch.zeros(self.batch_size)
        norms = sq.clamp(min=0).sqrt()
        factors, finite = clip_factors(norms, max_grad_norm)
        _require_exact_matmul()
        keep = None if bool(finite.all()) else finite  # one sync: skip masking if clean
        sums: dict[nn.Parameter, torch.Tensor] = {}
        for param, gs in self._per_sample.items():
            sums[param] = clipped_sum(gs, factors=factors, finite=keep)
        self._input_grams.clear()
        self._ghost_sums(sums, factors=factors, finite=keep)
        for weight, uses in self._gram.items():
            w = gram.clipped_sum(uses, shape=weight.shape, factors=factors, finite=keep)
            sums[weight] = sums[weight] + w if weight in sums else w
        self._per_sample.clear()
        self._ghost.clear()
        self._gram.clear()
        return ClipResult(norms=norms, factors=factors, sums=sums, nonfinite=~finite)


# ------------------------------------------- exact, NaN-proof clipping arithmetic
def clip_factors(norms: torch.Tensor, max_grad_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Opacus' clip factors ``min(1, C / (‖g_i‖ + 1e-6))`` and the mask of finite norms.

    ``norms`` is in at least float32, and so are the factors. An example whose norm
    is NaN or infinite gets factor 0 (``clamp`` would pass a NaN through).
    """
    finite = torch.isfinite(norms)
    factors = (max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0)
    return torch.where(finite, factors, torch.zeros_like(factors)), finite


def _require_exact_matmul() -> None:
    """Clipped sums are float32 matmuls; a reduced-precision mode would round the factors.

    Raises:
        PrivacyError: ``torch.get_float32_matmul_precision()`` is not ``"highest"``
            (PyTorch's default; ``"high"``/``"medium"`` allow TF32 or bfloat16).
    """
    precision = torch.get_float32_matmul_precision()
    if precision != "highest":
        raise PrivacyError(
            f"torch.get_float32_matmul_precision() is {precision!r}; exact per-example "
            "clipping needs 'highest' (reduced-precision float32 matmuls would round the "
            "clip factors)"
        )


def clipped_sum(
    per_example: torch.Tensor, *, factors: torch.Tensor, finite: torch.Tensor | None
) -> torch.Tensor:
    """``Σ_b factors[b] · per_example[b]`` in :func:`compute_dtype`.

    ``finite`` marks the examples to keep; the others' rows are zeroed first, so their
    NaN or infinite entries never reach the sum (``None``: every example is finite).
    A bfloat16 ``(B, ...)`` tensor is widened to float32 slice by slice, so the
    working copy stays small. Needs float32 matmuls at full precision
    (``torch.get_float32_matmul_precision() == "highest"``, PyTorch's default).
    """
    dtype = compute_dtype(per_example.dtype)
    flat = per_example.reshape(per_example.shape[0], -1)
    weights = factors.to(dtype)
    if flat.dtype == dtype and finite is None:
        return (weights @ flat).view(per_example.shape[1:])
    out = torch.empty(flat.shape[1], dtype=dtype, device=flat.device)
    step = max(1, _SUM_CHUNK_ELEMENTS // max(1, flat.shape[0]))
    for start in range(0, flat.shape[1], step):
        out[start : start + step] = weights @ zero_rows(
            flat[:, start : start + step].to(dtype), finite
        )
    return out.view(per_example.shape[1:])


class PerExampleClipper:
    """Routes a model's trainable layers through per-example clipping.

    Example::

        clipper = PerExampleClipper(model)
        with clipper.collect(batch_size=len(batch)) as collector:
            per_example_losses.sum().backward()
        result = collector.clip(max_grad_norm=1.0)   # result.sums[param] is Σ clip(g_i)

    Raises:
        PrivacyError: at construction, if a trainable parameter belongs to a module
            type whose per-example gradient we cannot compute (names listed).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._active: ClipCollector | None = None
        self._sites: list[_Site] = []
        owners: dict[int, int] = {}
        unsupported: list[str] = []
        candidates: list[tuple[str, nn.Module, str]] = []
        for name, module in model.named_modules(remove_duplicate=False):
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            kind = _site_kind(module)
            if kind is None:
                unsupported += [
                    f"{name}.{n}"
                    for n, p in module.named_parameters(recurse=False)
                    if p.requires_grad
                ]
                continue
            for p in own:
                owners[id(p)] = owners.get(id(p), 0) + 1
            candidates.append((name, module, kind))
        if unsupported:
            raise PrivacyError(
                "per-example gradients are not supported for these trainable parameters: "
                + ", ".join(sorted(set(unsupported))[:20])
                + "; freeze them or use LoRA"
            )
        seen: set[int] = set()
        for _name, module, kind in candidates:
            if id(module) in seen:
                continue
            seen.add(id(module))
            shared = any(
                owners[id(p)] > 1 for p in module.parameters(recurse=False) if p.requires_grad
            )
            site = _Site(module, kind, shared, self)
            module.forward = types.MethodType(_FORWARDS[kind](site), module)
            self._sites.append(site)
        self.parameters = [p for p in model.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def collect(
        self,
        *,
        batch_size: int,
        groups: Sequence[int] | None = None,
        repeated: Collection[nn.Module] = (),
    ) -> Iterator[ClipCollector]:
        """Activate a fresh collector for one forward/backward of ``batch_size`` examples.
        With ``groups`` (a unit label per example), each unit's examples are clipped
        together as one contribution (:class:`~tensafe.privacy.groups.Grouping`): the
        result's norms and factors are then per unit. ``repeated`` names modules the
        forward calls more than once (an output head applied chunk by chunk): their
        per-example gradients are instantiated and summed over the calls (a module
        called twice without being named here is refused if it was ghost-clipped).

        Raises:
            PrivacyError: a collector is already active.
            ConfigError: (``groups``) not one label per example.
        """
        if self._active is not None:
            raise PrivacyError("a clip collector is already active on this model")
        grouping = None
        if groups is not None:
            if len(groups) != batch_size:
                raise ConfigError("groups", f"{len(groups)} labels for {batch_size} examples")
            grouping = Grouping.from_groups(groups)
        collector = ClipCollector(batch_size, grouping, repeated)
        self._active = collector
        try:
            yield collector
        finally:
            self._active = None

    def detach(self) -> None:
        """Restore every patched module's original ``forward``."""
        for site in self._sites:
            site.module.__dict__.pop("forward", None)  # fall back to the class's forward
        self._sites.clear()


__all__ = [
    "CLIP_EPS",
    "ClipCollector",
    "ClipResult",
    "PerExampleClipper",
    "clip_factors",
    "clipped_sum",
    "compute_dtype",
]
