"""ε re-derived from the ledger: independent PLD/PRV agreement, and replay."""

from __future__ import annotations

import math

import pytest

from tensafe.audit.ledger import GENESIS, ChainHead, LedgerEvent, append
from tensafe.audit.recompute import (
    EpsilonCheck,
    RecomputeResult,
    opacus_prv_epsilon,
    pld_epsilon,
    recompute_epsilons,
    replay_ledger,
)
from tensafe.errors import ConfigError
from tensafe.privacy.budget import accounting_versions
from tensafe.privacy.epsilon import compute_epsilon
from tensafe.privacy.schedule import EpsilonSchedule
from tests.tensafe.audit.simulate import KEY, Ledger, RunSpec, new_ledger, run_steps
from tests.tensafe.audit.test_references import gaussian_epsilon

Histories = dict[str, list[tuple[float, float, int]]]


def bulk_ledger(histories: Histories, *, delta: float = 1e-5) -> list[LedgerEvent]:
    """Rows for long histories, cheaply: only each run's last row carries real totals
    (recomputation reads nothing else), the others carry 0."""
    schedule = EpsilonSchedule(delta=delta, accountant="prv")
    base = {
        "tenant_id": "t", "dataset_id": "d", "delta": delta, "accountant": "prv", "cap": 1e3,
        "library_versions": accounting_versions(schedule),
        "created_at": "2026-03-02T09:00:00.000000Z",
    }  # fmt: skip
    events = [append(GENESIS, base | {"kind": "budget_created", "epsilon_dataset_total": 0.0}, KEY)]
    totals: dict[tuple[float, float], int] = {}
    for run_id, history in histories.items():
        mine: dict[tuple[float, float], int] = {}
        step = 0
        for sigma, q, n in history:
            for i in range(n):
                step += 1
                mine[(sigma, q)] = mine.get((sigma, q), 0) + 1
                totals[(sigma, q)] = totals.get((sigma, q), 0) + 1
                last = i == n - 1 and (sigma, q, n) == history[-1]
                row = base | {
                    "kind": "dp_step", "run_id": run_id, "step": step,
                    "noise_multiplier": sigma, "sample_rate": q, "max_grad_norm": 1.0,
                    "dataset_size": 10_000, "epsilon_step": 0.0,
                    "epsilon_run_total": schedule.epsilon(mine) if last else 0.0,
                    "epsilon_dataset_total": schedule.epsilon(totals) if last else 0.0,
                }  # fmt: skip
                events.append(append(ChainHead.after(events[-1]), row, KEY))
    return events


