"""Result records returned by :class:`~tensafe.engine.TrainingEngine` operations."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class LossFnOutput:
    """Per-example outputs, unpadded: ``logprobs[t]`` and ``elementwise_loss[t]``
    (the weighted per-token loss) for each input position ``t``."""

    logprobs: np.ndarray
    elementwise_loss: np.ndarray


@dataclass(frozen=True)
class ForwardBackwardResult:
    """Outcome of ``forward`` or ``forward_backward`` on one batch.

    ``loss`` is the token-weighted mean loss over the batch (a metric only — the
    gradient uses per-example losses). ``grad_norm`` is the L2 norm of this call's
    averaged gradient (clipped per example under DP; ``None`` for ``forward``).
    ``metrics`` carries ``loss:mean``, ``loss:sum``, ``num_examples:sum``,
    ``step:max`` and, under DP, ``dp/clip_fraction``,
    ``dp/per_example_grad_norm:mean`` and ``dp/nonfinite_examples:sum`` (examples
    whose gradient was NaN or infinite and contributed nothing).
    """

    loss: float
    grad_norm: float | None
    tokens_processed: int
    loss_fn_output_type: str
    loss_fn_outputs: list[LossFnOutput]
    metrics: dict[str, float]


@dataclass(frozen=True)
class DPMetrics:
    """Privacy accounting after a noisy step: ε spent so far at ``delta``."""

    epsilon_spent: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    expected_batch_size: float
    accountant: str
    steps: int


@dataclass(frozen=True)
class OptimStepResult:
    """Outcome of ``optim_step``: the new step number and what was applied."""

    step: int
    learning_rate: float
    examples_in_batch: int
    dp_metrics: DPMetrics | None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineInfo:
    """What a run is training."""

    model_name: str
    arch: str
    is_lora: bool
    lora_rank: int | None
    trainable_params: int
    total_params: int
    vocab_size: int
    dp_enabled: bool
    step: int


__all__ = ["DPMetrics", "EngineInfo", "ForwardBackwardResult", "LossFnOutput", "OptimStepResult"]
