"""The dataset budget: exact enforcement, composition, caps, persistence, threads."""

from __future__ import annotations

import json
import math
import threading

import pytest

from tensafe.errors import BudgetExceededError, ConfigError
from tensafe.privacy.budget import (
    BUDGET_STATE_FORMAT,
    DatasetBudget,
    StepCharge,
    accounting_versions,
)
from tensafe.privacy.epsilon import compute_epsilon
from tensafe.privacy.schedule import EpsilonSchedule

STEP = {"noise_multiplier": 1.0, "sample_rate": 0.05}


def take(budget: DatasetBudget, run_id: str, n: int, sigma: float = 1.0, q: float = 0.05) -> None:
    for _ in range(n):
        budget.record_step(run_id=run_id, noise_multiplier=sigma, sample_rate=q)


# --------------------------------------------------------------- enforcement


def test_cap_allowing_k_steps_refuses_step_k_plus_one() -> None:
    schedule = EpsilonSchedule(delta=1e-5, accountant="prv")
    k = 12
    probe = DatasetBudget(dataset_id="d", epsilon_cap=100.0, delta=1e-5, schedule=schedule)
    take(probe, "r", k)
    cap = probe.epsilon()  # exactly the ε of k steps

    budget = DatasetBudget(dataset_id="d", epsilon_cap=cap, delta=1e-5, schedule=schedule)
    for step in range(1, k + 1):
        decision = budget.check_step(run_id="r", **STEP)
        assert decision.allowed and decision.step == step
        charge = budget.record_step(run_id="r", **STEP)
        assert charge.epsilon_dataset_total == decision.epsilon_after <= cap
    decision = budget.check_step(run_id="r", **STEP)
    assert not decision.allowed
    assert decision.step == k + 1
    assert decision.epsilon_before == cap < decision.epsilon_after
    assert decision.epsilon_run == cap and decision.cap == cap
    with pytest.raises(BudgetExceededError, match="above the cap"):
        budget.record_step(run_id="r", **STEP)
    # Refusals change nothing; another run is refused just the same.
    assert budget.steps() == k and budget.epsilon() == cap
    assert not budget.check_step(run_id="other", **STEP).allowed
    assert budget.histories == {"r": ((1.0, 0.05, k),)}


def test_number_of_allowed_steps_follows_the_grid() -> None:
    # With rounding, a cap admits K steps where ε(G(K)) ≤ cap < ε(G(K + 1)).
    schedule = EpsilonSchedule(delta=1e-5, accountant="rdp", relative_spacing=0.05)
    cap = compute_epsilon(history=[(1.0, 0.05, 60)], delta=1e-5, accountant="rdp")
    budget = DatasetBudget(
        dataset_id="d", epsilon_cap=cap, delta=1e-5, accountant="rdp", schedule=schedule
    )
    allowed = 0
    while budget.check_step(run_id="r", **STEP).allowed:
        budget.record_step(run_id="r", **STEP)
        allowed += 1
    assert schedule.grid_point(allowed) <= 60 < schedule.grid_point(allowed + 1)
    assert budget.exact_epsilon() <= budget.epsilon() <= cap


def test_zero_noise_is_refused_not_raised() -> None:
    budget = DatasetBudget(dataset_id="d", epsilon_cap=50.0, delta=1e-5, accountant="rdp")
    decision = budget.check_step(run_id="r", noise_multiplier=0.0, sample_rate=0.1)
    assert not decision.allowed and math.isinf(decision.epsilon_after)
    with pytest.raises(BudgetExceededError):
        budget.record_step(run_id="r", noise_multiplier=0.0, sample_rate=0.1)


# --------------------------------------------------------------- composition


