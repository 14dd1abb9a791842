"""The stateful accountant: history compression, caching, persistence."""

from __future__ import annotations

import json

import pytest

from tensafe.errors import ConfigError
from tensafe.privacy import accountant as accountant_module
from tensafe.privacy.accountant import STATE_FORMAT, PrivacyAccountant
from tensafe.privacy.epsilon import compute_epsilon


def run(acc: PrivacyAccountant, steps: list[tuple[float, float]]) -> None:
    for sigma, q in steps:
        acc.record_step(noise_multiplier=sigma, sample_rate=q)


def test_history_is_run_length_compressed() -> None:
    acc = PrivacyAccountant(accountant="rdp")
    run(acc, [(1.0, 0.01)] * 3 + [(1.2, 0.01)] * 2 + [(1.2, 0.02)] + [(1.0, 0.01)] * 2)
    assert acc.history == ((1.0, 0.01, 3), (1.2, 0.01, 2), (1.2, 0.02, 1), (1.0, 0.01, 2))
    assert acc.steps == 8


def test_epsilon_is_the_pure_function_of_the_history() -> None:
    acc = PrivacyAccountant(accountant="prv")
    assert acc.epsilon(1e-5) == 0.0
    run(acc, [(1.0, 0.05)] * 5 + [(2.0, 0.05)] * 5)
    expected = compute_epsilon(history=acc.history, delta=1e-5, accountant="prv")
    assert acc.epsilon(1e-5) == expected


@pytest.mark.parametrize("name", ["prv", "rdp"])
def test_epsilon_after_step_equals_epsilon_after_recording(name: str) -> None:
    acc = PrivacyAccountant(accountant=name)  # type: ignore[arg-type]
    run(acc, [(1.0, 0.05)] * 4)
    for sigma in (1.0, 1.5):  # extends the last segment, then opens a new one
        predicted = acc.epsilon_after_step(delta=1e-5, noise_multiplier=sigma, sample_rate=0.05)
        before = acc.history
        acc.record_step(noise_multiplier=sigma, sample_rate=0.05)
        assert acc.epsilon(1e-5) == predicted
        assert acc.history != before


def test_epsilon_after_step_records_nothing() -> None:
    acc = PrivacyAccountant(accountant="rdp")
    run(acc, [(1.0, 0.05)] * 4)
    acc.epsilon_after_step(delta=1e-5, noise_multiplier=1.0, sample_rate=0.05)
    assert acc.history == ((1.0, 0.05, 4),)


def test_repeated_queries_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []
    real = accountant_module.compute_epsilon

    def counting(**kwargs: object) -> float:
        calls.append(tuple(kwargs.values()))
        return real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(accountant_module, "compute_epsilon", counting)
    acc = PrivacyAccountant(accountant="rdp")
    run(acc, [(1.0, 0.05)] * 3)
    # A per-step sequence: check the next step, record, report — one computation.
    acc.epsilon_after_step(delta=1e-5, noise_multiplier=1.0, sample_rate=0.05)
    acc.record_step(noise_multiplier=1.0, sample_rate=0.05)
    acc.epsilon(1e-5)
    acc.epsilon(1e-5)
    assert len(calls) == 1
    acc.epsilon(1e-6)  # another δ is another key
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("sigma", "q", "field"),
    [
        (-1.0, 0.1, "noise_multiplier"),
        (float("nan"), 0.1, "noise_multiplier"),
        (True, 0.1, "noise_multiplier"),
        (1.0, 0.0, "sample_rate"),
        (1.0, 1.01, "sample_rate"),
        (1.0, "0.1", "sample_rate"),
    ],
)
def test_record_step_rejects_bad_values_without_recording(
    sigma: object, q: object, field: str
) -> None:
    acc = PrivacyAccountant(accountant="rdp")
    run(acc, [(1.0, 0.1)])
    with pytest.raises(ConfigError) as info:
        acc.record_step(noise_multiplier=sigma, sample_rate=q)  # type: ignore[arg-type]
    assert info.value.field == field
    assert acc.history == ((1.0, 0.1, 1),)


def test_unknown_accountant_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        PrivacyAccountant(accountant="gdp")  # type: ignore[arg-type]
    assert info.value.field == "accountant"


def test_state_dict_round_trips_through_json() -> None:
    acc = PrivacyAccountant(accountant="rdp")
    run(acc, [(0.1 + 0.2, 1 / 3)] * 3 + [(1.7, 0.01)])  # floats with long reprs
    state = json.loads(json.dumps(acc.state_dict()))
    assert state["format"] == STATE_FORMAT
    restored = PrivacyAccountant.from_state_dict(state)
    assert restored.accountant == "rdp"
    assert restored.history == acc.history
    assert restored.epsilon(1e-5) == acc.epsilon(1e-5)

    other = PrivacyAccountant(accountant="prv")
    other.load_state_dict(state)
    assert other.accountant == "rdp"
    assert other.history == acc.history


def test_load_state_dict_merges_adjacent_equal_segments() -> None:
    acc = PrivacyAccountant()
    acc.load_state_dict(
        {"format": 1, "accountant": "prv", "history": [[1.0, 0.1, 2], [1.0, 0.1, 3], [2.0, 0.1, 1]]}
    )
    assert acc.history == ((1.0, 0.1, 5), (2.0, 0.1, 1))


@pytest.mark.parametrize(
    ("state", "field"),
    [
        ({"format": 1, "accountant": "prv"}, "history"),
        ({"format": 1, "accountant": "prv", "history": [], "extra": 1}, "extra"),
        ({"format": 2, "accountant": "prv", "history": []}, "format"),
        ({"format": True, "accountant": "prv", "history": []}, "format"),
        ({"format": 1, "accountant": "gdp", "history": []}, "accountant"),
        ({"format": 1, "accountant": "prv", "history": [[1.0, 0.1]]}, "history[0]"),
        ({"format": 1, "accountant": "prv", "history": [[1.0, 0.0, 3]]}, "history[0].sample_rate"),
        ({"format": 1, "accountant": "prv", "history": [[1.0, 0.1, 0]]}, "history[0].num_steps"),
        (
            {"format": 1, "accountant": "prv", "history": [[-1, 0.1, 1]]},
            "history[0].noise_multiplier",
        ),
    ],
)
def test_load_state_dict_validates_before_changing_anything(
    state: dict[str, object], field: str
) -> None:
    acc = PrivacyAccountant(accountant="rdp")
    run(acc, [(1.0, 0.1)] * 2)
    with pytest.raises(ConfigError) as info:
        acc.load_state_dict(state)
    assert info.value.field == field
    assert acc.accountant == "rdp"
    assert acc.history == ((1.0, 0.1, 2),)


def test_copy_is_independent() -> None:
    acc = PrivacyAccountant(accountant="rdp")
    run(acc, [(1.0, 0.1)] * 2)
    clone = acc.copy()
    clone.record_step(noise_multiplier=1.0, sample_rate=0.1)
    assert acc.history == ((1.0, 0.1, 2),)
    assert clone.history == ((1.0, 0.1, 3),)
    assert clone.accountant == acc.accountant
