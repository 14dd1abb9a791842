"""Everything a running server holds, built from :class:`~server.settings.Settings`.

:func:`build_context` creates the objects (database engine, keyring, artifact store,
queue, worker) without starting anything; :meth:`ServerContext.start` migrates the
database, fails operations a previous process left unfinished, starts the worker
threads and the expiry sweeper; :meth:`ServerContext.stop` undoes that.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from server.data_dirs import tighten_data_dirs
from server.db.migrate import upgrade_database
from server.db.session import Database
from server.queue import FutureNotifier, RunQueue
from server.services import artifacts as artifact_service
from server.services.datasets import abandon_uploads
from server.services.keys import build_keyring
from server.services.legacy_dp_steps import carry_over_legacy_dp_steps
from server.services.operations import fail_interrupted, purge_results
from server.services.sample_futures import SampleFutures
from server.services.tenants import ApiKeyHasher, build_hasher
from server.settings import Settings
from server.storage import ArtifactStore, LocalArtifactStore, S3ArtifactStore
from server.worker.executor import OperationExecutor
from server.worker.sampling_backend import SamplingWorker
from tensafe.artifacts import TenantKeyring

log = logging.getLogger("tensafe.server")


def build_store(settings: Settings) -> ArtifactStore:
    """The artifact store the settings name (a local directory by default)."""
    if settings.storage_backend == "s3":
        assert settings.s3_bucket is not None
        return S3ArtifactStore(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
        )
    return LocalArtifactStore(settings.resolved_artifact_dir())


@dataclass
class ServerContext:
    """The server's long-lived objects (one per app)."""

    settings: Settings
    db: Database
    hasher: ApiKeyHasher
    keyring: TenantKeyring
    store: ArtifactStore
    notifier: FutureNotifier
    executor: OperationExecutor
    queue: RunQueue
    sampling: SamplingWorker
    sample_futures: SampleFutures
    _stop_sweeper: threading.Event = field(default_factory=threading.Event)
    _sweeper: threading.Thread | None = None
    started: bool = False

    def start(self) -> None:
        """Migrate (if ``auto_migrate``), recover, start worker and sweeper. Idempotent."""
        if self.started:
            return
        if self.settings.auto_migrate:
            upgrade_database(self.db.url)
        carry_over_legacy_dp_steps(self.db, self.executor.budgets)
        lost = abandon_uploads(self.db)
        if lost:
            log.warning(
                "%d dataset upload(s) interrupted by the previous shutdown failed", len(lost)
            )
        failed = fail_interrupted(self.db)
        if failed:
            log.warning(
                "%d operation(s) interrupted by the previous shutdown were failed", len(failed)
            )
        if self.settings.worker_backend != "inprocess":
            # connect to the Ray cluster (or start a local one) now: a bad address fails
            # the start instead of the first run's load
            log.info("worker backend: %s", self.executor.engines.backend.name)
        self.queue.start()
        self._stop_sweeper.clear()
        self._sweeper = threading.Thread(
            target=self._sweep_loop, name="tensafe-sweeper", daemon=True
        )
        self._sweeper.start()
        self.started = True

    def stop(self, *, timeout: float = 30.0) -> None:
        """Stop the sweeper and the worker (running operations finish first)."""
        self._stop_sweeper.set()
        self.queue.stop(timeout=timeout)
        self.sampling.stop()
        self.executor.engines.close()
        if self._sweeper is not None:
            self._sweeper.join(timeout)
        self.db.dispose()
        self.started = False

    def sweep_now(self) -> int:
        """Purge expired artifacts now; returns how many rows were removed."""
        return artifact_service.sweep_expired(self.db, self.store)

    def purge_results_now(self) -> int:
        """Purge operation results older than ``result_ttl_s``; returns how many."""
        ttl = self.settings.result_ttl_s
        if ttl is None:
            return 0
        return purge_results(self.db, older_than=timedelta(seconds=ttl))

    def _sweep_loop(self) -> None:
        while not self._stop_sweeper.is_set():
            for what, sweep in (
                ("expired artifact", self.sweep_now),
                ("result", self.purge_results_now),
            ):
                try:
                    removed = sweep()
                    if removed:
                        log.info("purged %d %s(s)", removed, what)
                except Exception:
                    log.exception("%s sweep failed", what)
            self._stop_sweeper.wait(self.settings.sweep_interval_s)


def build_context(settings: Settings) -> ServerContext:
    """Create the server's objects from settings; starts nothing.

    Raises:
        KeyProviderError: the keyring is not private / malformed, or the KEK variable is missing.
        PermissionError: the pepper file is readable by others.
    """
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tighten_data_dirs(settings)  # an existing 0755 directory becomes 0700
    db = Database(settings.resolved_database_url())
    keyring = build_keyring(settings, db)
    store = build_store(settings)
    notifier = FutureNotifier()
    executor = OperationExecutor(
        db=db, store=store, keyring=keyring, notifier=notifier, settings=settings
    )
    queue = RunQueue(handler=executor.execute, threads=settings.worker_threads)
    sampling = SamplingWorker(
        engines=executor.engines, db=db, store=store, keyring=keyring, settings=settings
    )
    retention = settings.result_ttl_s if settings.result_ttl_s is not None else 3600.0
    return ServerContext(
        settings=settings,
        db=db,
        hasher=build_hasher(settings),
        keyring=keyring,
        store=store,
        notifier=notifier,
        executor=executor,
        queue=queue,
        sampling=sampling,
        sample_futures=SampleFutures(notifier=notifier, retention_s=min(retention, 3600.0)),
    )


__all__ = ["ServerContext", "build_context", "build_store"]
