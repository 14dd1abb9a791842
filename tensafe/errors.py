"""The one exception tree of the ``tensafe`` package.

Every error raised on purpose by TenSafe derives from :class:`TenSafeError`, and
each class also inherits the standard-library error it refines (a configuration
error is also a :class:`ValueError`), so callers may catch either. All classes are
picklable (they keep their constructor arguments in ``args``), which lets errors
cross process boundaries (worker → server).

``category`` tells the server how to report an error over the wire:
``"user"`` errors are the caller's to fix (4xx), ``"server"`` errors are ours (5xx).
"""

from __future__ import annotations

from typing import ClassVar, Literal

ErrorCategory = Literal["user", "server"]


class TenSafeError(Exception):
    """Root of all TenSafe errors."""

    category: ClassVar[ErrorCategory] = "server"


class ConfigError(TenSafeError, ValueError):
    """A configuration value is invalid. ``field`` names the offending field."""

    category: ClassVar[ErrorCategory] = "user"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidBatchError(ConfigError):
    """A training batch is malformed (ragged, out-of-vocab, NaN weights, empty...).

    ``field`` names the offending input field, e.g. ``"input_ids"`` or
    ``"data[3].loss_fn_inputs.weights"``. Raised before any state is changed.
    """


class ModelLoadError(TenSafeError, OSError):
    """A model could not be resolved or loaded."""

    category: ClassVar[ErrorCategory] = "user"


class PrivacyError(TenSafeError, RuntimeError):
    """A differential-privacy guarantee could not be upheld; the operation was refused."""

    category: ClassVar[ErrorCategory] = "user"


class BudgetExceededError(PrivacyError):
    """The step would push ε past the budget cap; nothing was applied."""


class NonFiniteUpdateError(PrivacyError, ArithmeticError):
    """A gradient or update was not finite (NaN or infinity) and was refused.

    Raised *before* anything changed: weights, optimizer state, accountant, step
    counter and accumulated gradients are as they were, and no privacy step was
    accounted (so nothing may be charged for it).
    """


class EngineStateError(TenSafeError, RuntimeError):
    """An operation is not valid in the engine's current state (e.g. optim_step with
    no accumulated gradients)."""

    category: ClassVar[ErrorCategory] = "user"


class IntegrityError(TenSafeError, ValueError):
    """An artifact failed authentication. Deliberately opaque: it never says which
    check failed or where, and no plaintext is released when it is raised."""

    category: ClassVar[ErrorCategory] = "user"

    def __init__(self, message: str = "artifact integrity check failed") -> None:
        super().__init__(message)


class ArtifactFormatError(TenSafeError, ValueError):
    """The input is not a TenSafe artifact, or uses an unsupported format version.

    Raised only for structural problems detected before any authentication; a
    well-formed blob that fails authentication raises :class:`IntegrityError`.
    """

    category: ClassVar[ErrorCategory] = "user"


class KeyProviderError(TenSafeError, RuntimeError):
    """A key could not be created, unwrapped or found (e.g. crypto-shredded)."""


class StorageError(TenSafeError, OSError):
    """An artifact store operation failed."""


class ArtifactNotFoundError(StorageError, KeyError):
    """No artifact with that id exists in the store."""

    category: ClassVar[ErrorCategory] = "user"

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else "artifact not found"


__all__ = [
    "ArtifactFormatError",
    "ArtifactNotFoundError",
    "BudgetExceededError",
    "ConfigError",
    "EngineStateError",
    "ErrorCategory",
    "IntegrityError",
    "InvalidBatchError",
    "KeyProviderError",
    "ModelLoadError",
    "NonFiniteUpdateError",
    "PrivacyError",
    "StorageError",
    "TenSafeError",
]
