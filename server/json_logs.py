"""Structured logs: one JSON object per line, with the request id of the request being served.

What is never logged: API keys (the ``Authorization`` header is not read here),
tenant keys, request or response bodies (batches, results). Ids — request, tenant,
run, future, artifact — are logged; they are not secrets.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# Mutable per-request context: the middleware sets a fresh dict, the auth
# dependency adds the tenant (dependencies may run in another thread, so the
# dict is shared rather than the variable re-set).
request_context: ContextVar[dict[str, str] | None] = ContextVar("request_context", default=None)

_EXTRA_FIELDS = (
    "run_id",
    "future_id",
    "artifact_id",
    "tenant_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "operation",
)


class JsonFormatter(logging.Formatter):
    """Format records as JSON lines: ``ts``, ``level``, ``logger``, ``msg``,
    ``request_id`` / ``tenant_id`` when serving a request, known extras, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        context = request_context.get()
        if context:
            entry.update(context)
        for name in _EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(*, level: str = "INFO", json_lines: bool = True) -> None:
    """Send every log record to stderr (JSON lines by default); idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_tensafe", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._tensafe = True  # type: ignore[attr-defined]
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    # our request log replaces uvicorn's access log (which would log query strings)
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


__all__ = ["JsonFormatter", "configure_logging", "request_context"]
