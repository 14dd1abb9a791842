"""A run's DP noise is keyed from the OS CSPRNG; only the development switch seeds it."""

from __future__ import annotations

import pytest

from server.context import build_context
from server.db.models import TrainingRunRow

from .harness import run_config


@pytest.mark.parametrize(
    ("environment", "deterministic_noise"),
    [("production", False), ("development", False), ("development", True)],
)
def test_only_the_development_switch_seeds_the_noise_from_the_run_seed(
    make_settings, environment, deterministic_noise
):
    settings = make_settings(environment=environment, deterministic_noise=deterministic_noise)
    context = build_context(settings)
    try:
        # the run seed comes from the client's TrainingConfig
        run = TrainingRunRow(run_id="r", config=run_config(seed=1234))
        noise = context.executor.engines.build(run).engine.dp.noise
    finally:
        context.db.dispose()
    assert noise.deterministic is deterministic_noise
    if deterministic_noise:
        assert noise.state_dict() == {"noise_seed": 1234, "calls": 0}
    else:
        assert noise.state_dict() == {}  # a secret key, never exported