CASES: dict[str, Histories] = {
    "one run, 1,000 steps": {"a": [(1.0, 0.01, 1000)]},
    "two runs composed": {"a": [(1.0, 0.02, 600)], "b": [(1.5, 0.04, 400)]},
    "σ changed mid-run": {"a": [(0.8, 0.004, 1200), (1.2, 0.004, 300)]},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_epsilon_agrees_with_pld_and_prv_within_one_percent(name: str) -> None:
    histories = CASES[name]
    result = recompute_epsilons(bulk_ledger(histories))
    assert result.all_agree, result
    assert [r.subject for r in result.runs] == list(histories)
    for check in (*result.runs, result.dataset):
        assert check.prv is not None and check.upper_bound_holds
        assert abs(check.pld_relative_difference) <= 0.01
        assert abs(check.prv_relative_difference or 0.0) <= 0.01
    composed = [s for h in histories.values() for s in h]
    assert result.dataset.steps == sum(n for _, _, n in composed)
    exact = compute_epsilon(history=composed, delta=1e-5, accountant="prv")
    assert result.dataset.recorded >= exact  # conservative
    assert RecomputeResult.from_dict(result.to_dict()) == result


def test_under_reporting_is_flagged() -> None:
    events = bulk_ledger({"a": [(1.0, 0.02, 300)]})
    lowered = events[-1].to_row() | {
        "epsilon_dataset_total": events[-1].epsilon_dataset_total * 0.97
    }
    lowered.pop("link")
    lowered.pop("seq")
    lowered.pop("prev_link")
    events[-1] = append(ChainHead.after(events[-2]), lowered, KEY)
    result = recompute_epsilons(events)
    assert result.runs[0].agree_within_1pct  # the run's own total was left alone
    assert not result.dataset.agree_within_1pct and not result.dataset.upper_bound_holds
    assert not result.all_agree


def test_references_are_independent_implementations_of_the_same_quantity() -> None:
    history = [(1.0, 0.01, 1000)]
    ours = compute_epsilon(history=history, delta=1e-5, accountant="prv")
    pld = pld_epsilon(history, delta=1e-5)
    prv = opacus_prv_epsilon(history, delta=1e-5, eps_error=2e-3 * pld)
    assert pld == pytest.approx(ours, rel=0.01) and prv == pytest.approx(ours, rel=0.01)


def test_rdp_ledger_is_an_upper_bound_not_a_one_percent_match() -> None:
    ledger = new_ledger(cap=50.0, accountant="rdp")
    run_steps(ledger, [RunSpec("a", 1.0, 0.05, 30)])
    check: EpsilonCheck = recompute_epsilons(ledger.events).dataset
    assert check.upper_bound_holds and not check.agree_within_1pct
    assert check.pld_relative_difference > 0.01


def test_empty_ledger_recomputes_to_zero() -> None:
    ledger = new_ledger(cap=1.0)
    result = recompute_epsilons(ledger.events)
    assert result.runs == () and result.dataset.recorded == 0.0 and result.all_agree


# --------------------------------------------------------------------- replay


def test_replay_reproduces_every_recorded_value(prv_ledger: Ledger) -> None:
    result = replay_ledger(prv_ledger.events)  # with a schedule of its own
    steps = sum(1 for e in prv_ledger.events if e.kind in ("dp_step", "step_refused"))
    assert result.ok, result.mismatches
    assert result.evaluated == steps and result.rows == len(prv_ledger.events)
    sparse = replay_ledger(prv_ledger.events, stride=1000, schedule=prv_ledger.budget.schedule)
    assert sparse.ok and sparse.evaluated == 2 + 4  # each run's last step, 4 refusals


def relinked(events: list[LedgerEvent], index: int, **change: object) -> list[LedgerEvent]:
    """The ledger with row ``index`` changed and every later row re-linked (by someone
    holding the key — what replay catches and the chain cannot)."""
    out = list(events[:index])
    for event in events[index:]:
        row = event.to_row() | (change if event.seq == events[index].seq else {})
        for name in ("seq", "prev_link", "link"):
            row.pop(name)
        out.append(append(ChainHead.after(out[-1]), row, KEY))
    return out


def test_replay_catches_a_recorded_value_that_was_not_computed(prv_ledger: Ledger) -> None:
    index = next(i for i, e in enumerate(prv_ledger.events) if e.kind == "dp_step" and e.step == 4)
    event = prv_ledger.events[index]
    bad = relinked(prv_ledger.events, index, epsilon_dataset_total=event.epsilon_dataset_total / 2)
    result = replay_ledger(bad, schedule=prv_ledger.budget.schedule)
    assert [(m.seq, m.field) for m in result.mismatches] == [(event.seq, "epsilon_dataset_total")]


def test_replay_catches_broken_rules(prv_ledger: Ledger) -> None:
    events = prv_ledger.events
    refusal = next(i for i, e in enumerate(events) if e.kind == "step_refused")
    bad = relinked(events, refusal, cap=100.0)  # refused although within this cap
    schedule = prv_ledger.budget.schedule  # its cache makes the replays cheap
    assert "cap" in {m.field for m in replay_ledger(bad, schedule=schedule).mismatches}
    skipped = relinked(events, 3, step=5)
    assert replay_ledger(skipped, schedule=schedule).mismatches[0].field == "step"
    with pytest.raises(ValueError):
        replay_ledger(events, stride=0)
    with pytest.raises(ConfigError) as info:
        replay_ledger(events, schedule=EpsilonSchedule(delta=1e-6))
    assert info.value.field == "schedule"


# ------------------------------------------------------- small and full sample rates

#: The true ε at δ = 1e-5 of 10,000 steps at q = 1e-4, cross-checked two ways: PLD at
#: interval 1e-6 (σ = 1: 0.0380171) or 3.9e-7 (σ = 5: 0.0044486), Opacus PRV's point
#: estimate at eps_error 1e-4 (0.0380174; 0.0044498).
SMALL_Q_TRUE_EPSILON = {1.0: 0.038017, 5.0: 0.0044486}


def checked_ledger(sigma: float, q: float, steps: int, *, below: float) -> RecomputeResult:
    """One run's ledger whose last row records the service's own values (run total:
    conservative schedule; run exact: ``compute_epsilon``) but a dataset total of
    ``below`` — so the three checks share one history and one pair of references."""
    events = bulk_ledger({"a": [(sigma, q, steps)]})
    exact = compute_epsilon(history=[(sigma, q, steps)], delta=1e-5, accountant="prv")
    events = relinked(events, len(events) - 1, epsilon_dataset_total=below, epsilon_run_exact=exact)
    return recompute_epsilons(events)


@pytest.mark.parametrize("sigma", [1.0, 5.0])
def test_small_sample_rate_correct_values_pass_and_an_under_report_fails(sigma: float) -> None:
    true = SMALL_Q_TRUE_EPSILON[sigma]
    result = checked_ledger(sigma, 1e-4, 10_000, below=0.985 * true)
    run, exact, dataset = result.runs[0], result.runs_exact[0], result.dataset
    assert run.pld == pytest.approx(true, rel=1e-3) and run.pld_converged
    assert run.pld_value_discretization is not None and run.pld_value_discretization < 2e-5
    # The service's values are above the true ε: never flagged as under-reported
    # (at a fixed interval of 1e-4 PLD read 0.03996 and 0.00970, and both were).
    assert run.recorded >= exact.recorded >= true
    assert run.upper_bound_holds and exact.upper_bound_holds
    assert run.prv is not None and run.prv_lower is not None
    assert run.prv_lower <= true <= run.prv
    # 1.5 % below the true ε: caught.
    assert not dataset.upper_bound_holds and not dataset.agree_within_1pct
    assert not result.all_agree


def test_full_batch_correct_value_agrees_and_an_under_report_fails() -> None:
    true = gaussian_epsilon(math.sqrt(20) / 1.5, 1e-5)  # q = 1: one Gaussian, μ = √k/σ
    result = checked_ledger(1.5, 1.0, 20, below=0.985 * true)
    run, exact, dataset = result.runs[0], result.runs_exact[0], result.dataset
    assert run.pld == pytest.approx(true, rel=1e-3)
    for check in (run, exact):
        assert check.agree_within_1pct and check.upper_bound_holds, check
    assert not dataset.upper_bound_holds and not dataset.agree_within_1pct


def test_identical_histories_are_evaluated_once() -> None:
    events = bulk_ledger({"a": [(1.0, 0.01, 300)]})
    result = recompute_epsilons(events)
    assert result.runs[0].history == result.dataset.history
    assert result.runs[0].pld == result.dataset.pld and result.runs[0].prv == result.dataset.prv
    with pytest.raises(ConfigError) as info:
        recompute_epsilons(events, pld_tolerance=0.1)
    assert info.value.field == "pld_tolerance"
