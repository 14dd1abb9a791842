"""Persistence: SQLAlchemy models (:mod:`.models`), engine and sessions (:mod:`.session`),
Alembic migrations (:mod:`.migrate`; the scripts are in ``server/db/migrations/`` and ship
with the package)."""
