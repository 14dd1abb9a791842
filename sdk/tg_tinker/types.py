"""Wire types shared by the SDK and the server: one pydantic model per message.

These models *are* the protocol (see ``docs/protocol.md``): the server validates
requests with them and the SDK parses responses with them. Field names follow
the Tinker SDK and the TenSafe training guide.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DType = Literal["int64", "int32", "float32", "float64"]

#: The loss functions the server implements (``tensafe.losses.LOSS_FUNCTIONS``; a test
#: keeps the two in step). ``loss_fn_config`` keys depend on the loss (``ppo``,
#: ``cispo``: ``clip_low_threshold``, ``clip_high_threshold``; ``dro``: ``beta``). Each
#: example's loss is the weighted mean of its token losses; the ``_sum`` names use
#: Tinker's convention instead (weighted sum, weights may be negative).
LossFnName = Literal[
    "cross_entropy",
    "importance_sampling",
    "ppo",
    "cispo",
    "dro",
    "cross_entropy_sum",
    "importance_sampling_sum",
    "ppo_sum",
    "cispo_sum",
    "dro_sum",
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __str__(self) -> str:  # print(result) shows ``Name(field=...)`` as in the reference docs
        return repr(self)


# ----------------------------------------------------------------- tensors
class TensorData(_Wire):
    """A flat list of numbers with a dtype and shape (Tinker's TensorData)."""

    data: list[float] | list[int]
    dtype: DType
    shape: list[int]

    @model_validator(mode="after")
    def _check_size(self) -> TensorData:
        n = 1
        for d in self.shape:
            if d < 0:
                raise ValueError("shape entries must be non-negative")
            n *= d
        if n != len(self.data):
            raise ValueError(f"shape {self.shape} needs {n} values, got {len(self.data)}")
        return self

    @classmethod
    def from_numpy(cls, array: np.ndarray) -> TensorData:
        """Wrap a numpy array (int arrays become int64, floats float32 unless float64)."""
        arr = np.asarray(array)
        if np.issubdtype(arr.dtype, np.integer):
            dtype: DType = "int64"
        elif arr.dtype == np.float64:
            dtype = "float64"
        else:
            dtype = "float32"
        return cls(data=arr.reshape(-1).tolist(), dtype=dtype, shape=list(arr.shape))

    def to_numpy(self) -> np.ndarray:
        """The data as a numpy array of this dtype and shape."""
        return np.asarray(self.data, dtype=self.dtype).reshape(self.shape)

    def tolist(self) -> list[Any]:
        return self.to_numpy().tolist()


class EncodedTextChunk(_Wire):
    """A run of token ids."""

    tokens: list[int]
    type: Literal["encoded_text"] = "encoded_text"


class ModelInput(_Wire):
    """Model input as a list of chunks (only encoded text is supported)."""

    chunks: list[EncodedTextChunk]

    @classmethod
    def from_ints(cls, tokens: list[int]) -> ModelInput:
        return cls(chunks=[EncodedTextChunk(tokens=[int(t) for t in tokens])])

    def to_ints(self) -> list[int]:
        return [t for c in self.chunks for t in c.tokens]

    @property
    def length(self) -> int:
        return sum(len(c.tokens) for c in self.chunks)


class Datum(_Wire):
    """One training example: input tokens and per-token loss inputs
    (``target_tokens``, ``weights``; ``logprobs`` and ``advantages`` for RL losses).

    ``record_id`` (runs on a server-held dataset only): the drawn record this datum
    belongs to — e.g. one of several completions of a drawn prompt. All datums of one
    record (of one privacy unit, with units) are clipped together as one contribution.
    """

    model_input: ModelInput
    loss_fn_inputs: dict[str, TensorData]
    record_id: int | None = Field(None, ge=0)

    # SDK convenience (added): ``model_input`` may be a plain token list, and each
    # ``loss_fn_inputs`` value a numpy array, a list, or anything with ``__array__``
    # (a CPU torch tensor); they are wrapped into ModelInput / TensorData here.
    @field_validator("model_input", mode="before")
    @classmethod
    def _wrap_tokens(cls, value: object) -> object:
        if isinstance(value, (list, tuple, np.ndarray)):
            arr = np.asarray(value)
            if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
                raise ValueError("model_input must be a 1-D sequence of integer token ids")
            return ModelInput.from_ints(arr.tolist())
        return value

    @field_validator("loss_fn_inputs", mode="before")
    @classmethod
    def _wrap_tensors(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: _as_tensor_data(v) for k, v in value.items()}
        return value


def _as_tensor_data(value: object) -> object:
    """Array-likes become TensorData; TensorData and dicts are left to pydantic.

    Python lists of floats become float32 (Tinker's default); numpy arrays keep
    their dtype as in :meth:`TensorData.from_numpy`; booleans become float32.
    """
    if isinstance(value, (TensorData, dict)):
        return value
    if isinstance(value, (list, tuple)):
        arr = np.asarray(value)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
    elif isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        arr = np.asarray(value)
    else:
        return value
    if arr.dtype.kind == "b":
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"cannot send an array of dtype {arr.dtype} (need integers or floats)")
    return TensorData.from_numpy(arr)


