"""The DP-SGD state of one training run and the algorithm's steps as named calls.

One :class:`DPState` holds what a DP run needs beyond the model and optimizer: the
resolved DP parameters, the per-example clipper, the noise source and the
accountant. The engine's step reads (Opacus' ``pre_step`` is the model)::

    clip(collector)            →  each example's gradient clipped to C, summed
    noisy_gradients(sums, like)  →  add noise: + N(0, σ²C²)  →  scale: ÷ q·N
    account()                  →  one accountant step (σ, q); the DPMetrics after it

Checking the privacy budget is not part of this: the server's budget service
decides whether a step may be taken before it calls ``optim_step``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tensafe.engine.faults import TestFault, faulted_clip_norm, faulted_noise_std
from tensafe.engine.results import DPMetrics
from tensafe.privacy.accountant import PrivacyAccountant
from tensafe.privacy.config import ResolvedDP
from tensafe.privacy.noise import NoiseSource
from tensafe.privacy.per_example import (
    ClipCollector,
    ClipResult,
    PerExampleClipper,
    clip_factors,
)


@dataclass(eq=False)
class DPState:
    """Resolved DP parameters, clipper, noise source and accountant of one run.

    Example::

        from tensafe.models import build_tiny_llama
        from tensafe.privacy import DPConfig
        model = build_tiny_llama().model
        dp = DPState.create(
            DPConfig(noise_multiplier=1.0, dataset_size=1000, expected_batch_size=8).resolve(),
            model=model,
        )
        weight = next(model.parameters())
        (grad,) = dp.noisy_gradients([None], like=[weight])  # noise once, ÷ q·N
        metrics = dp.account()  # one step recorded
        print(metrics.epsilon_spent, dp.accountant.history)

    Attributes:
        config: the resolved DP parameters (σ, q, C, N, δ, accountant, secure mode).
        clipper: per-example gradient clipping, hooked into the model.
        noise: the Gaussian noise generator (an AES-256-CTR keystream under a secret
            key, unless a test seed is given).
        accountant: the history of noisy steps and the ε it spends.
        fault: **test-only** deliberate break of the step (:mod:`tensafe.engine.faults`);
            ``None`` in every real run.
    """

    config: ResolvedDP
    clipper: PerExampleClipper
    noise: NoiseSource
    accountant: PrivacyAccountant
    fault: TestFault | None = None

    @classmethod
    def create(
        cls,
        config: ResolvedDP,
        *,
        model: nn.Module,
        noise_seed: int | None = None,
        device: torch.device | str = "cpu",
        fault: TestFault | None = None,
    ) -> DPState:
        """The DP state of a new run: hooks the clipper into ``model``, a fresh
        accountant, and a noise source keyed from the OS CSPRNG unless
        ``noise_seed`` is given (test-only; ignored in secure mode). ``fault``
        (test-only, already validated) breaks the step on purpose.

        Raises:
            PrivacyError: ``model`` has trainable layers whose per-example
                gradients cannot be computed.
        """
        return cls(
            config=config,
            clipper=PerExampleClipper(model),
            noise=NoiseSource(secure_mode=config.secure_mode, seed=noise_seed, device=device),
            accountant=PrivacyAccountant(accountant=config.accountant),
            fault=fault,
        )

    # ------------------------------------------------------- forward_backward
    def clip(self, collector: ClipCollector) -> ClipResult:
        """Clip each example's collected gradient to ``max_grad_norm`` and sum them."""
        return collector.clip(faulted_clip_norm(self.config.max_grad_norm, self.fault))

    def clip_norms(self, norms: torch.Tensor) -> torch.Tensor:
        """The clip factors of contributions with these L2 ``norms`` (Opacus' formula,
        as :meth:`clip` applies it; 0 for a non-finite norm): for contributions that
        are formed outside a backward pass, e.g. an audit's gradient canaries."""
        factors, _ = clip_factors(norms, faulted_clip_norm(self.config.max_grad_norm, self.fault))
        return factors

    @staticmethod
    def clip_metrics(clip: ClipResult) -> dict[str, float]:
        """The share of examples that were clipped (a non-finite example, which
        contributes nothing, counts as clipped), the mean gradient norm of the
        finite examples (0 if there are none), and how many examples had a
        non-finite gradient and were left out of the sum."""
        finite = ~clip.nonfinite
        return {
            "dp/clip_fraction": float((clip.factors < 1.0).float().mean()),
            "dp/per_example_grad_norm:mean": (
                float(clip.norms[finite].mean()) if bool(finite.any()) else 0.0
            ),
            "dp/nonfinite_examples:sum": float(clip.nonfinite.sum()),
        }

    # ------------------------------------------------------------- optim_step
    def noisy_gradients(
        self,
        clipped_sums: Sequence[torch.Tensor | None],
        *,
        like: Sequence[nn.Parameter],
    ) -> list[torch.Tensor]:
        """The DP gradient of each parameter of ``like``: its clipped sum plus i.i.d.
        N(0, σ²C²) per coordinate (``add noise``), divided by the *expected* batch
        size q·N whatever the realised batch size (``scale``: dividing by the
        realised size would leak it).

        One noise draw per coordinate, in parameter order; each value is formed in
        float64 and rounded once to its parameter's dtype (new tensors; the sums are
        not changed). A ``None`` sum (no example reached the parameter, or the batch
        was empty) counts as zeros, so the parameter still gets its noise.

        Raises:
            ConfigError: a sum is not a floating-point tensor on the run's device.
        """
        std = faulted_noise_std(
            self.config.noise_multiplier * self.config.max_grad_norm, self.fault
        )
        totals = [
            s
            if s is not None
            else torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32))
            for s, p in zip(clipped_sums, like, strict=True)
        ]
        return self.noise.noisy_means(
            totals,
            std=std,
            divisor=self.config.expected_batch_size,
            dtypes=[p.dtype for p in like],
        )

    def account(self) -> DPMetrics:
        """Record one noisy step (σ, q) and return the privacy metrics after it."""
        cfg = self.config
        self.accountant.record_step(
            noise_multiplier=cfg.noise_multiplier, sample_rate=cfg.sample_rate
        )
        return DPMetrics(
            epsilon_spent=self.accountant.epsilon(cfg.delta),
            delta=cfg.delta,
            noise_multiplier=cfg.noise_multiplier,
            sample_rate=cfg.sample_rate,
            max_grad_norm=cfg.max_grad_norm,
            expected_batch_size=cfg.expected_batch_size,
            accountant=cfg.accountant,
            steps=self.accountant.steps,
        )

    def epsilon(self, delta: float | None = None) -> float:
        """ε spent so far at ``delta`` (the run's δ by default); 0 before any step."""
        return self.accountant.epsilon(self.config.delta if delta is None else delta)


__all__ = ["DPState"]
