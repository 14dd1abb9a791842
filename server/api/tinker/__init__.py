"""The Tinker wire protocol of ``tinker==0.38.0`` (``/api/v1``), a second router over
the same services as ``/v1``: an unmodified official client changes ``base_url`` and
API key and gets DP, encrypted checkpoints and the ledger. See ``docs/tinker.md``."""

from fastapi import APIRouter

from server.api.tinker import futures, rest, sampling, service, training

router = APIRouter(prefix="/api/v1")
for _module in (service, training, sampling, futures, rest):
    router.include_router(_module.router)

__all__ = ["router"]