def _as_rows(value: object) -> object:
    """A 2-D array-like (numpy array, torch tensor, list of arrays) as nested lists."""
    if isinstance(value, (list, tuple)):
        return [row if isinstance(row, list) else np.asarray(row).tolist() for row in value]
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    return value


class BatchData(_Wire):
    """A padded batch in Hugging Face form; ``labels`` are aligned targets with
    ``-100`` for ignored positions (``labels[t]`` is predicted at position ``t``).

    Each field also accepts a 2-D numpy array or tensor (SDK convenience)."""

    input_ids: list[list[int]]
    attention_mask: list[list[int]] | None = None
    labels: list[list[int]] | None = None

    @field_validator("input_ids", "attention_mask", "labels", mode="before")
    @classmethod
    def _rows(cls, value: object) -> object:
        return _as_rows(value)


# ----------------------------------------------------------------- configs
class LoRAConfig(_Wire):
    """LoRA adapter settings (see the training guide)."""

    rank: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = False


class OptimizerConfig(_Wire):
    """The run's optimizer: ``adamw`` (default), ``adam``, ``sgd``, ``adafactor``."""

    name: Literal["adamw", "adam", "sgd", "adafactor"] = "adamw"
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)


class DPConfig(_Wire):
    """Differential-privacy settings. Give ``noise_multiplier`` or
    ``target_epsilon`` (+ ``planned_steps``), the dataset size, and
    ``sample_rate`` or ``expected_batch_size``."""

    enabled: bool = True
    max_grad_norm: float = Field(1.0, gt=0)
    noise_multiplier: float | None = Field(None, ge=0)
    target_epsilon: float | None = Field(None, gt=0)
    target_delta: float | None = Field(None, gt=0, lt=1)
    planned_steps: int | None = Field(None, gt=0)
    dataset_size: int | None = Field(None, gt=0)
    sample_rate: float | None = Field(None, gt=0, le=1)
    expected_batch_size: int | None = Field(None, gt=0)
    accountant: Literal["prv", "rdp"] = "prv"
    secure_mode: bool = False
    dataset_id: str | None = None
    max_records_per_unit: int | None = Field(None, gt=0)
    sampling: Literal["server", "client"] | None = None


class TrainingConfig(_Wire):
    """Everything needed to create a training run. ``lora_config=None`` means full fine-tuning."""

    model_ref: str = "smollm2-135m-instruct"
    lora_config: LoRAConfig | None = Field(default_factory=LoRAConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    dp_config: DPConfig | None = None
    batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    seed: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)


class AdamParams(_Wire):
    """Per-step Adam hyperparameters (TrainingClient reference defaults)."""

    learning_rate: float = Field(1e-4, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-12, gt=0)
    weight_decay: float = Field(0.0, ge=0)


# ----------------------------------------------------------------- requests
class ForwardBackwardRequest(_Wire):
    """Exactly one of ``data`` (Tinker datums), ``batch`` (BatchData) or
    ``drawn_batch_id`` (train on a batch the server drew from a server-held dataset)."""

    data: list[Datum] | None = None
    batch: BatchData | None = None
    drawn_batch_id: str | None = None
    loss_fn: LossFnName = "cross_entropy"
    loss_fn_config: dict[str, float] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ForwardBackwardRequest:
        given = sum(x is not None for x in (self.data, self.batch, self.drawn_batch_id))
        if given != 1:
            raise ValueError("give exactly one of 'data', 'batch' or 'drawn_batch_id'")
        return self


