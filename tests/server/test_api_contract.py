"""The API matches its OpenAPI document: a bounded schemathesis run over every operation
(generated requests, then the stateful phase that chains them through the links it
infers) finds no server error and no response outside the documented statuses and
schemas.

The budget is fixed (examples per operation, steps per scenario, derandomized), so the
run is the same on every machine and fits CI (well under a minute).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from server.context import build_context
from server.services.scopes import ADMIN
from server.settings import Settings

from .harness import Harness

#: What the bar is: no 5xx, only documented statuses, content types, headers and bodies.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 15
STATEFUL_SCENARIOS = 15
BUDGET = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def contract_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    settings_ = Settings(
        environment="development",
        data_dir=Path(tmp_path_factory.mktemp("contract")) / "data",
        worker_threads=1,
        sweep_interval_s=3600,
        default_epsilon_cap=100.0,
        rate_limit_per_s=None,  # the fuzzer is one tenant sending as fast as it can
        max_batch_size=8,
        max_seq_len=32,
        max_tokens_per_batch=128,
    )
    context = build_context(settings_)
    app = create_app(settings_, context=context)
    with TestClient(app) as client:
        harness = Harness(client, context)
        headers = harness.tenant(scopes=(ADMIN,))
        yield app, headers["Authorization"]


@pytest.fixture(scope="module")
def contract_schema(contract_server: tuple[Any, str]) -> Any:
    app, _key = contract_server
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture
def auth_headers(contract_server: tuple[Any, str]) -> dict[str, str]:
    return {"Authorization": contract_server[1]}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_matches_the_document(
    contract_schema: Any, auth_headers: dict[str, str], mode: GenerationMode
) -> None:
    """Valid requests (positive) and requests that break the schema (negative), a fixed
    number per operation: every answer is documented, none is a 5xx."""
    failures: list[str] = []
    calls: list[str] = []
    nothing_to_break: list[str] = []
    operations = [result.ok() for result in contract_schema.get_all_operations()]
    assert len(operations) >= 25
    for operation in operations:

        @BUDGET
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            calls.append(case.operation.label)
            case.call_and_validate(headers=auth_headers, checks=CHECKS)

        try:
            check()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to break (no parameters)
            nothing_to_break.append(operation.label)
        except Exception as exc:  # collected: one report of every failing operation
            failures.append(f"{operation.label}: {exc}")
    print(f"{mode.value}: {len(calls)} requests over {len(set(calls))} operations")
    print(f"no parameter to break: {sorted(nothing_to_break)}")
    assert failures == []
    # every operation was exercised, except (negative mode) those without parameters
    assert set(calls) | set(nothing_to_break) == {op.label for op in operations}
    assert len(calls) >= 10 * (len(operations) - len(nothing_to_break))


def test_stateful_sequences_match_the_document(
    contract_schema: Any, auth_headers: dict[str, str]
) -> None:
    machine = contract_schema.as_state_machine()

    steps: list[str] = []

    class Workflow(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            steps.append(case.operation.label)
            return {"headers": auth_headers}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    Workflow.run(
        settings=settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    print(f"stateful: {len(steps)} requests over {len(set(steps))} operations")
    assert len(steps) >= STATEFUL_SCENARIOS
