"""The budget package's parts: its public surface, the step tally, the state layout,
and which ε values are prefetched."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

import tensafe.privacy.budget as budget_package
from tensafe.errors import ConfigError
from tensafe.privacy.budget.dataset import DatasetBudget
from tensafe.privacy.budget.prefetch import prefetch_next_crossings
from tensafe.privacy.budget.state import (
    BUDGET_STATE_FORMAT,
    check_state_layout,
    encode_state,
    state_segments,
)
from tensafe.privacy.budget.tally import StepTally, plus_one
from tensafe.privacy.schedule import EpsilonSchedule

A = (1.0, 0.05)
B = (2.0, 0.01)


def test_the_package_exports_what_the_module_did() -> None:
    assert sorted(budget_package.__all__) == [
        "ACCOUNTING_LIBRARIES",
        "BUDGET_STATE_FORMAT",
        "BudgetDecision",
        "CapChange",
        "DatasetBudget",
        "StepCharge",
        "accounting_versions",
    ]
    for name in budget_package.__all__:
        assert getattr(budget_package, name) is not None
    assert budget_package.DatasetBudget is DatasetBudget
    assert budget_package.BUDGET_STATE_FORMAT == BUDGET_STATE_FORMAT == 1


def test_tally_merges_consecutive_steps_of_a_class_and_counts_per_run() -> None:
    tally = StepTally()
    tally.add("r", A)
    tally.add("r", A, 2)
    tally.add("r", B)
    tally.add("s", A, 4)
    tally.add("r", A)
    assert tally.histories() == {"r": ((*A, 3), (*B, 1), (*A, 1)), "s": ((*A, 4),)}
    assert dict(tally.counts) == {A: 8, B: 1}
    assert dict(tally.run_counts("r")) == {A: 4, B: 1}
    assert (tally.run_steps("r"), tally.run_steps("s"), tally.total_steps()) == (5, 4, 9)
    assert tally.latest_segment("r") == (*A, 1) and tally.runs() == 2


def test_tally_removes_the_latest_step_and_forgets_an_empty_run() -> None:
    tally = StepTally()
    tally.add("r", A, 2)
    tally.add("r", B)
    tally.add("s", B)
    tally.remove_latest("r")
    assert tally.histories()["r"] == ((*A, 2),) and dict(tally.counts) == {A: 2, B: 1}
    tally.remove_latest("r")
    assert tally.latest_segment("r") == (*A, 1)
    tally.remove_latest("r")
    tally.remove_latest("s")
    assert tally.histories() == {} and dict(tally.counts) == {} and tally.runs() == 0
    assert tally.latest_segment("r") is None and tally.run_steps("r") == 0


def test_unknown_run_counts_are_empty_and_read_only() -> None:
    counts = StepTally().run_counts("nobody")
    assert dict(counts) == {}
    with pytest.raises(TypeError):
        counts[A] = 1  # type: ignore[index]
    assert plus_one(counts, A) == {A: 1} and dict(counts) == {}


def test_encoded_state_reads_back_segment_by_segment() -> None:
    state = encode_state(
        dataset_id="d",
        epsilon_cap=2.0,
        delta=1e-5,
        accountant="rdp",
        schedule_spec="geometric:0.0025",
        histories={"r": ((*A, 3), (*B, 1)), "s": ((*A, 2),)},
    )
    check_state_layout(state)
    assert state["histories"] == {"r": [[*A, 3], [*B, 1]], "s": [[*A, 2]]}
    assert list(state_segments(state["histories"])) == [("r", A, 3), ("r", B, 1), ("s", A, 2)]


@pytest.mark.parametrize(
    ("histories", "field"),
    [
        ([["r", 1.0, 0.5, 1]], "histories"),
        ({"r": "1.0,0.5,1"}, "histories['r']"),
        ({"r": [[1.0, 0.5]]}, "histories['r'][0]"),
        ({"": [[1.0, 0.5, 1]]}, "histories[''][0].run_id"),
        ({"r": [[True, 0.5, 1]]}, "histories['r'][0].noise_multiplier"),
        ({"r": [[1.0, 0.5, 1], [1.0, 0.5, True]]}, "histories['r'][1].num_steps"),
    ],
)
def test_bad_histories_name_the_segment(histories: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        list(state_segments(histories))
    assert info.value.field == field


@pytest.mark.parametrize(
    ("state", "field"),
    [
        ([], "state"),
        ({k: 0 for k in ("format", "dataset_id", "delta", "accountant")}, "epsilon_cap"),
    ],
)
def test_bad_layout_names_the_field(state: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_state_layout(state)
    assert info.value.field == field


def test_restoring_checks_the_budget_before_the_histories() -> None:
    state = DatasetBudget(dataset_id="d", epsilon_cap=1.0, delta=1e-5).export_state()
    state |= {"dataset_id": "", "histories": {"r": "bad"}}
    with pytest.raises(ConfigError) as info:
        DatasetBudget.from_state(state)
    assert info.value.field == "dataset_id"


def test_prefetch_queues_the_next_crossing_of_the_first_class_and_of_the_run() -> None:
    with ThreadPoolExecutor(max_workers=1) as executor:
        # Spacing 0: every count is a grid point, so the next crossing is count + 1.
        schedule = EpsilonSchedule(
            delta=1e-5, accountant="rdp", relative_spacing=0.0, executor=executor
        )
        counts, run_counts = {A: 3, B: 1}, {A: 3}
        prefetch_next_crossings(schedule, counts=counts, run_counts=run_counts, stepped=A)
    assert counts == {A: 3, B: 1} and run_counts == {A: 3}
    # A crosses after 4/3 dataset steps, B after 4: beyond A's next crossing (8/3).
    assert schedule.cached_epsilon({A: 4, B: 1}) is not None
    assert schedule.cached_epsilon({A: 4}) is not None
    assert schedule.cached_epsilon({A: 4, B: 2}) is None
    assert schedule.cached_epsilon({A: 3, B: 2}) is None
