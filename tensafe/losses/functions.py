"""Per-example loss functions.

Each loss turns token log-probabilities into a per-token loss; the shared
:func:`compute_loss` then reduces it **per example**: example ``b``'s loss is the
weighted mean of its token losses, ``sum_t w[b,t] * l[b,t] / sum_t w[b,t]``.
Nothing ever averages tokens across examples: one example is the privacy unit,
and its gradient must not depend on any other example (DP-SGD's sensitivity
bound relies on it). Examples whose weights are all zero contribute zero loss.

The registry :data:`LOSS_FUNCTIONS` maps Tinker's loss names to implementations.
Each loss also exists in Tinker's own convention, named with a ``_sum`` suffix
(``cross_entropy_sum``): example ``b``'s loss is the plain sum
``sum_t w[b,t] * l[b,t]`` and weights may be negative (``forward_backward_custom``
sends ``-dC/dlogprob`` as weights). The Tinker-protocol router uses these; each
example is still clipped on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from tensafe.errors import ConfigError
from tensafe.losses.batch import TokenBatch

TokenLoss = Callable[[torch.Tensor, TokenBatch, Mapping[str, float]], torch.Tensor]


@dataclass(frozen=True)
class LossFunction:
    """A named per-token loss.

    ``required_inputs`` are the ``loss_fn_inputs`` each datum must carry;
    ``config_defaults`` lists the accepted ``loss_fn_config`` keys and defaults;
    ``reduction`` is how an example's token losses become its loss (``token_mean``:
    weighted mean; ``sum``: weighted sum, Tinker's convention); ``signed_weights``
    admits negative weights (only with ``sum``: a weighted mean needs a positive
    denominator).
    """

    name: str
    token_loss: TokenLoss
    required_inputs: tuple[str, ...]
    config_defaults: Mapping[str, float]
    reduction: Literal["token_mean", "sum"] = "token_mean"
    signed_weights: bool = False

    def resolve_config(self, config: Mapping[str, float] | None) -> dict[str, float]:
        """Merge ``config`` over the defaults; unknown keys raise :class:`ConfigError`."""
        merged = dict(self.config_defaults)
        for key, value in (config or {}).items():
            if key not in merged:
                allowed = ", ".join(sorted(merged)) or "none"
                raise ConfigError(
                    f"loss_fn_config.{key}", f"unknown key for {self.name!r}; allowed: {allowed}"
                )
            merged[key] = float(value)
        return merged


@dataclass(frozen=True)
class LossOutput:
    """The result of a loss evaluation on one batch.

    ``per_example`` is differentiable, shape ``(B,)``. ``logprobs`` and
    ``elementwise`` are detached ``(B, T)`` tensors (padding positions are 0).
    """

    per_example: torch.Tensor
    logprobs: torch.Tensor
    elementwise: torch.Tensor
    weight_sum: torch.Tensor


def _cross_entropy(logprobs: torch.Tensor, batch: TokenBatch, cfg: Mapping[str, float]):
    return -logprobs


def _ratio(logprobs: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    return torch.exp(logprobs - batch.extras["logprobs"].to(logprobs.dtype))


def _importance_sampling(logprobs: torch.Tensor, batch: TokenBatch, cfg: Mapping[str, float]):
    return -_ratio(logprobs, batch) * batch.extras["advantages"].to(logprobs.dtype)


def _ppo(logprobs: torch.Tensor, batch: TokenBatch, cfg: Mapping[str, float]):
    ratio = _ratio(logprobs, batch)
    adv = batch.extras["advantages"].to(logprobs.dtype)
    clipped = ratio.clamp(cfg["clip_low_threshold"], cfg["clip_high_threshold"])
    return -torch.minimum(ratio * adv, clipped * adv)


def _cispo(logprobs: torch.Tensor, batch: TokenBatch, cfg: Mapping[str, float]):
    # CISPO: the clipped importance weight is a constant (no gradient through it);
    # the gradient flows through log p only, so clipped tokens still learn.
    weight = _ratio(logprobs, batch).clamp(cfg["clip_low_threshold"], cfg["clip_high_threshold"])
    return -weight.detach() * logprobs * batch.extras["advantages"].to(logprobs.dtype)


def _dro(logprobs: torch.Tensor, batch: TokenBatch, cfg: Mapping[str, float]):
    # DRO: policy gradient with a quadratic penalty on log(p / q), q the sampler.
    adv = batch.extras["advantages"].to(logprobs.dtype)
    drift = logprobs - batch.extras["logprobs"].to(logprobs.dtype)
    return -(logprobs * adv - 0.5 * cfg["beta"] * drift.square())


_RL_INPUTS = ("target_tokens", "logprobs", "advantages")
_CLIP = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
_BASE_LOSSES: tuple[tuple[str, TokenLoss, tuple[str, ...], Mapping[str, float]], ...] = (
    ("cross_entropy", _cross_entropy, ("target_tokens",), {}),
    ("importance_sampling", _importance_sampling, _RL_INPUTS, {}),
    ("ppo", _ppo, _RL_INPUTS, _CLIP),
    ("cispo", _cispo, _RL_INPUTS, _CLIP),
    ("dro", _dro, _RL_INPUTS, {"beta": 0.05}),
)

#: Suffix of the losses in Tinker's convention (per-example sum, signed weights).
SUM_SUFFIX = "_sum"

LOSS_FUNCTIONS: Mapping[str, LossFunction] = {
    f.name: f
    for name, token_loss, inputs, defaults in _BASE_LOSSES
    for f in (
        LossFunction(name, token_loss, inputs, defaults),
        LossFunction(
            name + SUM_SUFFIX, token_loss, inputs, defaults, reduction="sum", signed_weights=True
        ),
    )
}


def get_loss_function(name: str) -> LossFunction:
    """Look up a loss by name; unknown names raise :class:`ConfigError` (field ``loss_fn``)."""
    try:
        return LOSS_FUNCTIONS[name]
    except (KeyError, TypeError):
        allowed = ", ".join(sorted(LOSS_FUNCTIONS))
        raise ConfigError("loss_fn", f"unknown loss {name!r}; allowed: {allowed}") from None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(target)`` per position, ``(B, T)``, computed in fp32 without
    materialising a second ``(B, T, V)`` log-softmax tensor."""
    flat = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return -flat.view(targets.shape)


