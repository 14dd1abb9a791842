"""``/v1/datasets``: register a server-held dataset (create, append records, commit),
list, read and delete (crypto-shred) a tenant's datasets. Another tenant's id is 404.

Routes are thin: every rule lives in :mod:`server.services.datasets`.
"""

from __future__ import annotations

from fastapi import APIRouter, status
from starlette.concurrency import run_in_threadpool
from tg_tinker.types import (
    DatasetCreate,
    DatasetInfo,
    DatasetList,
    DatasetProgress,
    DatasetRecords,
)

from server.api.deps import CurrentTenant, DatasetsDep, SessionDep
from server.db.models import DatasetRow

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _info(row: DatasetRow) -> DatasetInfo:
    return DatasetInfo.model_validate(row, from_attributes=True)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetInfo)
def create_dataset(body: DatasetCreate, tenant: CurrentTenant, service: DatasetsDep) -> DatasetInfo:
    """Start registering a dataset: a new version of ``name``, status ``uploading``."""
    return _info(
        service.create(tenant_id=tenant.tenant_id, name=body.name, privacy_units=body.privacy_units)
    )


@router.post("/{dataset_id}/records", response_model=DatasetProgress)
async def append_records(
    dataset_id: str, body: DatasetRecords, tenant: CurrentTenant, service: DatasetsDep
) -> DatasetProgress:
    """Add records ``offset, offset + 1, …`` (validated; a bad record is a 422 naming its
    index in the dataset, and nothing of the batch is added)."""
    received = await run_in_threadpool(
        service.append,
        tenant_id=tenant.tenant_id,
        dataset_id=dataset_id,
        offset=body.offset,
        records=[r.model_dump() for r in body.records],
        units=body.units,
    )
    return DatasetProgress(received=received)


@router.post("/{dataset_id}/commit", response_model=DatasetInfo)
async def commit_dataset(
    dataset_id: str, tenant: CurrentTenant, service: DatasetsDep
) -> DatasetInfo:
    """Fix N and the content commitment: the version is ``ready`` and immutable. If you
    already have a dataset with exactly this content, that one is returned instead."""
    row = await run_in_threadpool(service.commit, tenant_id=tenant.tenant_id, dataset_id=dataset_id)
    return _info(row)


@router.get("", response_model=DatasetList)
def list_datasets(tenant: CurrentTenant, session: SessionDep, service: DatasetsDep) -> DatasetList:
    """Your datasets, newest first."""
    rows = service.list_datasets(session, tenant_id=tenant.tenant_id)
    return DatasetList(datasets=[_info(r) for r in rows])


@router.get("/{dataset_id}", response_model=DatasetInfo)
def get_dataset(
    dataset_id: str, tenant: CurrentTenant, session: SessionDep, service: DatasetsDep
) -> DatasetInfo:
    """One of your datasets."""
    return _info(service.get(session, tenant_id=tenant.tenant_id, dataset_id=dataset_id))


@router.delete("/{dataset_id}", response_model=DatasetInfo)
async def delete_dataset(
    dataset_id: str, tenant: CurrentTenant, service: DatasetsDep
) -> DatasetInfo:
    """Crypto-shred a dataset: its key is destroyed and its sealed shards deleted."""
    row = await run_in_threadpool(service.delete, tenant_id=tenant.tenant_id, dataset_id=dataset_id)
    return _info(row)


__all__ = ["router"]
