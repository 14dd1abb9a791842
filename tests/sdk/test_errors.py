"""The SDK exception tree: stdlib bases, pickling, and mapping server errors back."""

from __future__ import annotations

import concurrent.futures
import pickle

import pytest
import tg_tinker
from tg_tinker import errors
from tg_tinker.errors import error_class, error_from_body
from tg_tinker.types import ErrorBody

ALL = [
    errors.TGTinkerError,
    errors.AuthenticationError,
    errors.PermissionDeniedError,
    errors.NotFoundError,
    errors.ValidationError,
    errors.ConflictError,
    errors.BudgetExceededError,
    errors.RateLimitError,
    errors.ServerError,
    errors.WorkerLostError,
    errors.APIConnectionError,
    errors.FutureTimeoutError,
    errors.FutureCancelledError,
    errors.ArtifactIntegrityError,
]


@pytest.mark.parametrize("cls", ALL)
def test_every_error_pickles_with_its_attributes(cls):
    err = cls("went wrong", field="data[0]", status_code=418, error_name="Teapot", category="user")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.message, back.field, back.status_code, back.error_name, back.category) == (
        "went wrong",
        "data[0]",
        418,
        "Teapot",
        "user",
    )
    assert str(back) == "data[0]: went wrong"
    assert isinstance(back, tg_tinker.TGTinkerError)


def test_rate_limit_error_keeps_retry_after_through_pickle():
    back = pickle.loads(pickle.dumps(errors.RateLimitError("slow down", retry_after=2.5)))
    assert back.retry_after == 2.5


@pytest.mark.parametrize(
    ("cls", "stdlib"),
    [
        (errors.ValidationError, ValueError),
        (errors.NotFoundError, LookupError),
        (errors.FutureTimeoutError, TimeoutError),
        (errors.APIConnectionError, ConnectionError),
        (errors.FutureCancelledError, concurrent.futures.CancelledError),
        (errors.ArtifactIntegrityError, ValueError),
        (errors.ConflictError, RuntimeError),
        (errors.BudgetExceededError, RuntimeError),
    ],
)
def test_errors_also_are_the_stdlib_error_they_refine(cls, stdlib):
    assert issubclass(cls, stdlib)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ValidationError", errors.ValidationError),
        ("InvalidBatchError", errors.ValidationError),
        ("ConfigError", errors.ValidationError),
        ("BudgetExceededError", errors.BudgetExceededError),
        ("NotFoundError", errors.NotFoundError),
        ("ArtifactNotFoundError", errors.NotFoundError),
        ("EngineStateError", errors.ConflictError),
        ("AuthenticationError", errors.AuthenticationError),
        ("PermissionDeniedError", errors.PermissionDeniedError),
        ("RateLimitError", errors.RateLimitError),
        ("ServerError", errors.ServerError),
        ("IntegrityError", errors.ArtifactIntegrityError),
        ("WorkerLostError", errors.WorkerLostError),
    ],
)
def test_server_error_names_map_to_the_same_class(name, expected):
    # The status code disagrees on purpose: the name wins.
    err = error_from_body(
        ErrorBody(error=name, category="user", detail="d", field="f"), status_code=400
    )
    assert type(err) is expected
    assert err.error_name == name
    assert err.field == "f"
    assert err.status_code == 400


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, errors.ValidationError),
        (401, errors.AuthenticationError),
        (403, errors.AuthenticationError),
        (404, errors.NotFoundError),
        (409, errors.ConflictError),
        (413, errors.ValidationError),
        (422, errors.ValidationError),
        (429, errors.RateLimitError),
        (500, errors.ServerError),
        (503, errors.ServerError),
        (418, errors.TGTinkerError),
    ],
)
def test_unknown_names_fall_back_on_the_status_code(status, expected):
    assert error_class("SomethingNew", status) is expected


def test_without_status_the_category_decides():
    assert error_class("SomethingNew", None, "server") is errors.ServerError
    assert error_class("SomethingNew", None, "user") is errors.TGTinkerError


def test_permission_denied_is_still_an_authentication_error():
    """A 403 for a missing scope; existing ``except AuthenticationError`` and
    ``except PermissionError`` still catch it."""
    assert issubclass(errors.PermissionDeniedError, errors.AuthenticationError)
    assert issubclass(errors.PermissionDeniedError, PermissionError)
    assert tg_tinker.PermissionDeniedError is errors.PermissionDeniedError


def test_a_lost_worker_is_a_retryable_server_error_from_a_failed_future():
    """The server's 503 ``WorkerLostError`` (a dead or hung Ray actor) arrives as a failed
    future's body, without a status code: its own class, still caught as a ServerError
    (and RuntimeError), exported at the top level."""
    body = ErrorBody(error="WorkerLostError", category="server", detail="Retry it", field=None)
    err = error_from_body(body)
    assert type(err) is errors.WorkerLostError
    assert isinstance(err, errors.ServerError) and isinstance(err, RuntimeError)
    assert tg_tinker.WorkerLostError is errors.WorkerLostError
    assert error_class("ServiceUnavailableError", 503) is errors.ServerError  # unchanged
