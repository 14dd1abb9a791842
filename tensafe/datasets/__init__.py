"""Server-held datasets: validated records, encrypted shards, a content commitment,
and Poisson sampling from the OS CSPRNG (the server, not the client, draws batches)."""

from tensafe.datasets.commitment import Commitment
from tensafe.datasets.records import FIELD_DTYPES, MAX_RECORD_TOKENS, Record, make_record
from tensafe.datasets.sampling import (
    SecureUniforms,
    SeededUniforms,
    UniformSource,
    draw_units,
    poisson_sample,
)
from tensafe.datasets.shards import (
    DEFAULT_SHARD_RECORDS,
    Shard,
    check_schema,
    open_shard,
    pack_shard,
)

__all__ = [
    "DEFAULT_SHARD_RECORDS",
    "FIELD_DTYPES",
    "MAX_RECORD_TOKENS",
    "Commitment",
    "Record",
    "SecureUniforms",
    "SeededUniforms",
    "Shard",
    "UniformSource",
    "check_schema",
    "draw_units",
    "make_record",
    "open_shard",
    "pack_shard",
    "poisson_sample",
]
