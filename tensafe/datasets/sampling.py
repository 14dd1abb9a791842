"""Poisson sampling of a logical batch on the server, from the OS CSPRNG.

The accountant's assumption made true: each of the N records (or, with privacy units,
each of the U units) joins a step's batch independently with probability q. Drawn as
geometric gaps — the gap to the next drawn index is ``⌊log U / log(1 − q)⌋`` for a
uniform U in (0, 1], so ``P(gap ≥ k) = (1 − q)^k`` exactly as for independent
Bernoulli(q) draws — so a step costs O(qN) random numbers, not O(N). Uniforms are 53-bit,
from :func:`os.urandom`: nothing the client sends seeds them, and no state is kept that
could be exported or replayed. A seeded source exists for tests only.

With privacy units, each drawn unit contributes at most ``k`` of its records, chosen
uniformly without replacement (from the same CSPRNG); the unit is the privacy unit,
so its records are clipped together and ε is per unit (per person).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from tensafe.errors import ConfigError


class UniformSource(Protocol):
    """Uniform floats in (0, 1]."""

    def uniforms(self, n: int) -> np.ndarray: ...

    def choose(self, population: int, k: int) -> list[int]:
        """``k`` distinct indices of ``range(population)``, uniformly."""
        ...


class SecureUniforms:
    """Uniforms from the OS CSPRNG (53-bit mantissas, never 0)."""

    def uniforms(self, n: int) -> np.ndarray:
        raw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
        return (raw.astype(np.float64) + 1.0) / 2.0**53

    def choose(self, population: int, k: int) -> list[int]:
        return secrets.SystemRandom().sample(range(population), k)


class SeededUniforms:
    """A reproducible source **for tests only**: whoever knows the seed knows the batches."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def uniforms(self, n: int) -> np.ndarray:
        return 1.0 - self._rng.random(n)  # (0, 1]

    def choose(self, population: int, k: int) -> list[int]:
        return sorted(int(i) for i in self._rng.choice(population, size=k, replace=False))


def poisson_sample(population: int, rate: float, *, source: UniformSource) -> np.ndarray:
    """The indices of ``range(population)`` that a Poisson(``rate``) draw includes, sorted.

    Raises:
        ConfigError: (``population``) < 1; (``rate``) not in (0, 1].
    """
    if isinstance(population, bool) or not isinstance(population, int) or population < 1:
        raise ConfigError("population", f"must be an integer ≥ 1, got {population!r}")
    if not 0.0 < rate <= 1.0:
        raise ConfigError("rate", f"must be in (0, 1], got {rate!r}")
    if rate == 1.0:
        return np.arange(population, dtype=np.int64)
    log_keep = np.log1p(-rate)
    drawn: list[np.ndarray] = []
    position = -1
    block = max(16, int(1.25 * rate * population) + 16)
    while position < population:
        gaps = np.floor(np.log(source.uniforms(block)) / log_keep).astype(np.int64) + 1
        positions = position + np.cumsum(gaps)
        drawn.append(positions[positions < population])
        position = int(positions[-1])
    return np.concatenate(drawn)


def draw_units(
    unit_records: Sequence[np.ndarray],
    rate: float,
    *,
    max_records_per_unit: int,
    source: UniformSource,
) -> list[tuple[int, np.ndarray]]:
    """User-level draw: Poisson(``rate``) over units, then at most
    ``max_records_per_unit`` records of each drawn unit, chosen uniformly.

    Args:
        unit_records: for each unit, the indices of its records.

    Returns:
        ``(unit, record indices)`` for each drawn unit, in unit order.

    Raises:
        ConfigError: (``max_records_per_unit``) < 1; or as :func:`poisson_sample`.
    """
    if max_records_per_unit < 1:
        raise ConfigError("max_records_per_unit", "must be ≥ 1")
    out: list[tuple[int, np.ndarray]] = []
    for unit in poisson_sample(len(unit_records), rate, source=source):
        records = unit_records[int(unit)]
        if len(records) > max_records_per_unit:
            chosen = source.choose(len(records), max_records_per_unit)
            records = np.sort(records[np.asarray(chosen, dtype=np.int64)])
        out.append((int(unit), records))
    return out


__all__ = [
    "SecureUniforms",
    "SeededUniforms",
    "UniformSource",
    "draw_units",
    "poisson_sample",
]
