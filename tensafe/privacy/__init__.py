"""Differential privacy: configuration, per-example clipping, noise and accounting."""

from tensafe.privacy.accountant import PrivacyAccountant
from tensafe.privacy.accounting import ACCOUNTANTS, AccountantName, compute_epsilon, default_delta
from tensafe.privacy.calibration import calibrate_noise_multiplier
from tensafe.privacy.config import DPConfig, ResolvedDP
from tensafe.privacy.noise import NoiseSource
from tensafe.privacy.per_example import ClipCollector, ClipResult, PerExampleClipper

__all__ = [
    "ACCOUNTANTS",
    "AccountantName",
    "ClipCollector",
    "ClipResult",
    "DPConfig",
    "NoiseSource",
    "PerExampleClipper",
    "PrivacyAccountant",
    "ResolvedDP",
    "calibrate_noise_multiplier",
    "compute_epsilon",
    "default_delta",
]
