"""Engine options set in the server's settings reach every backend's engines."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import Settings


def _spec():
    from server.services.wire import EngineSpec
    from tensafe.engine import OptimizerConfig
    from tensafe.models import LoRAConfig
    from tensafe.privacy import DPConfig

    return EngineSpec(
        model_ref="tiny-llama",
        lora=LoRAConfig(rank=2),
        dp=DPConfig(noise_multiplier=1.0, dataset_size=100, expected_batch_size=4),
        optimizer=OptimizerConfig(),
        seed=0,
        dataset_id=None,
    )


def _in_both_backends(settings: Settings, probe):
    """``probe(engine)`` of a run built by the in-process backend, and of one built as a
    Ray actor builds it, from the pickled options the Ray backend ships to its actors."""
    from server.worker.backends import InProcessBackend
    from server.worker.backends.ray_actor import EngineHost
    from server.worker.engine_factory import EngineOptions

    engine = InProcessBackend(settings).build(run_id="r1", spec=_spec())
    options = pickle.loads(pickle.dumps(EngineOptions.from_settings(settings, device="cpu")))
    host = EngineHost(options)
    host.build("r2", _spec())
    return probe(engine), host.call("r2", probe, {})


def test_activation_checkpointing_reaches_every_backends_engines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensafe.models.checkpointing import checkpointed_layers

    monkeypatch.setenv("TENSAFE_ACTIVATION_CHECKPOINTING", "true")
    settings = Settings(data_dir=tmp_path, environment="development")
    assert settings.activation_checkpointing is True
    # the tiny model's two layers, in both backends
    assert _in_both_backends(
        settings, lambda e: (e.activation_checkpointing, len(checkpointed_layers(e.model)))
    ) == ((True, 2), (True, 2))


def test_microbatch_examples_reaches_every_backends_engines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENSAFE_MICROBATCH_EXAMPLES", "3")
    settings = Settings(data_dir=tmp_path, environment="development")
    assert settings.microbatch_examples == 3
    assert _in_both_backends(settings, lambda e: e.microbatch_examples) == (3, 3)


def test_microbatch_examples_defaults_off_and_is_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings(data_dir=tmp_path).microbatch_examples is None
    monkeypatch.setenv("TENSAFE_MICROBATCH_EXAMPLES", "none")
    assert Settings(data_dir=tmp_path).microbatch_examples is None
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv("TENSAFE_MICROBATCH_EXAMPLES", bad)
        with pytest.raises(ValidationError, match="microbatch_examples"):
            Settings(data_dir=tmp_path)


def test_activation_checkpointing_defaults_off_and_is_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.worker.backends import InProcessBackend
    from tensafe.models.checkpointing import checkpointed_layers

    settings = Settings(data_dir=tmp_path, environment="development")
    assert settings.activation_checkpointing is False
    engine = InProcessBackend(settings).build(run_id="r1", spec=_spec())
    assert engine.activation_checkpointing is False
    assert checkpointed_layers(engine.model) == []
    monkeypatch.setenv("TENSAFE_ACTIVATION_CHECKPOINTING", "sometimes")
    with pytest.raises(ValidationError, match="activation_checkpointing"):
        Settings(data_dir=tmp_path)


@pytest.mark.parametrize(("env", "expected"), [(None, True), ("false", False), ("true", True)])
def test_retain_freed_memory_is_applied_where_every_backend_builds_engines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str | None, expected: bool
) -> None:
    import server.worker.engine_factory as factory

    calls: list[int] = []
    monkeypatch.setattr(factory, "retain_freed_memory", lambda: calls.append(1) or True)
    if env is not None:
        monkeypatch.setenv("TENSAFE_RETAIN_FREED_MEMORY", env)
    settings = Settings(data_dir=tmp_path, environment="development")
    assert settings.retain_freed_memory is expected  # on by default
    _in_both_backends(settings, lambda e: None)
    assert len(calls) == (2 if expected else 0)  # once per engine built, in both backends


def test_retain_freed_memory_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSAFE_RETAIN_FREED_MEMORY", "sometimes")
    with pytest.raises(ValidationError, match="retain_freed_memory"):
        Settings(data_dir=tmp_path)
