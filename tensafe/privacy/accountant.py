"""The stateful privacy accountant of one training run.

It only keeps the history of noisy steps, run-length compressed into segments
``(noise_multiplier, sample_rate, num_steps)``; every ε comes from the pure
:func:`~tensafe.privacy.epsilon.compute_epsilon`. Results are cached by
``(history, delta)``, so a check before the step (``epsilon_after_step``), then
``record_step`` and ``epsilon``, computes ε once per step.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from numbers import Real

from tensafe.errors import ConfigError
from tensafe.privacy.epsilon import (
    AccountantName,
    Segment,
    compute_epsilon,
    get_accountant_math,
    validate_history,
)

#: Version of the :meth:`PrivacyAccountant.state_dict` layout.
STATE_FORMAT = 1
_CACHE_SIZE = 64


class PrivacyAccountant:
    """History of DP-SGD steps of one run, and the ε they spend.

    Not thread-safe: one instance per training run, used by that run's worker.

    Example:
        >>> acc = PrivacyAccountant(accountant="rdp")
        >>> for _ in range(3):
        ...     acc.record_step(noise_multiplier=1.0, sample_rate=0.01)
        >>> acc.history
        ((1.0, 0.01, 3),)
        >>> acc.epsilon(1e-5) > 0
        True
        >>> restored = PrivacyAccountant.from_state_dict(acc.state_dict())
        >>> restored.history == acc.history
        True

    Raises:
        ConfigError: (``accountant``) the name is not registered.
    """

    def __init__(self, *, accountant: AccountantName = "prv") -> None:
        get_accountant_math(accountant)
        self._accountant: AccountantName = accountant
        self._history: list[Segment] = []
        self._cache: OrderedDict[tuple[tuple[Segment, ...], float], float] = OrderedDict()

    # ------------------------------------------------------------------ reading

    @property
    def accountant(self) -> AccountantName:
        """The accounting method (a key of ``ACCOUNTANTS``)."""
        return self._accountant

    @property
    def history(self) -> tuple[Segment, ...]:
        """Recorded segments in order; consecutive steps with equal (σ, q) are merged."""
        return tuple(self._history)

    @property
    def steps(self) -> int:
        """Total number of recorded steps."""
        return sum(steps for _, _, steps in self._history)

    def epsilon(self, delta: float) -> float:
        """ε spent by the recorded history at ``delta`` (0.0 before any step).

        An upper bound (see :func:`~tensafe.privacy.epsilon.compute_epsilon`);
        cached by (history, delta).

        Raises:
            ConfigError: (``delta``) not in (0, 1).
        """
        return self._epsilon_of(self.history, delta)

    def epsilon_after_step(
        self, *, delta: float, noise_multiplier: float, sample_rate: float
    ) -> float:
        """ε if one more step with (σ, q) were recorded; records nothing.

        Equal to ``epsilon(delta)`` after ``record_step(noise_multiplier=…,
        sample_rate=…)``, and that later call is answered from the cache.

        Raises:
            ConfigError: ``delta`` not in (0, 1), σ not finite ≥ 0 (field
                ``"noise_multiplier"``) or q not in (0, 1] (field ``"sample_rate"``).
        """
        sigma, q = _check_step(noise_multiplier, sample_rate)
        return self._epsilon_of(_appended(self.history, sigma, q), delta)

    # ------------------------------------------------------------------ writing

    def record_step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        """Record one noisy step with noise multiplier σ and Poisson rate q.

        σ = 0 is recorded as given (the engine decides whether it is allowed);
        it makes ε infinite.

        Raises:
            ConfigError: σ not finite ≥ 0 (``"noise_multiplier"``), q not in (0, 1]
                (``"sample_rate"``). Nothing is recorded then.
        """
        sigma, q = _check_step(noise_multiplier, sample_rate)
        self._history = list(_appended(self.history, sigma, q))

    # -------------------------------------------------------------- persistence

    def state_dict(self) -> dict[str, object]:
        """A JSON-able snapshot: ``{"format", "accountant", "history"}``.

        ``history`` is a list of ``[noise_multiplier, sample_rate, num_steps]``;
        floats survive a JSON round trip exactly.
        """
        return {
            "format": STATE_FORMAT,
            "accountant": self._accountant,
            "history": [[sigma, q, steps] for sigma, q, steps in self._history],
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Replace this accountant's accountant name and history with ``state``.

        Validated fully before anything changes. Adjacent segments with equal
        (σ, q) are merged.

        Raises:
            ConfigError: unknown or missing keys (field = the key), wrong
                ``format``, unknown ``accountant``, a malformed segment (field e.g.
                ``"history[1].sample_rate"``), q = 0 or num_steps < 1.
        """
        if not isinstance(state, Mapping):
            raise ConfigError("state", "must be a mapping")
        expected = {"format", "accountant", "history"}
        for key in state:
            if key not in expected:
                raise ConfigError(str(key), f"unknown key; allowed: {sorted(expected)}")
        for key in sorted(expected):
            if key not in state:
                raise ConfigError(key, "missing")
        if state["format"] != STATE_FORMAT or isinstance(state["format"], bool):
            raise ConfigError(
                "format", f"unsupported state format {state['format']!r}; expected {STATE_FORMAT}"
            )
        name = state["accountant"]
        get_accountant_math(name)  # type: ignore[arg-type]
        raw_history = state["history"]
        segments = validate_history(raw_history, field="history")  # type: ignore[arg-type]
        merged: tuple[Segment, ...] = ()
        for i, (sigma, q, steps) in enumerate(segments):
            if q == 0.0:
                raise ConfigError(f"history[{i}].sample_rate", "must be in (0, 1], got 0.0")
            if steps < 1:
                raise ConfigError(f"history[{i}].num_steps", f"must be ≥ 1, got {steps}")
            merged = _appended(merged, sigma, q, steps)
        self._accountant = name  # type: ignore[assignment]
        self._history = list(merged)
        self._cache.clear()

    @classmethod
    def from_state_dict(cls, state: Mapping[str, object]) -> PrivacyAccountant:
        """A new accountant restored from :meth:`state_dict` output.

        Raises:
            ConfigError: as :meth:`load_state_dict`.
        """
        accountant = cls()
        accountant.load_state_dict(state)
        return accountant

    def copy(self) -> PrivacyAccountant:
        """An independent accountant with the same method, history and cache."""
        clone = PrivacyAccountant(accountant=self._accountant)
        clone._history = list(self._history)
        clone._cache = OrderedDict(self._cache)
        return clone

    def __repr__(self) -> str:
        return (
            f"PrivacyAccountant(accountant={self._accountant!r}, steps={self.steps}, "
            f"segments={len(self._history)})"
        )

    # ---------------------------------------------------------------- internals

    def _epsilon_of(self, history: tuple[Segment, ...], delta: float) -> float:
        key = (history, delta)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        eps = compute_epsilon(history=history, delta=delta, accountant=self._accountant)
        self._cache[key] = eps
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return eps


def _check_step(noise_multiplier: object, sample_rate: object) -> tuple[float, float]:
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, Real):
        raise ConfigError(
            "noise_multiplier", f"must be a real number, got {type(noise_multiplier).__name__}"
        )
    sigma = float(noise_multiplier)
    if not (math.isfinite(sigma) and sigma >= 0.0):
        raise ConfigError("noise_multiplier", f"must be finite and ≥ 0, got {sigma!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, Real):
        raise ConfigError("sample_rate", f"must be a real number, got {type(sample_rate).__name__}")
    q = float(sample_rate)
    if not 0.0 < q <= 1.0:
        raise ConfigError("sample_rate", f"must be in (0, 1], got {q!r}")
    return sigma, q


def _appended(
    history: tuple[Segment, ...], sigma: float, q: float, steps: int = 1
) -> tuple[Segment, ...]:
    """``history`` plus ``steps`` steps of (σ, q), merged into the last segment if equal."""
    if history and history[-1][0] == sigma and history[-1][1] == q:
        last_sigma, last_q, last_steps = history[-1]
        return (*history[:-1], (last_sigma, last_q, last_steps + steps))
    return (*history, (sigma, q, steps))


__all__ = ["STATE_FORMAT", "PrivacyAccountant"]