def compute_loss(
    logits: torch.Tensor,
    batch: TokenBatch,
    *,
    loss_fn: LossFunction,
    config: Mapping[str, float],
) -> LossOutput:
    """Evaluate ``loss_fn`` on full ``(B, T, V)`` logits and reduce it per example
    (weighted token mean); :func:`loss_from_logprobs` of :func:`token_logprobs`."""
    return loss_from_logprobs(
        token_logprobs(logits, batch.targets), batch, loss_fn=loss_fn, config=config
    )


def loss_from_logprobs(
    logprobs: torch.Tensor,
    batch: TokenBatch,
    *,
    loss_fn: LossFunction,
    config: Mapping[str, float],
) -> LossOutput:
    """Evaluate ``loss_fn`` on the ``(B, T)`` target-token log-probabilities and reduce
    it per example (weighted token mean). The logits never appear here, so the
    caller may compute ``logprobs`` chunk by chunk
    (:func:`~tensafe.losses.chunked.chunked_token_logprobs`)."""
    weights = batch.weights.to(logprobs.dtype)
    token_loss = loss_fn.token_loss(logprobs, batch, config)
    weighted = token_loss * weights
    weight_sum = weights.sum(dim=1)
    if loss_fn.reduction == "sum":
        per_example = weighted.sum(dim=1)
    else:
        per_example = torch.where(
            weight_sum > 0,
            weighted.sum(dim=1) / weight_sum.clamp(min=torch.finfo(weights.dtype).tiny),
            0.0,
        )
    return LossOutput(
        per_example=per_example,
        logprobs=logprobs.detach(),
        elementwise=weighted.detach(),
        weight_sum=weight_sum.detach(),
    )


__all__ = [
    "LOSS_FUNCTIONS",
    "SUM_SUFFIX",
    "LossFunction",
    "LossOutput",
    "compute_loss",
    "get_loss_function",
    "loss_from_logprobs",
    "token_logprobs",
]
