"""DPConfig validation, resolution and persistence."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from tensafe.errors import ConfigError
from tensafe.privacy.config import DPConfig, ResolvedDP
from tensafe.privacy.epsilon import compute_epsilon, default_delta

BASE: dict[str, object] = {
    "noise_multiplier": 1.0,
    "dataset_size": 10_000,
    "expected_batch_size": 100,
}


def make(**overrides: object) -> DPConfig:
    kwargs = dict(BASE)
    kwargs.update(overrides)
    return DPConfig(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"enabled": 1}, "enabled"),
        ({"secure_mode": "yes"}, "secure_mode"),
        ({"allow_zero_noise": None}, "allow_zero_noise"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"max_grad_norm": float("inf")}, "max_grad_norm"),
        ({"max_grad_norm": float("nan")}, "max_grad_norm"),
        ({"max_grad_norm": None}, "max_grad_norm"),
        ({"noise_multiplier": -0.5}, "noise_multiplier"),
        ({"noise_multiplier": "1.0"}, "noise_multiplier"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": None}, "noise_multiplier"),  # neither σ nor target ε
        ({"target_epsilon": 2.0, "planned_steps": 10}, "target_epsilon"),  # both
        ({"noise_multiplier": None, "target_epsilon": 2.0}, "planned_steps"),
        ({"noise_multiplier": None, "target_epsilon": 0.0, "planned_steps": 10}, "target_epsilon"),
        ({"noise_multiplier": None, "target_epsilon": 2.0, "planned_steps": 0}, "planned_steps"),
        ({"planned_steps": 2.5}, "planned_steps"),
        ({"target_delta": 0.0}, "target_delta"),
        ({"target_delta": 1.0}, "target_delta"),
        ({"target_delta": 1e-4}, "target_delta"),  # = 1/N: refused
        ({"target_delta": 2e-4}, "target_delta"),  # > 1/N
        ({"dataset_size": None}, "dataset_size"),
        ({"dataset_size": 0}, "dataset_size"),
        ({"dataset_size": 1e4}, "dataset_size"),
        ({"dataset_size": True}, "dataset_size"),
        ({"expected_batch_size": None}, "sample_rate"),  # neither q nor B
        ({"sample_rate": 0.01}, "expected_batch_size"),  # both
        ({"expected_batch_size": 0}, "expected_batch_size"),
        ({"expected_batch_size": 10_001}, "expected_batch_size"),
        ({"expected_batch_size": 100.0}, "expected_batch_size"),
        ({"expected_batch_size": None, "sample_rate": 0.0}, "sample_rate"),
        ({"expected_batch_size": None, "sample_rate": 1.5}, "sample_rate"),
        ({"accountant": "gdp"}, "accountant"),
        ({"accountant": None}, "accountant"),
    ],
)
def test_each_bad_value_names_its_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        make(**overrides)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_messages_list_allowed_values() -> None:
    with pytest.raises(ConfigError, match="'prv', 'rdp'"):
        make(accountant="gdp")
    with pytest.raises(ConfigError, match=r"1/N"):
        make(target_delta=1e-3)


def test_zero_noise_needs_the_test_only_flag_and_warns() -> None:
    with pytest.raises(ConfigError) as info:
        make(noise_multiplier=0.0)
    assert info.value.field == "noise_multiplier"
    with pytest.warns(UserWarning, match="NO differential privacy"):
        cfg = make(noise_multiplier=0.0, allow_zero_noise=True)
    resolved = cfg.resolve()
    assert resolved.noise_multiplier == 0.0
    history = [(resolved.noise_multiplier, resolved.sample_rate, 1)]
    assert compute_epsilon(history=history, delta=resolved.delta, accountant="prv") == float("inf")


def test_disabled_ignores_values_but_checks_types() -> None:
    cfg = DPConfig(enabled=False, max_grad_norm=-3.0, noise_multiplier=0.0, target_delta=5.0)
    assert cfg.enabled is False
    for overrides, field in [
        ({"max_grad_norm": "big"}, "max_grad_norm"),
        ({"dataset_size": 10.5}, "dataset_size"),
        ({"accountant": "gdp"}, "accountant"),
        ({"target_epsilon": float("nan")}, "target_epsilon"),
    ]:
        with pytest.raises(ConfigError) as info:
            DPConfig(enabled=False, **overrides)  # type: ignore[arg-type]
        assert info.value.field == field


def test_numbers_are_normalized() -> None:
    cfg = make(max_grad_norm=2, noise_multiplier=1)
    assert isinstance(cfg.max_grad_norm, float)
    assert isinstance(cfg.noise_multiplier, float)
    assert cfg == make(max_grad_norm=2.0, noise_multiplier=1.0)


def test_config_is_frozen_and_keyword_only() -> None:
    cfg = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.noise_multiplier = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        DPConfig(True, 1.0)  # type: ignore[misc]


# ---------------------------------------------------------------------- resolution


def test_resolve_fills_defaults_from_expected_batch_size() -> None:
    resolved = make().resolve()
    assert resolved == ResolvedDP(
        noise_multiplier=1.0,
        sample_rate=0.01,
        expected_batch_size=100.0,
        max_grad_norm=1.0,
        dataset_size=10_000,
        delta=1e-5,
        accountant="prv",
        secure_mode=False,
    )


def test_resolve_from_sample_rate_and_default_delta_for_large_n() -> None:
    cfg = DPConfig(
        noise_multiplier=0.9,
        dataset_size=1_000_000,
        sample_rate=0.001,
        accountant="rdp",
        secure_mode=True,
        max_grad_norm=0.5,
    )
    resolved = cfg.resolve()
    assert resolved.sample_rate == 0.001
    assert resolved.expected_batch_size == pytest.approx(1000.0)
    assert resolved.delta == default_delta(1_000_000) == pytest.approx(10**-6.6)
    assert resolved.accountant == "rdp"
    assert resolved.secure_mode is True
    assert resolved.max_grad_norm == 0.5


def test_resolve_keeps_explicit_delta() -> None:
    assert make(target_delta=1e-6).resolve().delta == 1e-6


def test_resolve_calibrates_and_caches() -> None:
    cfg = make(noise_multiplier=None, target_epsilon=2.0, planned_steps=500, accountant="prv")
    first = cfg.resolve()
    assert first is cfg.resolve()
    eps = compute_epsilon(
        history=[(first.noise_multiplier, first.sample_rate, 500)],
        delta=first.delta,
        accountant="prv",
    )
    assert 0.97 * 2.0 <= eps <= 2.0


def test_resolve_on_disabled_config_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        DPConfig(enabled=False).resolve()
    assert info.value.field == "enabled"


def test_resolved_to_dict_is_json() -> None:
    resolved = make().resolve()
    assert json.loads(json.dumps(resolved.to_dict())) == resolved.to_dict()
    assert ResolvedDP(**resolved.to_dict()) == resolved  # type: ignore[arg-type]


# --------------------------------------------------------------------- persistence


@pytest.mark.parametrize(
    "cfg",
    [
        DPConfig(enabled=False),
        make(),
        make(secure_mode=True, accountant="rdp", max_grad_norm=0.3, target_delta=1e-7),
        DPConfig(target_epsilon=3.0, planned_steps=100, dataset_size=500, sample_rate=0.1 + 0.2),
    ],
)
def test_to_dict_from_dict_round_trip_through_json(cfg: DPConfig) -> None:
    data = json.loads(json.dumps(cfg.to_dict()))
    assert set(data) == {f.name for f in dataclasses.fields(DPConfig)}
    assert DPConfig.from_dict(data) == cfg


def test_from_dict_names_unknown_fields() -> None:
    data = make().to_dict()
    data["noise_multipler"] = 1.0  # typo
    with pytest.raises(ConfigError) as info:
        DPConfig.from_dict(data)
    assert info.value.field == "noise_multipler"
    assert "noise_multiplier" in info.value.message


def test_from_dict_uses_defaults_and_validates() -> None:
    assert DPConfig.from_dict({"enabled": False}) == DPConfig(enabled=False)
    with pytest.raises(ConfigError) as info:
        DPConfig.from_dict({**make().to_dict(), "max_grad_norm": "1"})
    assert info.value.field == "max_grad_norm"
    with pytest.raises(ConfigError):
        DPConfig.from_dict([("enabled", False)])  # type: ignore[arg-type]


def test_config_and_errors_pickle() -> None:
    cfg = make()
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    with pytest.raises(ConfigError) as info:
        make(max_grad_norm=0.0)
    err = pickle.loads(pickle.dumps(info.value))
    assert err.field == "max_grad_norm"
