"""Differential privacy: configuration, per-example clipping, noise and accounting."""

from tensafe.privacy.accountant import PrivacyAccountant
from tensafe.privacy.budget import BudgetDecision, DatasetBudget, StepCharge
from tensafe.privacy.calibration import calibrate_noise_multiplier
from tensafe.privacy.config import DPConfig, ResolvedDP
from tensafe.privacy.csprng import KeystreamNormals
from tensafe.privacy.delta import check_budget_delta, check_delta, default_delta
from tensafe.privacy.epsilon import ACCOUNTANTS, AccountantName, compute_epsilon
from tensafe.privacy.noise import InsecureNoiseWarning, NoiseSource
from tensafe.privacy.per_example import ClipCollector, ClipResult, PerExampleClipper
from tensafe.privacy.schedule import EpsilonSchedule

__all__ = [
    "ACCOUNTANTS",
    "AccountantName",
    "BudgetDecision",
    "ClipCollector",
    "ClipResult",
    "DPConfig",
    "DatasetBudget",
    "EpsilonSchedule",
    "InsecureNoiseWarning",
    "KeystreamNormals",
    "NoiseSource",
    "PerExampleClipper",
    "PrivacyAccountant",
    "ResolvedDP",
    "StepCharge",
    "calibrate_noise_multiplier",
    "check_budget_delta",
    "check_delta",
    "compute_epsilon",
    "default_delta",
]
