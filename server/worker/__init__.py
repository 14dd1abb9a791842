"""The in-process worker: :mod:`.queue` orders operations per run, :mod:`.executor`
runs them on each run's engine, :mod:`.notify` wakes long polls, :mod:`.checkpoints`
and :mod:`.conversions` translate between the wire and the engine."""
