"""What an operation handler returns to the executor (:mod:`server.worker.executor`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session

from server.db.models import TrainingRunRow

Effects = Callable[[Session, TrainingRunRow], None]
Request = dict[str, Any] | None


@dataclass(frozen=True)
class Outcome:
    """What a handler produced: the result, DB effects to commit with it, and
    whether the engine changed (so a failed commit must discard it)."""

    result: BaseModel
    effects: Effects | None = None
    engine_changed: bool = False
    on_commit_failure: Callable[[], None] | None = None
    committed: bool = False  # the handler already committed result and effects


__all__ = ["Effects", "Outcome", "Request"]
