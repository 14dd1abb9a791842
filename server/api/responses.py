"""The error responses every API route documents in the OpenAPI document.

Every error answer has the same body, :class:`~tg_tinker.types.ErrorBody`; the app
factory attaches these to each router, so the published contract lists the statuses
the server really sends (authentication, scopes, unknown ids, state conflicts, body
limits, validation, rate limits, server errors).
"""

from __future__ import annotations

from typing import Any

from tg_tinker.types import ErrorBody

_DESCRIPTIONS = {
    400: "The request body is not parseable (malformed JSON or encoding).",
    401: "Missing, malformed, unknown or revoked API key.",
    403: "The API key lacks the scope this route needs.",
    404: "No such object for this tenant (also another tenant's id).",
    408: "The request body did not arrive in time.",
    409: "Not valid in the current state (budget exceeded, name taken, capacity).",
    410: "The operation's result was purged after the retention period.",
    413: "The request body is above this route's limit.",
    422: "Invalid request; `field` names the offending field.",
    429: "Too many requests from this tenant; retry after `Retry-After` seconds.",
    500: "Internal error; nothing about internals is revealed.",
    503: "The server is shutting down or not ready.",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in _DESCRIPTIONS.items()
}
ERROR_RESPONSES[429]["headers"] = {
    "Retry-After": {
        "description": "Seconds to wait before the next request.",
        "schema": {"type": "integer", "minimum": 1},
    }
}

__all__ = ["ERROR_RESPONSES"]
