"""The TenSafe training service: FastAPI app, database, worker and artifact storage.

Entry points: :func:`server.app.create_app` (the ASGI app for a :class:`server.settings.Settings`)
and the ``tensafe serve | db | admin`` command groups in :mod:`server.cli`.
Importing this package is cheap; FastAPI, SQLAlchemy and torch load with the modules
that need them.
"""
