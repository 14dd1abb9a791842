"""Histories from ledger rows: carried steps enter a run's accountant, never a budget."""

from __future__ import annotations

import pytest

from tensafe.audit import (
    CarriedStep,
    accountant_history,
    budget_from_events,
    carried_origins,
    steps_to_carry,
)
from tensafe.audit.history import run_histories, step_counts
from tensafe.errors import ConfigError
from tests.tensafe.audit.carried import BASE, carried, chain, own

# seq: 1 budget, 2 a own, 3 b own, 4 a own, 5 a carried (c, 7), 6 a carried (t, 9),
# 7 a carried (c, 7) again (a repeat must never count twice), 8 a own.
SOURCE = chain(
    own("a", 1, 1.0),
    own("b", 1, 2.0),
    own("a", 2, 1.5),
    carried("a", ("c", 7), 3.0),
    carried("a", ("t", 9), 4.0),
    carried("a", ("c", 7), 3.0),
    own("a", 3, 5.0),
)


def test_budget_histories_count_own_steps_only() -> None:
    assert run_histories(SOURCE) == {
        "a": ((1.0, 0.01, 1), (1.5, 0.01, 1), (5.0, 0.01, 1)),
        "b": ((2.0, 0.01, 1),),
    }
    assert step_counts(SOURCE) == {(1.0, 0.01): 1, (2.0, 0.01): 1, (1.5, 0.01): 1, (5.0, 0.01): 1}
    budget = budget_from_events(SOURCE)
    assert budget.steps() == 4 and budget.steps("a") == 3
    assert dict(budget.histories) == run_histories(SOURCE)


def test_accountant_history_counts_own_and_carried_steps_in_seq_order() -> None:
    assert accountant_history(reversed(SOURCE), run_id="a") == (
        (1.0, 0.01), (1.5, 0.01), (3.0, 0.01), (4.0, 0.01), (3.0, 0.01), (5.0, 0.01),
    )  # fmt: skip
    assert accountant_history(SOURCE, run_id="b") == ((2.0, 0.01),)
    assert accountant_history(SOURCE, run_id="nobody") == ()
    assert carried_origins(SOURCE, run_id="a") == frozenset({("c", 7), ("t", 9)})
    assert carried_origins(SOURCE, run_id="b") == frozenset()


def test_steps_to_carry_names_original_steps_once() -> None:
    steps = steps_to_carry(
        SOURCE, source_run_id="a", upto_seq=7, target_run_id="t", held={("a", 2)}
    )
    # (a, 2) is held, (t, 9) originated in the target, the second (c, 7) repeats,
    # b's row is another run's, seq 8 is after the checkpoint.
    assert steps == [
        CarriedStep(origin_run_id="a", origin_seq=4, noise_multiplier=1.5, sample_rate=0.01,
                    max_grad_norm=1.0, dataset_size=1000),
        CarriedStep(origin_run_id="c", origin_seq=7, noise_multiplier=3.0, sample_rate=0.01,
                    max_grad_norm=1.0, dataset_size=1000),
    ]  # fmt: skip
    assert [s.origin for s in steps_to_carry(
        SOURCE, source_run_id="a", upto_seq=100, target_run_id="t", held=frozenset()
    )] == [("a", 2), ("a", 4), ("c", 7), ("a", 8)]  # fmt: skip
    assert steps_to_carry(SOURCE, source_run_id="a", upto_seq=0, target_run_id="t", held=()) == []
    assert steps_to_carry(SOURCE, source_run_id="a", upto_seq=8, target_run_id="a", held=()) == []


def test_loading_the_same_lineage_twice_carries_nothing_more() -> None:
    first = steps_to_carry(SOURCE, source_run_id="a", upto_seq=8, target_run_id="t", held=())
    target = [*SOURCE, *chain(*(s.ledger_fields(run_id="t") | {"epsilon_dataset_total": 0.0}
                                for s in first))[1:]]  # fmt: skip
    held = carried_origins(target, run_id="t")
    assert held == {s.origin for s in first}
    again = steps_to_carry(SOURCE, source_run_id="a", upto_seq=8, target_run_id="t", held=held)
    assert again == []
    # A third run loading t's lineage gets the original steps, not t's copies of them.
    onward = chain(*(s.ledger_fields(run_id="t") | {"epsilon_dataset_total": 0.0} for s in first))
    third = steps_to_carry(onward, source_run_id="t", upto_seq=99, target_run_id="x", held=held)
    assert [s.origin for s in third] == []  # everything t holds is already in `held`
    third = steps_to_carry(onward, source_run_id="t", upto_seq=99, target_run_id="x", held=())
    assert [s.origin for s in third] == [s.origin for s in first]


def test_steps_to_carry_checks_its_input() -> None:
    with pytest.raises(ConfigError) as info:
        steps_to_carry(SOURCE, source_run_id="a", upto_seq=-1, target_run_id="t", held=())
    assert info.value.field == "upto_seq"
    other = chain(own("a", 1, 1.0), base=BASE | {"dataset_id": "e"})
    with pytest.raises(ConfigError) as info:
        steps_to_carry([*SOURCE, *other], source_run_id="a", upto_seq=3, target_run_id="t",
                       held=())  # fmt: skip
    assert info.value.field == "source_events"
