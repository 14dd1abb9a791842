"""The one-run canary audit bites: honest engines pass, broken ones fail.

Real tiny model, real per-example clipping, CSPRNG noise and PRV accountant; only the
audit's own randomness (records, canaries, inclusion, sampling) is seeded.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from tensafe.audit.canaries import GradientCanaries
from tensafe.audit.canary_audit import CanaryAuditConfig, run_canary_audit
from tensafe.audit.canary_result import CanaryAuditResult, best_guess
from tensafe.datasets.sampling import SeededUniforms
from tensafe.engine import TrainingEngine
from tensafe.engine.faults import BrokenPrivacyWarning
from tensafe.errors import ConfigError, EngineStateError
from tensafe.models import LoRAConfig
from tensafe.privacy import DPConfig

# 20 steps of σ = 8, q = ½: ε ≈ 1.1 at δ = 1e-5 — well below what the canaries can
# prove (≈ 4.6 with every guess right already at 1000), so a broken step cannot hide.
# 4000 canaries: each score carries noise of sd σ·C·√steps ≈ 36, so the included-minus-
# excluded mean gap (expected q·steps·C = 10) has sd ≈ 36·√(4/4000) ≈ 1.1 and the check
# 5 < gap < 15 is ±4.5 sd (1000 canaries made it ±2.2 sd: a false alarm in ~3 % of runs;
# 30 runs at 4000 measured mean 9.81, sd 1.07, range 7.2–12.0).
AUDIT = CanaryAuditConfig(canaries=4000, steps=20, noise_multiplier=8.0, sample_rate=0.5, seed=11)


@pytest.fixture(scope="module")
def honest(tiny_llama) -> CanaryAuditResult:
    return run_canary_audit(AUDIT, model=tiny_llama())


def test_honest_engine_passes(honest: CanaryAuditResult) -> None:
    assert 0.5 < honest.epsilon_upper < 2.0
    assert honest.epsilon_lower_bound <= honest.epsilon_upper
    assert honest.passed and honest.verdict().startswith("passed")
    assert len(honest.included_scores) + len(honest.excluded_scores) == 4000
    assert honest.seeded and honest.test_fault is None
    # included canaries joined ~q·steps = 10 steps, each adding C: their mean score shows it
    gap = np.mean(honest.included_scores) - np.mean(honest.excluded_scores)
    assert 5.0 < gap < 15.0


@pytest.mark.parametrize("fault", ["sigma/10", "no-clipping"])
def test_broken_engine_fails_the_audit(tiny_llama, fault: str) -> None:
    config = CanaryAuditConfig(**{**AUDIT.__dict__, "test_fault": fault})
    result = run_canary_audit(config, model=tiny_llama())
    assert result.epsilon_upper == pytest.approx(1.0, abs=1.0)  # the claim is unchanged
    assert result.epsilon_lower_bound > result.epsilon_upper
    assert not result.passed
    assert result.verdict().startswith("FAILED")
    assert result.test_fault == fault


def test_canaries_are_clipped_like_examples(tiny_llama) -> None:
    engine = TrainingEngine(
        model=tiny_llama(),
        lora_config=LoRAConfig(rank=2),
        dp_config=DPConfig(
            noise_multiplier=1.0, dataset_size=10, sample_rate=1.0, max_grad_norm=0.5
        ),
    )
    canaries = GradientCanaries(
        params=engine.params, canaries=50, sample_rate=1.0, raw_norm=7.0, source=SeededUniforms(1)
    )
    extra = canaries.contributions(engine.dp)
    values = torch.cat([t.reshape(-1) for t in extra.values()])
    nonzero = values[values != 0]
    assert len(nonzero) == int(canaries.included.sum())  # q = 1: every included one joined
    assert torch.allclose(nonzero, torch.full_like(nonzero, 0.5), rtol=1e-5)  # clipped to C


def test_no_clipping_fault_leaves_canaries_whole(tiny_llama) -> None:
    with pytest.warns(BrokenPrivacyWarning):
        engine = TrainingEngine(
            model=tiny_llama(),
            lora_config=LoRAConfig(rank=2),
            dp_config=DPConfig(noise_multiplier=1.0, dataset_size=10, sample_rate=1.0),
            test_fault="no-clipping",
        )
    canaries = GradientCanaries(
        params=engine.params, canaries=20, sample_rate=1.0, raw_norm=7.0, source=SeededUniforms(2)
    )
    values = torch.cat([t.reshape(-1) for t in canaries.contributions(engine.dp).values()])
    assert torch.allclose(values[values != 0], torch.tensor(7.0))


def test_scores_read_the_released_update(tiny_llama) -> None:
    # σ = 0 (a test-only switch of DPConfig): the score is exactly what the canaries added
    engine = TrainingEngine(
        model=tiny_llama(),
        lora_config=LoRAConfig(rank=2),
        dp_config=DPConfig(
            noise_multiplier=0.0, allow_zero_noise=True, dataset_size=10, sample_rate=1.0
        ),
    )
    canaries = GradientCanaries(
        params=engine.params, canaries=30, sample_rate=1.0, raw_norm=3.0, source=SeededUniforms(3)
    )
    engine.attach_probe(canaries)
    for _ in range(3):
        engine.optim_step()  # no records: only canaries and noise
    expected = np.where(canaries.included, 3.0, 0.0)
    assert np.allclose(canaries.scores, expected, atol=1e-3)
    assert (canaries.presences == 3 * canaries.included).all()


def test_probe_needs_a_dp_run(tiny_llama) -> None:
    engine = TrainingEngine(
        model=tiny_llama(), lora_config=LoRAConfig(rank=2), dp_config=DPConfig(enabled=False)
    )
    with pytest.raises(EngineStateError):
        engine.attach_probe(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("fault", ["sigma/100", "", 1])
def test_unknown_faults_are_refused(tiny_llama, fault) -> None:
    with pytest.raises(ConfigError) as err:
        TrainingEngine(
            model=tiny_llama(),
            lora_config=LoRAConfig(rank=2),
            dp_config=DPConfig(noise_multiplier=1.0, dataset_size=10, sample_rate=1.0),
            test_fault=fault,
        )
    assert err.value.field == "test_fault"


def test_fault_needs_dp(tiny_llama) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BrokenPrivacyWarning)
        with pytest.raises(ConfigError):
            TrainingEngine(
                model=tiny_llama(),
                lora_config=LoRAConfig(rank=2),
                dp_config=DPConfig(enabled=False),
                test_fault="sigma/10",
            )


def test_too_many_canaries_are_refused(tiny_llama) -> None:
    engine = TrainingEngine(
        model=tiny_llama(),
        lora_config=LoRAConfig(rank=1),
        dp_config=DPConfig(noise_multiplier=1.0, dataset_size=10, sample_rate=1.0),
    )
    total = sum(p.numel() for p in engine.params)
    with pytest.raises(ConfigError) as err:
        GradientCanaries(
            params=engine.params,
            canaries=total + 1,
            sample_rate=0.5,
            raw_norm=2.0,
            source=SeededUniforms(0),
        )
    assert err.value.field == "canaries"


def test_best_guess_on_known_scores() -> None:
    included = np.array([True, False] * 500)
    separated = np.where(included, 10.0, 0.0) + np.linspace(0, 1, 1000)
    perfect = best_guess(separated, included, delta=1e-5)
    assert perfect.correct == perfect.guesses == 500
    noise = np.random.default_rng(0).normal(size=1000)
    assert best_guess(noise, included, delta=1e-5).epsilon_lower_bound < 0.5
    with pytest.raises(ConfigError):
        best_guess([math.nan] * 4, [True] * 4, delta=1e-5)
    with pytest.raises(ConfigError):
        best_guess([1.0, 2.0], [True], delta=1e-5)


def test_result_json_round_trip(honest: CanaryAuditResult) -> None:
    again = CanaryAuditResult.from_dict(__import__("json").loads(honest.to_json()))
    assert again == honest
    assert honest.to_dict()["passed"] is True
    with pytest.raises(ConfigError):
        CanaryAuditResult.from_dict({"method": "gradient-canaries"})