def test_two_runs_compose_to_the_concatenated_history() -> None:
    budget = DatasetBudget(dataset_id="d", epsilon_cap=100.0, delta=1e-5)
    for _ in range(8):  # interleaved, as concurrent runs would be
        budget.record_step(run_id="a", noise_multiplier=1.0, sample_rate=0.02)
        budget.record_step(run_id="b", noise_multiplier=1.5, sample_rate=0.04)
    take(budget, "a", 3, sigma=0.9, q=0.02)
    history_a = [(1.0, 0.02, 8), (0.9, 0.02, 3)]
    history_b = [(1.5, 0.04, 8)]
    assert budget.histories == {"a": tuple(history_a), "b": tuple(history_b)}
    concatenated = compute_epsilon(history=history_a + history_b, delta=1e-5, accountant="prv")
    assert budget.exact_epsilon() == pytest.approx(concatenated, rel=1e-6)
    assert budget.epsilon() == budget.exact_epsilon()  # counts ≤ 400: no rounding
    alone = compute_epsilon(history=history_a, delta=1e-5, accountant="prv")
    assert budget.run_epsilon("a") == pytest.approx(alone, rel=1e-6)
    assert budget.run_epsilon("a") < budget.epsilon()
    assert budget.run_epsilon("unknown") == 0.0


def test_runs_with_the_same_parameters_pool_into_one_composition() -> None:
    budget = DatasetBudget(dataset_id="d", epsilon_cap=100.0, delta=1e-5, accountant="rdp")
    take(budget, "a", 7)
    take(budget, "b", 5)
    assert budget.steps() == 12 and budget.steps("a") == 7
    assert budget.epsilon() == compute_epsilon(
        history=[(1.0, 0.05, 12)], delta=1e-5, accountant="rdp"
    )


def test_check_and_record_agree_and_charge_carries_the_ledger_numbers() -> None:
    budget = DatasetBudget(dataset_id="d", epsilon_cap=10.0, delta=1e-5, accountant="rdp")
    take(budget, "a", 3)
    decision = budget.check_step(run_id="b", **STEP)
    assert budget.epsilon_if_step(run_id="b", **STEP) == decision.epsilon_after
    assert budget.steps() == 3  # checking records nothing
    charge = budget.record_step(run_id="b", **STEP)
    assert charge == StepCharge(
        run_id="b",
        step=1,
        noise_multiplier=1.0,
        sample_rate=0.05,
        epsilon_step=compute_epsilon(history=[(1.0, 0.05, 1)], delta=1e-5, accountant="rdp"),
        epsilon_run_total=budget.run_epsilon("b"),
        epsilon_dataset_total=decision.epsilon_after,
        cap=10.0,
    )
    assert budget.remaining() == pytest.approx(10.0 - budget.epsilon())


# ---------------------------------------------------------------------- caps


def test_raise_and_lower_cap() -> None:
    budget = DatasetBudget(dataset_id="d", epsilon_cap=5.0, delta=1e-5, accountant="rdp")
    take(budget, "a", 20)
    spent = budget.epsilon()
    change = budget.raise_cap(6.0)
    assert (change.previous_cap, change.new_cap, change.epsilon_spent) == (5.0, 6.0, spent)
    for bad in (6.0, 5.5):
        with pytest.raises(ConfigError, match="lower_cap") as info:
            budget.raise_cap(bad)
        assert info.value.field == "cap"
    with pytest.raises(ConfigError, match="already been spent"):
        budget.lower_cap(spent * 0.99)
    assert budget.lower_cap(spent).new_cap == spent == budget.epsilon_cap
    assert not budget.check_step(run_id="a", **STEP).allowed
    for bad in (math.inf, math.nan, -1.0, True):
        with pytest.raises(ConfigError):
            budget.raise_cap(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------- persistence


def test_state_round_trips_through_json() -> None:
    budget = DatasetBudget(dataset_id="ds", epsilon_cap=50.0, delta=1e-6)
    take(budget, "a", 3, sigma=1.1, q=0.003)
    take(budget, "b", 2, sigma=0.7, q=1 / 3)
    take(budget, "a", 1, sigma=1.2, q=0.003)
    state = json.loads(json.dumps(budget.export_state()))
    assert state["format"] == BUDGET_STATE_FORMAT
    assert state["epsilon_schedule"] == "geometric:0.0025"
    restored = DatasetBudget.from_state(state)
    assert restored.histories == budget.histories
    assert (restored.epsilon_cap, restored.delta, restored.accountant) == (50.0, 1e-6, "prv")
    assert restored.epsilon() == budget.epsilon()
    assert restored.steps("a") == 4


def test_restored_budget_over_its_cap_refuses_everything() -> None:
    budget = DatasetBudget(dataset_id="ds", epsilon_cap=100.0, delta=1e-5, accountant="rdp")
    take(budget, "a", 50)
    state = budget.export_state() | {"epsilon_cap": 0.5}
    restored = DatasetBudget.from_state(state)
    assert restored.steps() == 50 and restored.remaining() == 0.0
    assert not restored.check_step(run_id="a", **STEP).allowed


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"format": 2}, "format"),
        ({"extra": 1}, "extra"),
        ({"histories": {"a": [[1.0, 1.5, 3]]}}, "histories['a'][0].sample_rate"),
        ({"histories": {"a": [[1.0, 0.5, 0]]}}, "histories['a'][0].num_steps"),
        ({"epsilon_cap": -1.0}, "epsilon_cap"),
    ],
)
def test_bad_state_names_the_field(change: dict[str, object], field: str) -> None:
    state = DatasetBudget(dataset_id="d", epsilon_cap=1.0, delta=1e-5).export_state() | change
    with pytest.raises(ConfigError) as info:
        DatasetBudget.from_state(state)
    assert info.value.field == field


