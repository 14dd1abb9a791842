"""DP-SGD configuration of a training run, and its resolved (calibrated) values.

:class:`DPConfig` is what a client asks for; it is validated once, in
``__post_init__``, with :class:`~tensafe.errors.ConfigError` naming the field and
the allowed values. :meth:`DPConfig.resolve` turns it into the concrete numbers
the engine and the ledger use (:class:`ResolvedDP`): σ (calibrated from a target
ε when not given), q, δ.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from numbers import Integral, Real

from tensafe.errors import ConfigError
from tensafe.privacy.calibration import calibrate_noise_multiplier
from tensafe.privacy.delta import check_delta, default_delta
from tensafe.privacy.epsilon import ACCOUNTANTS, AccountantName

#: σ below this gives ε in the hundreds within a few steps (no meaningful privacy) and
#: drives the accountants to their numerical limits (σ → 0 divides by zero).
MIN_NOISE_MULTIPLIER = 0.1
#: σ above this adds nothing but numerical overflow in the accountants.
MAX_NOISE_MULTIPLIER = 1000.0
#: A target ε above this is no privacy target at all.
MAX_TARGET_EPSILON = 1000.0

JSONScalar = bool | int | float | str | None


@dataclass(frozen=True, kw_only=True)
class ResolvedDP:
    """The concrete DP-SGD parameters of an enabled run (all defaults filled in).

    Attributes:
        noise_multiplier: σ; the noise added to a clipped sum is N(0, σ²C²). Given
            directly or calibrated (see :meth:`DPConfig.resolve`).
        sample_rate: Poisson sampling rate q = expected batch size / N, in (0, 1].
        expected_batch_size: q·N (a float); the noisy sum is divided by it.
        max_grad_norm: per-example clipping norm C.
        dataset_size: N, the number of examples (privacy units).
        delta: δ for every ε reported for this run; always < 1/N.
        accountant: accounting method, a key of ``ACCOUNTANTS``.
        secure_mode: sum several noise draws per coordinate (against floating-point
            attacks) and ignore any test noise seed.
    """

    noise_multiplier: float
    sample_rate: float
    expected_batch_size: float
    max_grad_norm: float
    dataset_size: int
    delta: float
    accountant: AccountantName
    secure_mode: bool

    def to_dict(self) -> dict[str, JSONScalar]:
        """All fields as a JSON-able dict (for the ledger and artifact manifests)."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class DPConfig:
    """How a run is made differentially private (DP-SGD with Poisson sampling).

    Example:
        >>> cfg = DPConfig(noise_multiplier=1.0, dataset_size=10_000, expected_batch_size=100)
        >>> r = cfg.resolve()
        >>> (r.sample_rate, r.delta, r.accountant)
        (0.01, 1e-05, 'prv')
        >>> DPConfig.from_dict(cfg.to_dict()) == cfg
        True

    When ``enabled`` is true: ``dataset_size`` is required; exactly one of
    ``noise_multiplier`` / ``target_epsilon``; ``target_epsilon`` needs
    ``planned_steps``; exactly one of ``sample_rate`` / ``expected_batch_size``.
    When ``enabled`` is false the other fields are ignored, but their types are
    still checked (and floats must be finite, so the config stays valid JSON).

    Attributes:
        enabled: run DP-SGD. ``False`` trains without any privacy guarantee.
        max_grad_norm: per-example L2 clipping norm C; finite, > 0.
        noise_multiplier: σ, noise std relative to C; in [0.1, 1000]
            (:data:`MIN_NOISE_MULTIPLIER`, :data:`MAX_NOISE_MULTIPLIER`). ``0`` gives no
            privacy and is refused unless ``allow_zero_noise``. ``None``: calibrate
            σ from ``target_epsilon``.
        target_epsilon: ε to reach after ``planned_steps`` steps; in (0, 1000]. σ is
            then the smallest value (rounded up) whose ε ≤ target.
        target_delta: δ of every reported ε; in (0, 1/N). ``None``: ``min(1e-5, N^-1.1)``.
        planned_steps: number of optimizer steps the run plans; integer ≥ 1.
            Required with ``target_epsilon``, informational otherwise.
        dataset_size: N, number of examples (the privacy unit is one example);
            integer ≥ 1.
        sample_rate: Poisson sampling rate q in (0, 1].
        expected_batch_size: expected logical batch size B, integer in [1, N];
            q = B / N.
        accountant: ``"prv"`` (default, tight) or ``"rdp"`` (looser upper bound).
        secure_mode: sum several DP noise draws per coordinate (Opacus' mitigation
            of floating-point attacks, ~4× the noise cost) and ignore any test noise
            seed. The noise always comes from a CSPRNG (implemented by the engine;
            carried here).
        allow_zero_noise: TEST ONLY. Permits ``noise_multiplier=0`` in an enabled
            run, which provides no privacy (ε = ∞); a warning is emitted.

    Raises:
        ConfigError: on any invalid field; ``.field`` names it.
    """

    enabled: bool = True
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    target_delta: float | None = None
    planned_steps: int | None = None
    dataset_size: int | None = None
    sample_rate: float | None = None
    expected_batch_size: int | None = None
    accountant: AccountantName = "prv"
    secure_mode: bool = False
    allow_zero_noise: bool = False

    def __post_init__(self) -> None:
        for name in ("enabled", "secure_mode", "allow_zero_noise"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be a bool, got {_type_name(getattr(self, name))}")
        self._normalize_real("max_grad_norm", optional=False)
        for name in ("noise_multiplier", "target_epsilon", "target_delta", "sample_rate"):
            self._normalize_real(name, optional=True)
        for name in ("planned_steps", "dataset_size", "expected_batch_size"):
            self._normalize_int(name)
        if not isinstance(self.accountant, str) or self.accountant not in ACCOUNTANTS:
            allowed = ", ".join(repr(n) for n in ACCOUNTANTS)
            raise ConfigError("accountant", f"must be one of {allowed}, got {self.accountant!r}")
        if self.enabled:
            self._check_enabled()

    # ------------------------------------------------------------- validation

    def _normalize_real(self, name: str, *, optional: bool) -> None:
        value = getattr(self, name)
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, Real):
            kind = "a real number or None" if optional else "a real number"
            raise ConfigError(name, f"must be {kind}, got {_type_name(value)}")
        number = float(value)
        if not math.isfinite(number):
            raise ConfigError(name, f"must be finite, got {number!r}")
        object.__setattr__(self, name, number)

    def _normalize_int(self, name: str) -> None:
        value = getattr(self, name)
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise ConfigError(name, f"must be an integer or None, got {_type_name(value)}")
        object.__setattr__(self, name, int(value))

    def _check_enabled(self) -> None:
        if self.max_grad_norm <= 0:
            raise ConfigError("max_grad_norm", f"must be > 0, got {self.max_grad_norm!r}")
        self._check_sampling()
        self._check_noise()
        if self.target_delta is not None:
            assert self.dataset_size is not None
            check_delta(
                delta=self.target_delta, dataset_size=self.dataset_size, field="target_delta"
            )

    def _check_sampling(self) -> None:
        if self.dataset_size is None:
            raise ConfigError("dataset_size", "required when enabled (integer ≥ 1)")
        if self.dataset_size < 1:
            raise ConfigError("dataset_size", f"must be ≥ 1, got {self.dataset_size}")
        if self.sample_rate is None and self.expected_batch_size is None:
            raise ConfigError(
                "sample_rate", "give exactly one of sample_rate or expected_batch_size"
            )
        if self.sample_rate is not None and self.expected_batch_size is not None:
            raise ConfigError(
                "expected_batch_size",
                "give exactly one of sample_rate or expected_batch_size, not both",
            )
        if self.sample_rate is not None and not 0.0 < self.sample_rate <= 1.0:
            raise ConfigError("sample_rate", f"must be in (0, 1], got {self.sample_rate!r}")
        if (
            self.expected_batch_size is not None
            and not 1 <= self.expected_batch_size <= self.dataset_size
        ):
            raise ConfigError(
                "expected_batch_size",
                f"must be in [1, dataset_size={self.dataset_size}], got {self.expected_batch_size}",
            )

    def _check_noise(self) -> None:
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ConfigError(
                "noise_multiplier", "give exactly one of noise_multiplier or target_epsilon"
            )
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ConfigError(
                "target_epsilon", "give exactly one of noise_multiplier or target_epsilon, not both"
            )
        if self.noise_multiplier is not None:
            if self.noise_multiplier < 0:
                raise ConfigError("noise_multiplier", f"must be ≥ 0, got {self.noise_multiplier!r}")
            if self.noise_multiplier == 0:
                if not self.allow_zero_noise:
                    raise ConfigError(
                        "noise_multiplier",
                        "0 gives no privacy (ε = ∞) and is refused in an enabled DP run; "
                        "use a value > 0, or enabled=False (allow_zero_noise is for tests only)",
                    )
                warnings.warn(
                    "DPConfig: noise_multiplier=0 with allow_zero_noise=True: this run has NO "
                    "differential privacy (ε = ∞). For tests only.",
                    UserWarning,
                    stacklevel=5,
                )
            elif not MIN_NOISE_MULTIPLIER <= self.noise_multiplier <= MAX_NOISE_MULTIPLIER:
                raise ConfigError(
                    "noise_multiplier",
                    f"must be in [{MIN_NOISE_MULTIPLIER:g}, {MAX_NOISE_MULTIPLIER:g}], got "
                    f"{self.noise_multiplier!r} (below, ε is in the hundreds within a few "
                    "steps; above, the noise adds nothing)",
                )
        if self.target_epsilon is not None:
            if self.target_epsilon <= 0:
                raise ConfigError("target_epsilon", f"must be > 0, got {self.target_epsilon!r}")
            if self.target_epsilon > MAX_TARGET_EPSILON:
                raise ConfigError(
                    "target_epsilon",
                    f"must be at most {MAX_TARGET_EPSILON:g} (no privacy above), "
                    f"got {self.target_epsilon!r}",
                )
            if self.planned_steps is None:
                raise ConfigError("planned_steps", "required with target_epsilon (integer ≥ 1)")
        if self.planned_steps is not None and self.planned_steps < 1:
            raise ConfigError("planned_steps", f"must be ≥ 1, got {self.planned_steps}")

    # ------------------------------------------------------------- resolution

    def resolve(self) -> ResolvedDP:
        """The concrete parameters of this (enabled) config; computed once, then cached.

        q = ``sample_rate`` or ``expected_batch_size / dataset_size``; δ =
        ``target_delta`` or ``min(1e-5, N^-1.1)``; σ = ``noise_multiplier`` or
        ``calibrate_noise_multiplier(target_epsilon, δ, q, planned_steps,
        accountant)`` (which can take a few seconds for PRV).

        Raises:
            ConfigError: (``enabled``) DP is disabled, there is nothing to resolve;
                (``target_epsilon``) the target cannot be reached with any
                reasonable σ.
        """
        return self._resolved

    @cached_property
    def _resolved(self) -> ResolvedDP:
        if not self.enabled:
            raise ConfigError(
                "enabled", "DP is disabled (enabled=False); there is nothing to resolve"
            )
        n = self.dataset_size
        assert n is not None
        if self.sample_rate is not None:
            q = self.sample_rate
        else:
            assert self.expected_batch_size is not None
            q = self.expected_batch_size / n
        delta = self.target_delta if self.target_delta is not None else default_delta(n)
        if self.noise_multiplier is not None:
            sigma = self.noise_multiplier
        else:
            assert self.target_epsilon is not None and self.planned_steps is not None
            sigma = calibrate_noise_multiplier(
                target_epsilon=self.target_epsilon,
                target_delta=delta,
                sample_rate=q,
                steps=self.planned_steps,
                accountant=self.accountant,
            )
        return ResolvedDP(
            noise_multiplier=sigma,
            sample_rate=q,
            expected_batch_size=q * n,
            max_grad_norm=self.max_grad_norm,
            dataset_size=n,
            delta=delta,
            accountant=self.accountant,
            secure_mode=self.secure_mode,
        )

    # ------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, JSONScalar]:
        """Every field (by name) as a JSON-able dict; :meth:`from_dict` inverts it."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> DPConfig:
        """Build (and validate) a config from a :meth:`to_dict`-style mapping.

        Missing fields take their defaults.

        Raises:
            ConfigError: ``data`` is not a mapping (field ``"dp"``); a key is not a
                field (field = that key, message lists the allowed names); or any
                value is invalid (as the constructor).
        """
        if not isinstance(data, Mapping):
            raise ConfigError("dp", f"must be a mapping, got {_type_name(data)}")
        allowed = [f.name for f in fields(cls)]
        for key in data:
            if key not in allowed:
                raise ConfigError(str(key), f"unknown field; allowed: {', '.join(allowed)}")
        return cls(**{str(k): v for k, v in data.items()})  # type: ignore[arg-type]


def _type_name(value: object) -> str:
    return type(value).__name__


__all__ = ["DPConfig", "ResolvedDP"]
