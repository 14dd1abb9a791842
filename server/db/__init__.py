"""Persistence: SQLAlchemy models (:mod:`.models`), engine and sessions (:mod:`.session`),
Alembic migrations (:mod:`.migrate`, scripts in the repository's ``migrations/``)."""