def test_schedule_must_match_the_budget() -> None:
    with pytest.raises(ConfigError) as info:
        DatasetBudget(
            dataset_id="d",
            epsilon_cap=1.0,
            delta=1e-5,
            schedule=EpsilonSchedule(delta=1e-6, accountant="prv"),
        )
    assert info.value.field == "schedule"


def test_revert_step_undoes_only_the_latest_step_of_a_run() -> None:
    budget = DatasetBudget(dataset_id="d", epsilon_cap=10.0, delta=1e-5, accountant="rdp")
    take(budget, "a", 2)
    before = budget.epsilon()
    first_b = budget.record_step(run_id="b", **STEP)
    last_a = budget.record_step(run_id="a", noise_multiplier=2.0, sample_rate=0.05)
    budget.revert_step(last_a)  # a's latest step, although b stepped before it
    budget.revert_step(first_b)
    assert budget.epsilon() == before and budget.histories == {"a": ((1.0, 0.05, 2),)}
    with pytest.raises(ConfigError):
        budget.revert_step(last_a)


def test_accounting_versions_name_the_schedule() -> None:
    versions = accounting_versions(EpsilonSchedule(delta=1e-5))
    assert versions["epsilon_schedule"] == "geometric:0.0025"
    assert {"tensafe", "opacus", "numpy", "scipy", "python"} <= set(versions)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"run_id": ""}, "run_id"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"noise_multiplier": math.nan}, "noise_multiplier"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"sample_rate": "0.1"}, "sample_rate"),
    ],
)
def test_bad_step_arguments_name_their_field(kwargs: dict[str, object], field: str) -> None:
    budget = DatasetBudget(dataset_id="d", epsilon_cap=1.0, delta=1e-5, accountant="rdp")
    args = {"run_id": "r", **STEP, **kwargs}
    for method in (budget.check_step, budget.record_step):
        with pytest.raises(ConfigError) as info:
            method(**args)  # type: ignore[arg-type]
        assert info.value.field == field
    assert budget.steps() == 0


# ------------------------------------------------------------------- threads


def test_racing_runs_never_exceed_the_cap_together() -> None:
    cap = compute_epsilon(history=[(1.0, 0.05, 150)], delta=1e-5, accountant="rdp")
    budget = DatasetBudget(dataset_id="d", epsilon_cap=cap, delta=1e-5, accountant="rdp")
    accepted: list[StepCharge] = []
    refused: list[str] = []
    lock = threading.Lock()

    def worker(run_id: str) -> None:
        for _ in range(25):
            # The server's sequence, without any lock of its own: check, then charge.
            if not budget.check_step(run_id=run_id, **STEP).allowed:
                with lock:
                    refused.append(run_id)
                continue
            try:
                charge = budget.record_step(run_id=run_id, **STEP)
            except BudgetExceededError:
                with lock:
                    refused.append(run_id)
                continue
            with lock:
                accepted.append(charge)

    threads = [threading.Thread(target=worker, args=(f"run-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == budget.steps() == 150
    assert len(refused) == 8 * 25 - 150
    assert budget.epsilon() <= cap
    assert max(c.epsilon_dataset_total for c in accepted) == budget.epsilon()
    # Every charge saw a distinct, increasing total.
    assert len({c.epsilon_dataset_total for c in accepted}) == 150
