"""Server-held datasets: register by streaming records in, read them back, delete.

A registration is three calls: :meth:`DatasetService.create` (a row in status
``uploading``), :meth:`~DatasetService.append` of consecutive batches of records (each
validated, errors naming the record's index in the dataset), and
:meth:`~DatasetService.commit`, which fixes N and the content commitment and makes the
version ``ready`` — immutable from then on.

* **Only ciphertext is stored.** Records are buffered in memory up to one shard (a few
  thousand records or a few million tokens), then sealed as an artifact
  (:mod:`tensafe.artifacts`, AES-256-GCM) under a key of the dataset's own, held by the
  keyring under the owner ``dataset:<id>`` — so memory stays bounded whatever N is, and
  deleting the dataset destroys that key (crypto-shred) along with the blobs.
* **Privacy units** (a patient, a customer) given at upload are mapped to indices 0, 1,
  2, … in order of first appearance with a per-upload random HMAC key; the ids the
  client sent are never stored, not even hashed.
* **Same content, same dataset.** At commit, if the tenant already has a ready dataset
  with the same commitment (:class:`~tensafe.datasets.Commitment`), the new upload is
  discarded and the existing dataset is returned: the same records cannot be given a
  fresh privacy budget under another name. Same name, other content: a new version.
* An upload lives in this process's memory; if the server restarts mid-upload, the
  dataset is marked ``failed`` (:func:`abandon_uploads`) and must be uploaded again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.db.models import DatasetRow, DatasetShardRow, utcnow
from server.db.session import Database
from server.errors import ConflictError, NotFoundError, ValidationError
from server.services import artifacts as artifact_service
from server.storage import ArtifactStore
from tensafe.artifacts import Manifest, TenantKeyring, new_artifact_id
from tensafe.datasets import (
    DEFAULT_SHARD_RECORDS,
    Commitment,
    Record,
    check_schema,
    make_record,
    pack_shard,
)

log = logging.getLogger("tensafe.server.datasets")

#: Tokens buffered before a shard is sealed (bounds upload memory).
SHARD_TOKENS = 2**21
#: Records accepted in one ``append`` call.
MAX_APPEND_RECORDS = 8192
#: Index of the shard that holds a dataset's privacy-unit index.
UNIT_INDEX_SHARD = -1


@dataclass
class _Upload:
    """What an upload needs between ``append`` calls (this process's memory only)."""

    dataset_id: str
    tenant_id: str
    key_owner: str
    with_units: bool
    commitment: Commitment = field(default_factory=Commitment)
    schema: tuple[str, ...] | None = None
    buffer: list[Record] = field(default_factory=list)
    buffer_units: list[int] = field(default_factory=list)
    buffer_tokens: int = 0
    shards: int = 0
    unit_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    unit_index: dict[bytes, int] = field(default_factory=dict)
    unit_of_record: array = field(default_factory=lambda: array("q"))
    last_batch: tuple[int, bytes] | None = None  # (offset, digest) of the last append
    lock: threading.Lock = field(default_factory=threading.Lock)


class DatasetService:
    """Registration, reads and deletion of server-held datasets."""

    def __init__(
        self,
        db: Database,
        store: ArtifactStore,
        keyring: TenantKeyring,
        *,
        shard_records: int = DEFAULT_SHARD_RECORDS,
    ) -> None:
        self.db = db
        self.store = store
        self.keyring = keyring
        self.shard_records = shard_records
        self._uploads: dict[str, _Upload] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- register
    def create(self, *, tenant_id: str, name: str, privacy_units: bool) -> DatasetRow:
        """Start a new version of the dataset ``name`` (status ``uploading``).

        Raises:
            ValidationError: (``name``) empty or longer than 200 characters.
        """
        if not name or len(name) > 200 or "\x00" in name:
            raise ValidationError("must be 1 to 200 characters (no NUL)", field="name")
        dataset_id = "ds_" + secrets.token_hex(12)
        with self.db.transaction() as session:
            version = 1 + (
                session.scalar(
                    select(func.max(DatasetRow.version)).where(
                        DatasetRow.tenant_id == tenant_id, DatasetRow.name == name
                    )
                )
                or 0
            )
            row = DatasetRow(
                dataset_id=dataset_id,
                tenant_id=tenant_id,
                name=name,
                version=version,
                status="uploading",
                privacy_unit="unit" if privacy_units else "record",
                num_records=0,
                key_owner=f"dataset:{dataset_id}",
                size_bytes=0,
                created_at=utcnow(),
            )
            session.add(row)
        upload = _Upload(dataset_id, tenant_id, row.key_owner, with_units=privacy_units)
        with self._lock:
            self._uploads[dataset_id] = upload
        return row

    def append(
        self,
        *,
        tenant_id: str,
        dataset_id: str,
        offset: int,
        records: Sequence[object],
        units: Sequence[str | int] | None,
    ) -> int:
        """Add the records ``offset, offset + 1, …``; returns how many the dataset holds.

        A repeat of the last batch (same offset, same content) is answered again
        without adding anything, so a client may retry.

        Raises:
            NotFoundError: no such dataset of this tenant.
            ConflictError: the dataset is not being uploaded (committed, or the upload
                was lost in a restart); ``offset`` is not the next record's index.
            ValidationError / InvalidBatchError: a bad record (the field names its
                index in the dataset) — nothing of the batch is added.
        """
        upload = self._upload(tenant_id=tenant_id, dataset_id=dataset_id)
        if len(records) > MAX_APPEND_RECORDS:
            raise ValidationError(
                f"at most {MAX_APPEND_RECORDS} records per call, got {len(records)}",
                field="records",
            )
        if (units is None) == upload.with_units:
            raise ValidationError(
                "this dataset was created with privacy units: give one per record"
                if upload.with_units
                else "this dataset was created without privacy units",
                field="units",
            )
        if units is not None and len(units) != len(records):
            raise ValidationError(f"{len(units)} units for {len(records)} records", field="units")
        with upload.lock:
            digest = _batch_digest(records, units)
            if upload.last_batch == (offset, digest):
                return upload.commitment.count
            expected = upload.commitment.count
            if offset != expected:
                raise ConflictError(
                    f"records must arrive in order: the next record is {expected}, "
                    f"this batch starts at {offset}",
                    field="offset",
                )
            checked = [_record(r, index=offset + i) for i, r in enumerate(records)]
            if upload.schema is None and checked:
                upload.schema = tuple(sorted(checked[0].fields))
            for i, record in enumerate(checked):
                check_schema(record, schema=upload.schema or (), index=offset + i)
            for i, unit in enumerate(units or ()):
                if isinstance(unit, bool) or not isinstance(unit, (str, int)):
                    raise ValidationError("must be a string or an integer", field=f"units[{i}]")
            try:  # from here on the batch is added whole, or the upload is failed
                self._add(upload, checked, units)
            except BaseException:
                self._fail(upload)
                raise
            upload.last_batch = (offset, digest)
            return upload.commitment.count

    def commit(self, *, tenant_id: str, dataset_id: str) -> DatasetRow:
        """Seal what is buffered, fix N and the commitment; the version is ``ready``.
        Returns the tenant's existing dataset instead if it has the same content.

        Raises:
            NotFoundError: no such dataset of this tenant.
            ConflictError: not being uploaded.
            ValidationError: (``records``) no records were uploaded.
        """
        upload = self._upload(tenant_id=tenant_id, dataset_id=dataset_id)
        with upload.lock:
            if upload.buffer:
                self._seal_buffer(upload)
            if upload.commitment.count == 0:
                raise ValidationError("a dataset needs at least one record", field="records")
            if upload.with_units:
                self._seal_unit_index(upload)
            commitment = upload.commitment.hexdigest()
            with self.db.transaction() as session:
                existing = session.scalar(
                    select(DatasetRow).where(
                        DatasetRow.tenant_id == tenant_id,
                        DatasetRow.commitment == commitment,
                        DatasetRow.status == "ready",
                    )
                )
                row = session.get(DatasetRow, dataset_id)
                assert row is not None
                if existing is None:
                    row.status = "ready"
                    row.num_records = upload.commitment.count
                    row.num_units = len(upload.unit_index) if upload.with_units else None
                    row.fields = list(upload.schema or ())
                    row.commitment = commitment
                    row.committed_at = utcnow()
                    result = row
                else:
                    row.status = "deleted"  # a duplicate: its shards are shredded below
                    row.deleted_at = utcnow()
                    result = existing
            with self._lock:
                self._uploads.pop(dataset_id, None)
        if existing is not None:
            log.info("dataset %s has the content of %s; discarded", dataset_id, existing.dataset_id)
            self._shred(dataset_id=dataset_id, key_owner=upload.key_owner)
        return result

    # ------------------------------------------------------------------- reads
    def get(self, session: Session, *, tenant_id: str, dataset_id: str) -> DatasetRow:
        """The tenant's dataset (any status but deleted).

        Raises:
            NotFoundError: no such dataset of this tenant (another tenant's id too).
        """
        row = session.get(DatasetRow, dataset_id)
        if row is None or row.tenant_id != tenant_id or row.status == "deleted":
            raise NotFoundError(f"no dataset {dataset_id!r}", field="dataset_id")
        return row

    def list_datasets(self, session: Session, *, tenant_id: str) -> list[DatasetRow]:
        """The tenant's datasets, newest first (deleted ones left out)."""
        return list(
            session.scalars(
                select(DatasetRow)
                .where(DatasetRow.tenant_id == tenant_id, DatasetRow.status != "deleted")
                .order_by(DatasetRow.created_at.desc(), DatasetRow.dataset_id)
            )
        )

    def delete(self, *, tenant_id: str, dataset_id: str) -> DatasetRow:
        """Crypto-shred the dataset: its key is destroyed and its blobs deleted; the row
        stays (status ``deleted``, N and commitment kept) because the ledger names it.

        Raises:
            NotFoundError: no such dataset of this tenant.
        """
        with self.db.transaction() as session:
            row = self.get(session, tenant_id=tenant_id, dataset_id=dataset_id)
            row.status = "deleted"
            row.deleted_at = utcnow()
        with self._lock:
            self._uploads.pop(dataset_id, None)
        self._shred(dataset_id=dataset_id, key_owner=row.key_owner)
        return row

    # ---------------------------------------------------------------- internals
    def _upload(self, *, tenant_id: str, dataset_id: str) -> _Upload:
        with self.db.sessions() as session:
            row = self.get(session, tenant_id=tenant_id, dataset_id=dataset_id)
            status = row.status
        with self._lock:
            upload = self._uploads.get(dataset_id)
        if status != "uploading" or upload is None:
            why = (
                "was committed and is immutable; register a new version instead"
                if status == "ready"
                else "lost its upload (the server restarted); upload it again"
            )
            raise ConflictError(f"dataset {dataset_id} {why}", field="dataset_id")
        return upload

    def _add(
        self, upload: _Upload, records: list[Record], units: Sequence[str | int] | None
    ) -> None:
        for i, record in enumerate(records):
            unit = None if units is None else self._unit(upload, units[i])
            upload.commitment.add(record, unit=unit)
            upload.buffer.append(record)
            upload.buffer_tokens += len(record.tokens)
            if unit is not None:
                upload.buffer_units.append(unit)
                upload.unit_of_record.append(unit)
            if len(upload.buffer) >= self.shard_records or upload.buffer_tokens >= SHARD_TOKENS:
                self._seal_buffer(upload)

    def _fail(self, upload: _Upload) -> None:
        """An upload that broke half way (storage failed) cannot go on: ``failed``."""
        with self._lock:
            self._uploads.pop(upload.dataset_id, None)
        with self.db.transaction() as session:
            row = session.get(DatasetRow, upload.dataset_id)
            if row is not None:
                row.status = "failed"
        log.error("upload of dataset %s failed part way; it must be uploaded again",
                  upload.dataset_id)  # fmt: skip

    @staticmethod
    def _unit(upload: _Upload, unit: str | int) -> int:
        name = hmac.new(upload.unit_key, repr(unit).encode(), hashlib.sha256).digest()
        return upload.unit_index.setdefault(name, len(upload.unit_index))

    def _seal_buffer(self, upload: _Upload) -> None:
        first = upload.commitment.count - len(upload.buffer)
        tensors = pack_shard(
            upload.buffer,
            schema=upload.schema or (),
            units=upload.buffer_units if upload.with_units else None,
        )
        self._seal(upload, index=upload.shards, first=first, count=len(upload.buffer),
                   tensors=tensors)  # fmt: skip
        upload.shards += 1
        upload.buffer, upload.buffer_units, upload.buffer_tokens = [], [], 0

    def _seal_unit_index(self, upload: _Upload) -> None:
        """The records of each unit (CSR: ``unit_offsets``, ``unit_records``)."""
        units = np.frombuffer(upload.unit_of_record, dtype=np.int64)
        order = np.argsort(units, kind="stable")
        counts = np.bincount(units, minlength=len(upload.unit_index))
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        tensors = {"unit_offsets": offsets, "unit_records": order.astype(np.int64)}
        self._seal(upload, index=UNIT_INDEX_SHARD, first=0, count=len(units), tensors=tensors)

    def _seal(self, upload: _Upload, *, index: int, first: int, count: int, tensors: dict) -> None:
        artifact_id = new_artifact_id()
        manifest = Manifest(
            kind="dataset_shard",
            base_model="",
            metadata={"dataset_id": upload.dataset_id, "shard": index, "first_record": first},
        )
        sealed = artifact_service.seal_into_store(
            self.store,
            tensors={k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()},
            manifest=manifest,
            tenant_key=self.keyring.current_key(upload.key_owner),
            artifact_id=artifact_id,
            ttl=None,
        )
        with self.db.transaction() as session:
            session.add(
                DatasetShardRow(
                    dataset_id=upload.dataset_id,
                    index=index,
                    first_record=first,
                    num_records=count,
                    artifact_id=artifact_id,
                    storage_key=artifact_id,
                    content_hash=sealed.stored.content_hash,
                    size_bytes=sealed.stored.size_bytes,
                )
            )
            row = session.get(DatasetRow, upload.dataset_id)
            assert row is not None
            row.size_bytes += sealed.stored.size_bytes

    def _shred(self, *, dataset_id: str, key_owner: str) -> None:
        try:
            self.keyring.destroy_tenant_keys(key_owner)
        except Exception:  # no key yet (nothing sealed)
            log.info("dataset %s had no key to destroy", dataset_id)
        with self.db.sessions() as session:
            keys = list(
                session.scalars(
                    select(DatasetShardRow.storage_key).where(
                        DatasetShardRow.dataset_id == dataset_id
                    )
                )
            )
        for key in keys:
            try:
                self.store.delete(key)
            except Exception:
                log.exception("could not delete shard %s of dataset %s", key, dataset_id)


def _record(value: object, *, index: int) -> Record:
    if not isinstance(value, dict):
        raise ValidationError(
            "must be an object with tokens and optional fields", field=f"records[{index}]"
        )
    unknown = set(value) - {"tokens", "fields"}
    if unknown:
        raise ValidationError(f"unknown key(s) {sorted(unknown)}", field=f"records[{index}]")
    fields = value.get("fields") or {}
    if not isinstance(fields, dict):
        raise ValidationError("must be an object", field=f"records[{index}].fields")
    return make_record(value.get("tokens"), fields, index=index)


def _batch_digest(records: Sequence[object], units: Sequence[object] | None) -> bytes:
    return hashlib.sha256(repr((list(records), units)).encode()).digest()


def abandon_uploads(db: Database) -> list[str]:
    """At start: uploads a previous process left unfinished are ``failed`` (their
    records lived in its memory). Returns their ids."""
    with db.transaction() as session:
        rows = list(session.scalars(select(DatasetRow).where(DatasetRow.status == "uploading")))
        for row in rows:
            row.status = "failed"
        return [row.dataset_id for row in rows]


__all__ = ["MAX_APPEND_RECORDS", "UNIT_INDEX_SHARD", "DatasetService", "abandon_uploads"]
