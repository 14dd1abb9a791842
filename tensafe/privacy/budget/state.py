"""The budget's exported state: its JSON layout, written and read back with checks.

The layout (format :data:`BUDGET_STATE_FORMAT`)::

    {"format": 1, "dataset_id": ..., "epsilon_cap": ..., "delta": ..., "accountant": ...,
     "epsilon_schedule": <EpsilonSchedule.spec>,
     "histories": {run_id: [[σ, q, num_steps], ...], ...}}

:meth:`DatasetBudget.export_state <tensafe.privacy.budget.DatasetBudget.export_state>`
writes it and :meth:`~tensafe.privacy.budget.DatasetBudget.from_state` reads it with the
functions here, which raise :class:`~tensafe.errors.ConfigError` naming the bad field.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor

from tensafe.errors import ConfigError
from tensafe.privacy.budget.checks import validate_step
from tensafe.privacy.epsilon import Segment, get_accountant_math
from tensafe.privacy.schedule import EpsilonSchedule, StepClass

#: Version of the :meth:`DatasetBudget.export_state` layout.
BUDGET_STATE_FORMAT = 1

#: The keys of the layout, all required.
STATE_KEYS = frozenset(
    {
        "format",
        "dataset_id",
        "epsilon_cap",
        "delta",
        "accountant",
        "epsilon_schedule",
        "histories",
    }
)


def encode_state(
    *,
    dataset_id: str,
    epsilon_cap: float,
    delta: float,
    accountant: str,
    schedule_spec: str,
    histories: Mapping[str, Sequence[Segment]],
) -> dict[str, object]:
    """The JSON-able layout of a budget with these values (floats kept exact)."""
    return {
        "format": BUDGET_STATE_FORMAT,
        "dataset_id": dataset_id,
        "epsilon_cap": epsilon_cap,
        "delta": delta,
        "accountant": accountant,
        "epsilon_schedule": schedule_spec,
        "histories": {
            run: [[sigma, q, n] for sigma, q, n in history] for run, history in histories.items()
        },
    }


def check_state_layout(state: object) -> None:
    """Check that ``state`` is a mapping with exactly :data:`STATE_KEYS`, the format is
    :data:`BUDGET_STATE_FORMAT` and the accountant is known. The other values are
    checked where they are used (the budget's constructor, :func:`schedule_for_state`,
    :func:`state_segments`).

    Raises:
        ConfigError: ``state`` is not a mapping (field ``"state"``), a key is unknown
            or missing (field = the key), the format or accountant is wrong.
    """
    if not isinstance(state, Mapping):
        raise ConfigError("state", "must be a mapping")
    for key in state:
        if key not in STATE_KEYS:
            raise ConfigError(str(key), f"unknown key; allowed: {sorted(STATE_KEYS)}")
    for key in sorted(STATE_KEYS):
        if key not in state:
            raise ConfigError(key, "missing")
    if state["format"] != BUDGET_STATE_FORMAT or isinstance(state["format"], bool):
        raise ConfigError("format", f"must be {BUDGET_STATE_FORMAT}, got {state['format']!r}")
    get_accountant_math(state["accountant"])  # type: ignore[arg-type]


def schedule_for_state(
    state: Mapping[str, object],
    *,
    schedule: EpsilonSchedule | None,
    executor: Executor | None,
) -> EpsilonSchedule:
    """The ε schedule a restored budget uses: ``schedule`` if given and its rule is the
    state's, else a new one built from the state's rule, δ and accountant (with
    ``executor`` for background evaluations).

    Raises:
        ConfigError: the state's rule, δ or accountant is invalid, or ``schedule``'s
            rule differs from the state's (field ``"schedule"``).
    """
    spec = state["epsilon_schedule"]
    if schedule is None:
        return EpsilonSchedule.from_spec(
            spec,  # type: ignore[arg-type]
            delta=state["delta"],  # type: ignore[arg-type]
            accountant=state["accountant"],  # type: ignore[arg-type]
            executor=executor,
        )
    if schedule.spec != spec:
        raise ConfigError("schedule", f"rule {schedule.spec!r} differs from the state's {spec!r}")
    return schedule


def state_segments(histories: object) -> Iterator[tuple[str, StepClass, int]]:
    """The state's ``histories`` as ``(run_id, (σ, q), num_steps)``, in order, each
    checked as it is reached.

    Raises:
        ConfigError: ``histories`` is not a mapping (field ``"histories"``), or a
            history or segment is malformed (field ``histories['run'][i]`` and the
            part: ``.run_id``, ``.noise_multiplier``, ``.sample_rate``, ``.num_steps``).
    """
    if not isinstance(histories, Mapping):
        raise ConfigError("histories", "must map run ids to histories")
    for run, raw in histories.items():
        where = f"histories[{run!r}]"
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(where, "must be a list of [noise_multiplier, sample_rate, n]")
        for i, segment in enumerate(raw):
            if not isinstance(segment, (list, tuple)) or len(segment) != 3:
                raise ConfigError(f"{where}[{i}]", "must be [noise_multiplier, sample_rate, n]")
            run_id, step_cls = validate_step(run, segment[0], segment[1], field=f"{where}[{i}]")
            n = segment[2]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"{where}[{i}].num_steps", f"must be an integer ≥ 1: {n!r}")
            yield run_id, step_cls, n


__all__ = [
    "BUDGET_STATE_FORMAT",
    "STATE_KEYS",
    "check_state_layout",
    "encode_state",
    "schedule_for_state",
    "state_segments",
]
