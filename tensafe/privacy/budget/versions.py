"""What computed a recorded ε: the versions a ledger row stamps next to it."""

from __future__ import annotations

import importlib.metadata
import platform

from tensafe.privacy.schedule import EpsilonSchedule

#: Libraries whose versions shape a recorded ε (read from package metadata).
ACCOUNTING_LIBRARIES: tuple[str, ...] = ("tensafe", "opacus", "numpy", "scipy")


def accounting_versions(schedule: EpsilonSchedule) -> dict[str, str]:
    """What computed a recorded ε: library versions, Python, and the schedule's rule.

    Keys: the installed :data:`ACCOUNTING_LIBRARIES`, ``"python"``, and
    ``"epsilon_schedule"`` (:attr:`EpsilonSchedule.spec`), which a replay needs to
    reproduce conservative values exactly. Meant for the ledger's
    ``library_versions``.
    """
    versions: dict[str, str] = {}
    for name in ACCOUNTING_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    versions["python"] = platform.python_version()
    versions["epsilon_schedule"] = schedule.spec
    return versions


__all__ = ["ACCOUNTING_LIBRARIES", "accounting_versions"]