class DrawBatchRequest(_Wire):
    """``draw_batch``: the server draws the next logical batch (Poisson, rate q) from the
    run's dataset. ``include_records`` sends the drawn records back (RL: the prompts to
    complete); a plain SFT loop needs only the batch id."""

    include_records: bool = False


class OptimStepRequest(_Wire):
    adam_params: AdamParams | None = None
    apply_dp_noise: bool = True


class SaveStateRequest(_Wire):
    name: str | None = Field(None, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    include_optimizer: bool = True
    metadata: dict[str, Any] = Field(default_factory=dict)


class LoadStateRequest(_Wire):
    """Exactly one of ``artifact_id`` or ``path`` (``tensafe://{run_id}/weights/{name}``).
    ``include_optimizer=False`` loads the weights only (a fresh optimizer)."""

    artifact_id: str | None = None
    path: str | None = None
    include_optimizer: bool = True

    @model_validator(mode="after")
    def _one_ref(self) -> LoadStateRequest:
        if (self.artifact_id is None) == (self.path is None):
            raise ValueError("give exactly one of 'artifact_id' or 'path'")
        return self


class SaveWeightsForSamplerRequest(_Wire):
    name: str = Field(..., max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")


# ----------------------------------------------------------------- results
class LossFnOutput(_Wire):
    """Per-example outputs of the loss. Readable as attributes or by key
    (``out["logprobs"]``, as in the Tinker reference), and printed like a dict."""

    logprobs: TensorData
    elementwise_loss: TensorData

    # SDK convenience (added): mapping-style access, so ``dict(out)`` also works.
    def __getitem__(self, key: str) -> TensorData:
        if key not in type(self).model_fields:
            raise KeyError(key)
        value: TensorData = getattr(self, key)
        return value

    def keys(self) -> list[str]:
        return list(type(self).model_fields)

    def __repr__(self) -> str:
        return repr({k: self[k] for k in self.keys()})


class ForwardBackwardOutput(_Wire):
    """Result of forward / forward_backward (fields of both seeds)."""

    loss_fn_output_type: str
    loss_fn_outputs: list[LossFnOutput]
    metrics: dict[str, float]
    loss: float
    grad_norm: float | None = None
    tokens_processed: int


class DPMetrics(_Wire):
    epsilon_spent: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    expected_batch_size: float
    accountant: str
    steps: int


class OptimStepResponse(_Wire):
    step: int
    learning_rate: float
    metrics: dict[str, float]
    dp_metrics: DPMetrics | None = None


class DrawnBatch(_Wire):
    """A logical batch the server drew: its id, the drawn records (indices into the
    dataset; with privacy units, each record's unit), and the records themselves when
    asked for. Consumed by exactly one ``optim_step``; an empty draw still steps."""

    batch_id: str
    size: int
    record_ids: list[int]
    units: list[int] | None = None
    records: list[DatasetRecord] | None = None
    type: Literal["draw_batch"] = "draw_batch"


class SaveStateResponse(_Wire):
    artifact_id: str
    path: str
    size_bytes: int
    content_hash: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    step: int
    type: Literal["save_state"] = "save_state"


class LoadStateResponse(_Wire):
    artifact_id: str
    path: str
    step: int
    status: str
    type: Literal["load_state"] = "load_state"


class SaveWeightsForSamplerResponse(_Wire):
    artifact_id: str
    path: str
    size_bytes: int
    content_hash: str
    type: Literal["save_weights_for_sampler"] = "save_weights_for_sampler"


class UnloadModelResponse(_Wire):
    model_id: str
    type: Literal["unload_model"] = "unload_model"


class ModelData(_Wire):
    arch: str
    model_name: str


class GetInfoResponse(_Wire):
    type: Literal["get_info"] = "get_info"
    model_data: ModelData
    model_id: str
    is_lora: bool
    lora_rank: int | None
    model_name: str
    trainable_params: int | None = None
    step: int = 0


RunStatus = Literal["INITIALIZING", "READY", "BUSY", "ERROR", "TERMINATED"]


class TrainingRun(_Wire):
    """A training run as the server reports it."""

    run_id: str
    status: RunStatus
    step: int
    config: TrainingConfig
    created_at: datetime
    last_heartbeat_at: datetime | None = None
    error: str | None = None


class TrainingRunList(_Wire):
    runs: list[TrainingRun]


FutureStatus = Literal["pending", "running", "completed", "failed", "cancelled"]


class ErrorBody(_Wire):
    """Every error response: ``error`` is the exception class name the SDK maps back."""

    error: str
    category: Literal["user", "server"]
    detail: str
    field: str | None = None


class FutureRef(_Wire):
    """Returned at once by every asynchronous operation."""

    future_id: str
    run_id: str
    operation: str
    seq: int


class FutureState(_Wire):
    """A future as polled: ``result`` when completed, ``error`` when failed."""

    future_id: str
    run_id: str
    operation: str
    seq: int
    status: FutureStatus
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None
    created_at: datetime
    completed_at: datetime | None = None


class CancelResponse(_Wire):
    cancelled: bool
    status: FutureStatus


class ArtifactInfo(_Wire):
    artifact_id: str
    run_id: str
    kind: Literal["lora_adapter", "full_weights", "training_state"]
    name: str | None
    path: str
    size_bytes: int
    content_hash: str
    step: int
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    expires_at: datetime | None = None


class ArtifactList(_Wire):
    artifacts: list[ArtifactInfo]


class TokenizerFiles(_Wire):
    """The run's tokenizer as files (name → UTF-8 text), loadable offline."""

    files: dict[str, str]


SamplingPolicy = Literal["server-only", "any"]
"""A budget's policy: ``server-only`` admits only runs whose batches the server draws
from a server-held dataset; ``any`` also runs that build their own (client-declared)."""


class BudgetCreate(_Wire):
    """``POST /v1/budgets``: a privacy budget for one of your datasets. Without
    ``sampling_policy`` the server's default applies (``server-only`` in production)."""

    dataset_id: str = Field(min_length=1, max_length=200)
    epsilon_cap: float = Field(ge=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: Literal["prv", "rdp"] = "prv"
    reason: str | None = None
    sampling_policy: SamplingPolicy | None = None


class BudgetUpdate(_Wire):
    """``PATCH /v1/budgets/{dataset_id}``: a new cap (never below the ε spent) and/or a
    new sampling policy."""

    epsilon_cap: float | None = Field(None, ge=0)
    sampling_policy: SamplingPolicy | None = None
    reason: str | None = None


ClientOverrides = Literal["tighten", "none"]
"""Whether clients may change a DP policy's settings: ``tighten`` — only towards more
privacy (larger σ, smaller target ε, more planned steps, smaller C, smaller δ);
``none`` — not at all."""


class DPPolicy(_Wire):
    """``PUT /v1/dp_policy`` (privacy officer): the DP settings of every new DP run of
    the tenant, native or Tinker.

    Attributes:
        dataset_id: the dataset (privacy budget) every run is charged to.
        noise_multiplier: σ; or give ``target_epsilon`` and ``planned_steps``.
        target_epsilon: ε each run may reach after ``planned_steps`` steps (σ is
            calibrated from it and the run's N and q).
        planned_steps: the steps σ is calibrated for (required with ``target_epsilon``).
        max_grad_norm: C, the per-example clipping norm.
        target_delta: δ of the runs' ε; ``None``: the server's default
            ``min(1e-5, N^-1.1)``.
        client_overrides: ``tighten`` (default) or ``none`` (see :data:`ClientOverrides`).
    """

    dataset_id: str = Field(min_length=1, max_length=200)
    noise_multiplier: float | None = Field(None, gt=0)
    target_epsilon: float | None = Field(None, gt=0)
    planned_steps: int | None = Field(None, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    target_delta: float | None = Field(None, gt=0, lt=1)
    client_overrides: ClientOverrides = "tighten"

    @model_validator(mode="after")
    def _one_noise_setting(self) -> DPPolicy:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier or target_epsilon")
        if self.target_epsilon is not None and self.planned_steps is None:
            raise ValueError("target_epsilon needs planned_steps")
        return self


class DPPolicyInfo(DPPolicy):
    """A tenant's DP policy as stored: the settings, who set them (``api:<key_id>``) and
    when."""

    updated_by: str
    updated_at: datetime


class PrivacyBudgetRun(_Wire):
    """One run's use of a dataset's budget (ε of its own steps, conservative)."""

    run_id: str
    steps: int
    epsilon: float


class PrivacyBudget(_Wire):
    """A dataset's privacy budget: cap, δ, ε spent (all runs composed), remaining."""

    dataset_id: str
    epsilon_cap: float
    delta: float
    accountant: str
    sampling_policy: SamplingPolicy = "any"
    epsilon_spent: float
    epsilon_spent_exact: float | None = None
    epsilon_remaining: float
    total_steps: int
    refusals: int = 0
    runs: list[PrivacyBudgetRun] = Field(default_factory=list)
    ledger_head_seq: int
    created_at: datetime
    updated_at: datetime


class PrivacyBudgetList(_Wire):
    budgets: list[PrivacyBudget]


# ------------------------------------------------------------------ datasets
class DatasetRecord(_Wire):
    """One record of a server-held dataset on the wire: model-input ``tokens`` and
    per-token ``fields`` of the same length (``target_tokens``, ``weights``, and for RL
    losses ``logprobs``, ``advantages``); no fields for a prompt."""

    tokens: list[int]
    fields: dict[str, list[float] | list[int]] = Field(default_factory=dict)


class DatasetCreate(_Wire):
    """``POST /v1/datasets``: start registering a dataset (a new version of ``name``)."""

    name: str = Field(min_length=1, max_length=200)
    privacy_units: bool = False


class DatasetRecords(_Wire):
    """``POST /v1/datasets/{id}/records``: records ``offset, offset + 1, …`` (and, for a
    dataset with privacy units, each record's unit id: a patient, a customer)."""

    offset: int = Field(ge=0)
    records: list[DatasetRecord] = Field(max_length=8192)
    units: list[str | int] | None = None


class DatasetProgress(_Wire):
    """How many records the dataset holds so far."""

    received: int


class DatasetInfo(_Wire):
    """A server-held dataset version. ``commitment`` (SHA-256 of its content) and
    ``num_records`` are fixed once ``status`` is ``ready``."""

    dataset_id: str
    name: str
    version: int
    status: Literal["uploading", "ready", "failed", "deleted"]
    privacy_unit: Literal["record", "unit"]
    num_records: int
    num_units: int | None = None
    fields: list[str] | None = None
    commitment: str | None = None
    size_bytes: int
    created_at: datetime
    committed_at: datetime | None = None


class DatasetList(_Wire):
    datasets: list[DatasetInfo]


class LedgerVerification(_Wire):
    """``GET /v1/audit/verify``: each of your datasets' ledger chains checked."""

    ok: bool
    chains: list[dict[str, Any]]


__all__ = [
    "AdamParams",
    "ArtifactInfo",
    "ArtifactList",
    "BatchData",
    "BudgetCreate",
    "BudgetUpdate",
    "CancelResponse",
    "ClientOverrides",
    "DPConfig",
    "DPMetrics",
    "DPPolicy",
    "DPPolicyInfo",
    "DatasetCreate",
    "DatasetInfo",
    "DatasetList",
    "DatasetProgress",
    "DatasetRecord",
    "DatasetRecords",
    "Datum",
    "DrawBatchRequest",
    "DrawnBatch",
    "EncodedTextChunk",
    "ErrorBody",
    "ForwardBackwardOutput",
    "ForwardBackwardRequest",
    "FutureRef",
    "FutureState",
    "FutureStatus",
    "GetInfoResponse",
    "LedgerVerification",
    "LoRAConfig",
    "LoadStateRequest",
    "LoadStateResponse",
    "LossFnOutput",
    "ModelData",
    "ModelInput",
    "OptimStepRequest",
    "OptimStepResponse",
    "OptimizerConfig",
    "PrivacyBudget",
    "PrivacyBudgetList",
    "PrivacyBudgetRun",
    "RunStatus",
    "SamplingPolicy",
    "SaveStateRequest",
    "SaveStateResponse",
    "SaveWeightsForSamplerRequest",
    "SaveWeightsForSamplerResponse",
    "TensorData",
    "TokenizerFiles",
    "TrainingConfig",
    "TrainingRun",
    "TrainingRunList",
    "UnloadModelResponse",
]
