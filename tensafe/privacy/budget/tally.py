"""The steps recorded on a dataset: each run's history, and the counts ε is computed from.

ε depends only on how many steps of each ``(σ, q)`` class were taken (composition does
not depend on order), so the tally keeps those counts per run and over all runs, beside
each run's history in order (what the state export and the ledger replay need).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from tensafe.privacy.epsilon import Segment
from tensafe.privacy.schedule import StepClass

_NO_STEPS: Mapping[StepClass, int] = MappingProxyType({})


class StepTally:
    """Every run's steps as ``(σ, q, num_steps)`` segments, and the steps per class.

    Not thread-safe: the owner (:class:`~tensafe.privacy.budget.DatasetBudget`) calls it
    under its lock, and copies what it reads before releasing the lock. A run with no
    step left is forgotten.
    """

    def __init__(self) -> None:
        self._histories: dict[str, list[Segment]] = {}
        self._run_counts: dict[str, dict[StepClass, int]] = {}
        self._counts: dict[StepClass, int] = {}

    @property
    def counts(self) -> Mapping[StepClass, int]:
        """Steps per ``(σ, q)`` class over all runs (a live view)."""
        return self._counts

    def run_counts(self, run_id: str) -> Mapping[StepClass, int]:
        """Steps per class of ``run_id`` (a live view; empty for an unknown run)."""
        return self._run_counts.get(run_id, _NO_STEPS)

    def run_steps(self, run_id: str) -> int:
        """Steps recorded by ``run_id`` (0 for an unknown run)."""
        return sum(self.run_counts(run_id).values())

    def total_steps(self) -> int:
        """Steps recorded by all runs."""
        return sum(self._counts.values())

    def runs(self) -> int:
        """How many runs have steps."""
        return len(self._histories)

    def latest_segment(self, run_id: str) -> Segment | None:
        """``run_id``'s latest ``(σ, q, num_steps)`` segment; ``None`` for an unknown run."""
        history = self._histories.get(run_id)
        return history[-1] if history else None

    def histories(self) -> dict[str, tuple[Segment, ...]]:
        """Each run's segments in order (a copy)."""
        return {run: tuple(history) for run, history in self._histories.items()}

    def add(self, run_id: str, cls: StepClass, steps: int = 1) -> None:
        """Append ``steps`` (≥ 1) steps of class ``cls`` to ``run_id``'s history."""
        history = self._histories.setdefault(run_id, [])
        if history and history[-1][:2] == cls:
            history[-1] = (cls[0], cls[1], history[-1][2] + steps)
        else:
            history.append((cls[0], cls[1], steps))
        self._count(run_id, cls, steps)

    def remove_latest(self, run_id: str) -> None:
        """Remove ``run_id``'s latest step (the run must have one)."""
        history = self._histories[run_id]
        sigma, q, n = history[-1]
        if n > 1:
            history[-1] = (sigma, q, n - 1)
        else:
            history.pop()
        self._count(run_id, (sigma, q), -1)
        if not history:
            del self._histories[run_id]
            del self._run_counts[run_id]

    def _count(self, run_id: str, cls: StepClass, steps: int) -> None:
        for counts in (self._run_counts.setdefault(run_id, {}), self._counts):
            counts[cls] = counts.get(cls, 0) + steps
            if counts[cls] == 0:
                del counts[cls]


def plus_one(counts: Mapping[StepClass, int], cls: StepClass) -> dict[StepClass, int]:
    """A copy of ``counts`` with one more step of ``cls``."""
    out = dict(counts)
    out[cls] = out.get(cls, 0) + 1
    return out


__all__ = ["StepTally", "plus_one"]
