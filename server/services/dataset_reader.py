"""Reading a ready server-held dataset's records back, for a run's drawn batches.

Shards are decrypted and verified (:mod:`tensafe.artifacts`) only into worker memory,
on first use, and kept in a small cache (least recently used out): a step's drawn
records mostly fall in shards already open, so a step decrypts little or nothing.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from sqlalchemy import select

from server.db.models import DatasetRow, DatasetShardRow
from server.db.session import Database
from server.errors import ConflictError, NotFoundError
from server.storage import ArtifactStore
from tensafe.artifacts import TenantKeyring, open_checkpoint
from tensafe.datasets import Record, Shard, open_shard

#: Shards kept decrypted per dataset reader.
CACHED_SHARDS = 8
_UNIT_INDEX = -1


class DatasetReader:
    """Records of one ready dataset version, by index (thread-safe).

    Raises (from the constructor):
        NotFoundError: no such dataset of this tenant.
        ConflictError: the dataset is not ready (still uploading, failed, deleted).
    """

    def __init__(
        self,
        db: Database,
        store: ArtifactStore,
        keyring: TenantKeyring,
        *,
        tenant_id: str,
        dataset_id: str,
        cached_shards: int = CACHED_SHARDS,
    ) -> None:
        with db.sessions() as session:
            row = session.get(DatasetRow, dataset_id)
            if row is None or row.tenant_id != tenant_id:
                raise NotFoundError(f"no dataset {dataset_id!r}", field="dataset_id")
            if row.status != "ready":
                raise ConflictError(
                    f"dataset {dataset_id} is {row.status}, not ready", field="dataset_id"
                )
            shards = list(
                session.scalars(
                    select(DatasetShardRow)
                    .where(DatasetShardRow.dataset_id == dataset_id)
                    .order_by(DatasetShardRow.index)
                )
            )
            session.expunge_all()
        self.dataset = row
        self._store, self._keyring = store, keyring
        self._unit_shard = next((s for s in shards if s.index == _UNIT_INDEX), None)
        self._shards = [s for s in shards if s.index != _UNIT_INDEX]
        self._starts = [s.first_record for s in self._shards]
        self._cache: OrderedDict[int, Shard] = OrderedDict()
        self._capacity = cached_shards
        self._unit_records: list[np.ndarray] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.dataset.num_records

    def records(self, indices: Sequence[int]) -> list[Record]:
        """The records at ``indices`` (each decrypted shard once).

        Raises:
            IndexError: an index outside ``[0, N)``.
        """
        out = []
        for i in indices:
            if not 0 <= i < len(self):
                raise IndexError(f"record {i} is outside the dataset [0, {len(self)})")
            where = bisect.bisect_right(self._starts, i) - 1
            shard = self._shard(where)
            out.append(shard.record(i - self._shards[where].first_record))
        return out

    def unit_records(self) -> list[np.ndarray]:
        """For each privacy unit, the indices of its records.

        Raises:
            ConflictError: the dataset has no privacy units.
        """
        if self._unit_shard is None:
            raise ConflictError(
                f"dataset {self.dataset.dataset_id} has no privacy units", field="dataset_id"
            )
        with self._lock:
            if self._unit_records is None:
                tensors = self._open(self._unit_shard)
                offsets, records = tensors["unit_offsets"], tensors["unit_records"]
                self._unit_records = [
                    records[offsets[u] : offsets[u + 1]] for u in range(len(offsets) - 1)
                ]
            return self._unit_records

    def _shard(self, where: int) -> Shard:
        with self._lock:
            shard = self._cache.get(where)
            if shard is not None:
                self._cache.move_to_end(where)
                return shard
        shard = open_shard(self._open(self._shards[where]))
        with self._lock:
            self._cache[where] = shard
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return shard

    def _open(self, row: DatasetShardRow) -> dict[str, np.ndarray]:
        with self._store.get(row.storage_key) as source:
            opened = open_checkpoint(
                source,
                keys=self._keyring,
                tenant_id=self.dataset.key_owner,
                artifact_id=row.artifact_id,
                expected_content_hash=row.content_hash,
            )
        return {name: tensor.numpy() for name, tensor in opened.tensors.items()}


__all__ = ["DatasetReader"]
