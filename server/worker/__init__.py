"""The in-process worker: :mod:`.executor` runs queued operations (it is the handler
of :class:`server.queue.RunQueue`) on each run's engine (:mod:`.runtimes`);
:mod:`.checkpoints` saves and restores them. Wire ↔ engine conversions live in
:mod:`server.services.wire`."""
