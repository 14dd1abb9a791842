"""Run a one-run privacy audit of the DP step on a model (CPU-sized by default).

:func:`run_canary_audit` trains a LoRA adapter on the tiny model (or a model given)
with the production engine — per-example clipping, CSPRNG noise, PRV accountant —
for ``steps`` noisy steps on N synthetic records drawn by Poisson sampling, with
m gradient canaries (:mod:`tensafe.audit.canaries`) in the steps. Afterwards it
guesses which canaries were included (:func:`~tensafe.audit.canary_result.best_guess`)
and reports ε_lb beside the accountant's ε for the same (σ, q, steps, δ).

Only the audit's own randomness (records, canaries, inclusion, sampling) can be
seeded (``seed``, for reproducible tests); the DP noise always comes from the
engine's CSPRNG. ``test_fault`` breaks the engine on purpose to show the audit bite.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np

from tensafe.audit.canaries import GradientCanaries
from tensafe.audit.canary_result import CanaryAuditResult, best_guess
from tensafe.audit.ledger import utc_timestamp
from tensafe.datasets.sampling import SecureUniforms, SeededUniforms, UniformSource, poisson_sample
from tensafe.engine import TrainingEngine
from tensafe.engine.faults import BrokenPrivacyWarning, TestFault
from tensafe.errors import ConfigError
from tensafe.models import LoadedModel, LoRAConfig, build_tiny_llama
from tensafe.privacy import DPConfig
from tensafe.privacy.epsilon import AccountantName


@dataclass(frozen=True, kw_only=True)
class CanaryAuditConfig:
    """What to audit and how hard. Validated on construction.

    The defaults audit σ = 8, q = ½ over 100 steps (ε ≈ 2.6 at δ = 10⁻⁵, PRV) with
    1000 canaries, in about half a minute on one CPU core with the tiny model.

    Attributes:
        canaries: m (≤ the trainable coordinates of the model's LoRA adapter).
        steps: noisy steps.
        noise_multiplier: σ.
        sample_rate: q, for the records and the canaries alike.
        dataset_size: N synthetic records besides the canaries.
        max_grad_norm: C.
        delta: δ of both ε (default: the run's default, ``min(1e-5, N^-1.1)``).
        accountant: ``"prv"`` or ``"rdp"``.
        canary_norm: a canary gradient's norm before clipping, in units of C (> 1:
            clipping must cut it).
        sequence_length: tokens per synthetic record.
        lora_rank: rank of the adapter trained.
        confidence: of the lower bound.
        seed: **tests only**: seeds the audit's own randomness; ``None`` uses the OS
            CSPRNG.
        test_fault: **tests only**: ``"sigma/10"`` or ``"no-clipping"``
            (:mod:`tensafe.engine.faults`).

    Raises:
        ConfigError: naming the field.
    """

    canaries: int = 1000
    steps: int = 100
    noise_multiplier: float = 8.0
    sample_rate: float = 0.5
    dataset_size: int = 16
    max_grad_norm: float = 1.0
    delta: float | None = None
    accountant: AccountantName = "prv"
    canary_norm: float = 10.0
    sequence_length: int = 16
    lora_rank: int = 4
    confidence: float = 0.95
    seed: int | None = None
    test_fault: TestFault | None = None

    def __post_init__(self) -> None:
        for name in ("canaries", "steps", "dataset_size", "sequence_length", "lora_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be an integer ≥ 1, got {value!r}")
        if self.sequence_length < 2:
            raise ConfigError("sequence_length", "must be ≥ 2 (one predicted token)")
        if not math.isfinite(self.canary_norm) or self.canary_norm <= 1.0:
            raise ConfigError("canary_norm", f"must be finite and > 1, got {self.canary_norm!r}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError("confidence", f"must be in (0, 1), got {self.confidence!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ConfigError("seed", "must be an integer or None")

    def dp_config(self) -> DPConfig:
        """The audited run's DP settings (validated by :class:`DPConfig`)."""
        return DPConfig(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            dataset_size=self.dataset_size,
            max_grad_norm=self.max_grad_norm,
            target_delta=self.delta,
            accountant=self.accountant,
        )


def run_canary_audit(
    config: CanaryAuditConfig = CanaryAuditConfig(),
    *,
    model: LoadedModel | None = None,
    run_id: str = "canary-audit",
) -> CanaryAuditResult:
    """Train with canaries and return ε_lb beside ε_upper (see the module docstring).

    Args:
        config: the audit.
        model: the base model (a fresh tiny model by default); its LoRA adapter is
            trained in place.
        run_id: the name the result (and its ledger row) gives the audited run.

    Raises:
        ConfigError: invalid settings (e.g. more canaries than adapter coordinates).
    """
    started = time.perf_counter()
    source: UniformSource = SecureUniforms() if config.seed is None else SeededUniforms(config.seed)
    loaded = model if model is not None else build_tiny_llama()
    with warnings.catch_warnings():
        if config.test_fault is not None:  # the audit says so in its result and verdict
            warnings.simplefilter("ignore", BrokenPrivacyWarning)
        engine = TrainingEngine(
            model=loaded,
            lora_config=LoRAConfig(rank=config.lora_rank, alpha=2 * config.lora_rank),
            dp_config=config.dp_config(),
            test_fault=config.test_fault,
        )
    assert engine.dp is not None
    canaries = GradientCanaries(
        params=engine.params,
        canaries=config.canaries,
        sample_rate=config.sample_rate,
        raw_norm=config.canary_norm * config.max_grad_norm,
        source=source,
    )
    engine.attach_probe(canaries)
    records = _synthetic_records(config, vocab_size=engine.vocab_size, source=source)
    for _ in range(config.steps):
        drawn = poisson_sample(config.dataset_size, config.sample_rate, source=source)
        if drawn.size:
            batch = records[drawn].tolist()
            engine.forward_backward({"input_ids": batch, "labels": batch})
        engine.optim_step()
    delta = engine.dp.config.delta
    guess = best_guess(
        canaries.scores, canaries.included, delta=delta, confidence=config.confidence
    )
    return CanaryAuditResult(
        run_id=run_id,
        model=loaded.name,
        canaries=config.canaries,
        steps=config.steps,
        noise_multiplier=config.noise_multiplier,
        sample_rate=config.sample_rate,
        max_grad_norm=config.max_grad_norm,
        dataset_size=config.dataset_size,
        delta=delta,
        accountant=config.accountant,
        canary_norm=config.canary_norm,
        confidence=config.confidence,
        guesses=guess.guesses,
        correct=guess.correct,
        epsilon_lower_bound=guess.epsilon_lower_bound,
        epsilon_upper=engine.epsilon(),
        included_scores=tuple(canaries.scores[canaries.included]),
        excluded_scores=tuple(canaries.scores[~canaries.included]),
        seeded=config.seed is not None,
        test_fault=config.test_fault,
        seconds=time.perf_counter() - started,
        created_at=utc_timestamp(),
    )


def _synthetic_records(
    config: CanaryAuditConfig, *, vocab_size: int, source: UniformSource
) -> np.ndarray:
    """N token sequences, uniform over the vocabulary (the records the canaries hide
    among)."""
    uniforms = source.uniforms(config.dataset_size * config.sequence_length)
    tokens = np.minimum((uniforms * vocab_size).astype(np.int64), vocab_size - 1)
    return tokens.reshape(config.dataset_size, config.sequence_length)


__all__ = ["CanaryAuditConfig", "run_canary_audit"]
