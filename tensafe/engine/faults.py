"""Deliberately broken DP steps, **for tests of the privacy audit only**.

A privacy audit must bite: on an engine that adds too little noise or does not clip,
its ε lower bound must exceed the ε the accountant claims
(:mod:`tensafe.audit.canary_audit`). These faults break the step while the
accountant keeps recording the nominal (σ, q), exactly as a real bug would:

* ``"sigma/10"`` — the noise drawn at ``optim_step`` has standard deviation σC/10;
* ``"no-clipping"`` — per-example gradients (and canaries) are summed unclipped.

A faulted engine warns :class:`BrokenPrivacyWarning` when it is built; nothing in the
server can select a fault (no wire field, setting or environment variable reaches it).
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, get_args

from tensafe.errors import ConfigError

TestFault = Literal["sigma/10", "no-clipping"]
"""A deliberate break of the DP step (see the module docstring)."""

#: The factor ``"sigma/10"`` divides the noise by.
NOISE_DIVISOR = 10.0


class BrokenPrivacyWarning(UserWarning):
    """An engine was built with a test fault: its ε claims are false."""


def check_fault(fault: object) -> TestFault | None:
    """``fault`` validated, warning :class:`BrokenPrivacyWarning` when it is set.

    Raises:
        ConfigError: (``test_fault``) not ``None`` or one of :data:`TestFault`.
    """
    if fault is None:
        return None
    if fault not in get_args(TestFault):
        raise ConfigError(
            "test_fault", f"must be None or one of {get_args(TestFault)}, got {fault!r}"
        )
    warnings.warn(
        f"DP test fault {fault!r}: this engine is deliberately NOT private (audit tests only)",
        BrokenPrivacyWarning,
        stacklevel=3,
    )
    return fault  # type: ignore[return-value]


def faulted_clip_norm(max_grad_norm: float, fault: TestFault | None) -> float:
    """The clipping norm the step really uses: ``C``, or ∞ under ``"no-clipping"``."""
    return math.inf if fault == "no-clipping" else max_grad_norm


def faulted_noise_std(std: float, fault: TestFault | None) -> float:
    """The noise standard deviation the step really uses: ``σC``, or ``σC / 10``."""
    return std / NOISE_DIVISOR if fault == "sigma/10" else std


__all__ = [
    "NOISE_DIVISOR",
    "BrokenPrivacyWarning",
    "TestFault",
    "check_fault",
    "faulted_clip_norm",
    "faulted_noise_std",
]
