"""Manifest validation (errors name the field) and exact JSON round trip."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from tensafe.artifacts import Manifest, library_versions
from tensafe.errors import ConfigError

DP = {
    "noise_multiplier": 0.8,
    "sample_rate": 0.02,
    "max_grad_norm": 1.0,
    "dataset_size": 500,
    "delta": 1e-5,
    "accountant": "rdp",
    "epsilon": 1.25,
}


def test_roundtrip_is_exact() -> None:
    manifest = Manifest(
        kind="lora_adapter",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        step=12,
        lora_config={"r": 8, "target_modules": ["q_proj", "v_proj"], "peft_type": "LORA"},
        dp=DP,
        metadata={"owner": "ana", "tags": ["a", 1, None]},
    ).with_plaintext_sha256("ab" * 32)
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert Manifest.from_json(manifest.to_json(indent=2)) == manifest
    assert manifest.to_json() == Manifest.from_json(manifest.to_json()).to_json()


def test_defaults_stamp_versions_and_utc_time() -> None:
    manifest = Manifest(kind="full_weights", base_model="m")
    assert manifest.library_versions == library_versions()
    assert {"cryptography", "tensafe"} <= set(manifest.library_versions)
    assert manifest.created_at.endswith("Z")
    assert datetime.fromisoformat(manifest.created_at).utcoffset().total_seconds() == 0


def test_dict_fields_are_detached_copies() -> None:
    metadata = {"a": [1]}
    manifest = Manifest(kind="full_weights", base_model="m", metadata=metadata)
    metadata["a"].append(2)
    assert manifest.metadata == {"a": [1]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.step = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "pickle"}, "kind"),
        ({"base_model": ""}, "base_model"),
        ({"step": -1}, "step"),
        ({"step": True}, "step"),
        ({"kind": "lora_adapter"}, "lora_config"),
        ({"lora_config": {"r": 8}}, "lora_config"),
        ({"metadata": {"x": float("nan")}}, "metadata"),
        ({"metadata": {"x": object()}}, "metadata"),
        ({"metadata": {"x": "y" * 70_000}}, "metadata"),
        ({"plaintext_sha256": "XYZ"}, "plaintext_sha256"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": "2025-01-01T00:00:00+02:00"}, "created_at"),
        ({"created_at": "2025-01-01T00:00:00"}, "created_at"),
        ({"kind": "training_state"}, "training_state"),
        ({"training_state": {"optimizer": {}, "accountant_history": []}}, "training_state"),
        ({"dp": {**DP, "sample_rate": 0.0}}, "dp.sample_rate"),
        ({"dp": {**DP, "delta": 1.5}}, "dp.delta"),
        ({"dp": {**DP, "epsilon": -1.0}}, "dp.epsilon"),
        ({"dp": {**DP, "dataset_size": 0}}, "dp.dataset_size"),
        ({"dp": {**DP, "accountant": ""}}, "dp.accountant"),
        ({"dp": {k: v for k, v in DP.items() if k != "delta"}}, "dp.delta"),
        ({"dp": {**DP, "sigma": 1.0}}, "dp.sigma"),
        ({"library_versions": {"torch": 2}}, "library_versions"),
    ],
)
def test_invalid_fields_are_named(kwargs: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"kind": "full_weights", "base_model": "m"}
    with pytest.raises(ConfigError) as info:
        Manifest(**{**base, **kwargs})  # type: ignore[arg-type]
    assert info.value.field == field


def test_from_json_refuses_unknown_version_and_fields() -> None:
    good = Manifest(kind="full_weights", base_model="m").to_dict()
    with pytest.raises(ConfigError) as info:
        Manifest.from_dict({**good, "manifest_version": 2})
    assert info.value.field == "manifest_version"
    with pytest.raises(ConfigError) as info:
        Manifest.from_dict({**good, "pickle": "no"})
    assert info.value.field == "pickle"
    with pytest.raises(ConfigError):
        Manifest.from_json(b"\xff not json")
