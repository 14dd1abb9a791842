"""Every wire field has an engine counterpart (or is declared server-only), and back.

The mapping tables live in :mod:`server.services.wire`; a field added to a wire
model or an engine config without a decision there fails here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from pydantic import BaseModel
from tg_tinker import types as wire

from server.services.wire import (
    ADAM_MAP,
    DP_MAP,
    FIELD_MAPS,
    LORA_MAP,
    OPTIMIZER_MAP,
    TRAINING_MAP,
    FieldMap,
    adam_params,
    engine_spec,
)
from server.settings import Settings


def parity_problems(fmap: FieldMap) -> list[str]:
    """What the table leaves undecided: unmapped fields on either side, stale entries."""
    wire_fields, engine_fields = fmap.wire_fields(), fmap.engine_fields()
    mapped = {fmap.renamed.get(f, f) for f in wire_fields - fmap.server_only}
    name = f"{fmap.wire.__name__}↔{getattr(fmap.engine, '__name__', fmap.engine)}"
    problems = [
        f"{name}: wire field {f!r} has no engine counterpart and is not server-only"
        for f in sorted(wire_fields - fmap.server_only)
        if fmap.renamed.get(f, f) not in engine_fields
    ]
    problems += [
        f"{name}: engine field {f!r} is not set from the wire and not engine-only"
        for f in sorted(engine_fields - mapped - fmap.engine_only)
    ]
    problems += [
        f"{name}: listed field {f!r} does not exist"
        for f in sorted(
            ((fmap.server_only | set(fmap.renamed)) - wire_fields)
            | (fmap.engine_only - engine_fields)
        )
    ]
    return problems


@pytest.mark.parametrize("fmap", [*FIELD_MAPS, TRAINING_MAP], ids=lambda m: m.wire.__name__)
def test_every_wire_field_has_an_engine_counterpart(fmap: FieldMap) -> None:
    assert parity_problems(fmap) == []


def test_the_check_fails_on_an_unmapped_field() -> None:
    class WireWithExtra(wire.AdamParams):
        momentum_decay: float = 0.0

    @dataclass
    class EngineWithExtra:
        learning_rate: float
        beta1: float
        beta2: float
        eps: float
        weight_decay: float
        amsgrad: bool = False

    assert parity_problems(FieldMap(WireWithExtra, ADAM_MAP.engine)) == [
        "WireWithExtra↔AdamParams: wire field 'momentum_decay' has no engine counterpart "
        "and is not server-only"
    ]
    assert parity_problems(FieldMap(wire.AdamParams, EngineWithExtra)) == [
        "AdamParams↔EngineWithExtra: engine field 'amsgrad' is not set from the wire and "
        "not engine-only"
    ]


def _non_default(model: type[BaseModel], **values: object) -> BaseModel:
    return model.model_validate(values)


def test_config_values_arrive_in_the_engine() -> None:
    config = wire.TrainingConfig(
        model_ref="tiny-llama",
        lora_config=_non_default(
            wire.LoRAConfig,
            rank=4,
            alpha=8.0,
            dropout=0.1,
            target_modules=["q_proj"],
            bias="all",
            train_attn=False,
            train_mlp=True,
            train_unembed=False,
        ),
        optimizer=wire.OptimizerConfig(
            name="adamw", learning_rate=0.01, weight_decay=0.1, betas=(0.8, 0.9), eps=1e-6
        ),
        dp_config=wire.DPConfig(
            max_grad_norm=0.5,
            noise_multiplier=1.5,
            dataset_size=1000,
            sample_rate=0.01,
            accountant="rdp",
            dataset_id="ds",
        ),
        seed=7,
    )
    spec = engine_spec(config, settings=Settings(environment="development"))
    for fmap, wire_value, engine_value in (
        (LORA_MAP, config.lora_config, spec.lora),
        (OPTIMIZER_MAP, config.optimizer, spec.optimizer),
        (DP_MAP, config.dp_config, spec.dp),
    ):
        for name, value in fmap.engine_kwargs(wire_value).items():
            assert getattr(engine_value, name) == value, name
    assert spec.lora is not None and spec.lora.target_modules == ("q_proj",)
    assert spec.dataset_id == "ds" and spec.seed == 7


def test_adam_params_arrive_in_the_engine() -> None:
    request = wire.OptimStepRequest(
        adam_params=wire.AdamParams(
            learning_rate=0.02, beta1=0.8, beta2=0.95, eps=1e-7, weight_decay=0.01
        )
    )
    params = adam_params(request)
    assert params is not None
    assert (params.learning_rate, params.beta1, params.beta2, params.eps) == (
        0.02,
        0.8,
        0.95,
        1e-7,
    )
    assert params.weight_decay == 0.01
