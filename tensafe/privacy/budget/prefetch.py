"""Which ε values a budget will need next, queued for background evaluation.

A conservative ε changes only when a step count crosses a point of the schedule's
geometric grid (see :mod:`tensafe.privacy.schedule`); evaluating the value behind the
coming crossing before it is reached keeps the step that crosses it from waiting.
"""

from __future__ import annotations

from collections.abc import Mapping

from tensafe.privacy.schedule import EpsilonSchedule, StepClass


def prefetch_next_crossings(
    schedule: EpsilonSchedule,
    *,
    counts: Mapping[StepClass, int],
    run_counts: Mapping[StepClass, int],
    stepped: StepClass,
) -> None:
    """Queue on ``schedule`` the ε values the next grid crossings will need.

    For the run (``run_counts``, which just took a step of class ``stepped``): its
    count of ``stepped`` one past its grid point. For the dataset (``counts``): the
    keys of the coming crossings, in the order the classes are expected to cross —
    fewest steps to their grid point, scaled by their share of the steps so far (a
    proxy for their rate); ties put the class that just stepped last — each key
    bumping one more class, up to the next crossing of the first. A key that assumes
    another order is wasted work, never a wrong answer. Nothing is queued for an
    empty ``counts``; neither mapping is changed.
    """
    if not counts:
        return
    grid = schedule.grid_point
    total = sum(counts.values())

    def eta(c: StepClass) -> float:  # dataset steps until class c crosses
        return (grid(counts[c]) + 1 - counts[c]) * total / counts[c]

    order = sorted(counts, key=lambda c: (eta(c), c == stepped, c))
    first = order[0]
    first_next = grid(grid(counts[first]) + 1)
    horizon = eta(first) + (first_next - grid(counts[first])) * total / counts[first]
    bumped = dict(counts)
    for c in order:
        if eta(c) > horizon:
            break
        bumped[c] = grid(counts[c]) + 1
        schedule.prefetch(bumped)
    run_next = dict(run_counts)
    run_next[stepped] = grid(run_next.get(stepped, 0)) + 1
    schedule.prefetch(run_next)


__all__ = ["prefetch_next_crossings"]
