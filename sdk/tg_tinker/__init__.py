"""tg_tinker: the TenSafe client SDK (Tinker-style).

Drive DP-SGD fine-tuning on a TenSafe server from your own machine::

    from tg_tinker import ServiceClient

    service = ServiceClient()  # $TG_TINKER_BASE_URL, $TG_TINKER_API_KEY
    tc = service.create_lora_training_client("smollm2-135m-instruct", rank=8)
    out = tc.forward_backward(batch).result()
    step = tc.optim_step().result()

Every training and sampling operation returns an :class:`APIFuture`; every method
has an ``_async`` twin. Sample from the weights you train with a
:class:`SamplingClient` (``tc.save_weights_and_get_sampling_client()``,
``service.create_sampling_client(model_path=...|base_model=...|run_id=...)``).
Wire types live in :mod:`tg_tinker.types` and :mod:`tg_tinker.sampling_types`, data
helpers (the Poisson batch sampler) in :mod:`tg_tinker.data`. See ``docs/sdk.md``.

The SDK needs only httpx, pydantic, numpy and cryptography; importing it never
imports torch or transformers (``get_tokenizer()`` imports transformers lazily).
"""

from __future__ import annotations

from tg_tinker import data as data
from tg_tinker import sampling_types as sampling_types
from tg_tinker import types as types
from tg_tinker._version import __version__
from tg_tinker.downloads import PulledArtifact
from tg_tinker.errors import (
    APIConnectionError,
    ArtifactIntegrityError,
    AuthenticationError,
    BudgetExceededError,
    ConflictError,
    FutureCancelledError,
    FutureTimeoutError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TGTinkerError,
    ValidationError,
    WorkerLostError,
)
from tg_tinker.futures import APIFuture
from tg_tinker.sampling_client import SamplingClient
from tg_tinker.sampling_types import SampleResponse, SamplingParams
from tg_tinker.service_client import ServiceClient
from tg_tinker.training_client import TrainingClient
from tg_tinker.types import (
    AdamParams,
    ArtifactInfo,
    BatchData,
    Datum,
    DPConfig,
    DPMetrics,
    ForwardBackwardOutput,
    GetInfoResponse,
    LoadStateResponse,
    LoRAConfig,
    LossFnOutput,
    ModelInput,
    OptimizerConfig,
    OptimStepResponse,
    SaveStateResponse,
    SaveWeightsForSamplerResponse,
    TensorData,
    TrainingConfig,
    TrainingRun,
    UnloadModelResponse,
)

__all__ = [
    "APIConnectionError",
    "APIFuture",
    "AdamParams",
    "ArtifactInfo",
    "ArtifactIntegrityError",
    "AuthenticationError",
    "BatchData",
    "BudgetExceededError",
    "ConflictError",
    "DPConfig",
    "DPMetrics",
    "Datum",
    "ForwardBackwardOutput",
    "FutureCancelledError",
    "FutureTimeoutError",
    "GetInfoResponse",
    "LoRAConfig",
    "LoadStateResponse",
    "LossFnOutput",
    "ModelInput",
    "NotFoundError",
    "OptimStepResponse",
    "OptimizerConfig",
    "PermissionDeniedError",
    "PulledArtifact",
    "RateLimitError",
    "SampleResponse",
    "SamplingClient",
    "SamplingParams",
    "SaveStateResponse",
    "SaveWeightsForSamplerResponse",
    "ServerError",
    "ServiceClient",
    "TGTinkerError",
    "TensorData",
    "TrainingClient",
    "TrainingConfig",
    "TrainingRun",
    "UnloadModelResponse",
    "ValidationError",
    "WorkerLostError",
    "__version__",
]
