"""Persistence: SQLAlchemy models (:mod:`.models`), engine and sessions (:mod:`.session`),
Alembic migrations (:mod:`.migrate`; the scripts are in the top-level ``migrations/`` folder
and ship in the wheel as ``server.migrations``)."""
