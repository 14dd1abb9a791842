"""Server settings: environment variables (``TENSAFE_*``) and CLI flags, validated once.

Every setting has an embedded default, so ``tensafe serve`` needs no configuration:
SQLite in the data directory (WAL mode, foreign keys on), artifacts in
``<data_dir>/artifacts``, the KEK in a local keyring file ``<data_dir>/keyring/keyring.json``
(mode 0600, created on first start) and the API-key pepper in ``<data_dir>/secrets``.

The data directory defaults to ``$XDG_DATA_HOME/tensafe`` (``~/.local/share/tensafe``):
a fixed place, so the server finds its database and keys whatever directory it is
started from. Override it with ``--data-dir`` or ``TENSAFE_DATA_DIR``.

Outside ``environment="development"`` obviously insecure values are refused at start:
a placeholder or short API-key pepper, placeholder S3 credentials, a plain-HTTP S3
endpoint that is not on localhost.

Example::

    >>> s = Settings(data_dir="/tmp/ts-example")
    >>> s.resolved_database_url().startswith("sqlite:///")
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "production"]
StorageBackend = Literal["local", "s3"]
KeyProviderName = Literal["local", "env"]

# Values people paste from examples; refused outside development.
_PLACEHOLDERS = frozenset(
    {"changethis", "changeme", "change-me", "secret", "password", "example", "test", "dev", "xxx"}
)
MIN_PEPPER_LENGTH = 32


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/tensafe``, else ``~/.local/share/tensafe``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tensafe"


class Settings(BaseSettings):
    """All server settings. Environment variables use the prefix ``TENSAFE_``
    (``TENSAFE_DATA_DIR``, ``TENSAFE_DATABASE_URL``, ...).

    Attributes:
        environment: ``production`` (default) refuses insecure settings;
            ``development`` only warns.
        data_dir: where the embedded defaults live (database, artifacts, keyring, secrets).
        database_url: SQLAlchemy URL; default ``sqlite:///<data_dir>/tensafe.db``.
            PostgreSQL: ``postgresql+psycopg://user@host:5432/db``.
        auto_migrate: apply Alembic migrations at start (``tensafe db upgrade`` does it by hand).
        storage_backend: ``local`` (default, ``artifact_dir``) or ``s3``.
        artifact_dir: local artifact directory; default ``<data_dir>/artifacts``.
        s3_bucket, s3_prefix, s3_endpoint_url, s3_region: S3-compatible storage; credentials
            come from the usual AWS environment / config chain, never from these settings.
        key_provider: ``local`` (keyring file, default) or ``env`` (base64 256-bit KEK in
            the variable named by ``master_key_env``).
        keyring_path: local keyring file; default ``<data_dir>/keyring/keyring.json``.
        master_key_env: variable holding the KEK for ``key_provider="env"``.
        api_key_pepper: HMAC key for API-key hashes; default: generated once into
            ``<data_dir>/secrets/api_key_pepper`` (0600). Several servers sharing one
            PostgreSQL database must share it.
        deterministic_noise: development/testing only — seed each run's DP noise from
            its public ``seed`` so runs can be compared bit for bit. Refused outside
            ``environment=development``: a known seed lets anyone subtract the noise.
        default_epsilon_cap: when set, the first step of a DP run on a dataset with no
            privacy budget creates one with this ε cap (a ``budget_created`` ledger
            row, actor ``server:default_epsilon_cap``). Unset (default): such a step
            is refused (409) until an admin creates the budget.
        require_dp: refuse runs without differential privacy (``dp_config`` missing or
            disabled). Turn it off only for non-sensitive data and comparisons.
        allow_model_paths: let ``model_ref`` name a directory on the server. Off by
            default, so a tenant cannot make the server open arbitrary paths; models
            are then found by name (built-ins, the model cache, the hub).
        served_models: in production, the models a run may name (``model_ref``): the
            operator's list, nothing else (no hub ids, paths or test models unless
            allowed below). Development accepts any model name.
        allow_test_models: accept the in-memory ``tiny-llama`` test models in production.
        max_body_bytes: request bodies above this are refused with 413 before parsing
            (configuration routes have a much smaller limit, batch routes one derived
            from ``max_tokens_per_batch``; see :mod:`server.services.capacity`).
        body_idle_timeout_s, body_total_timeout_s: a request body that stalls this long
            between chunks, or is not complete within the total, is answered 408.
        max_batch_size, max_seq_len: limits on every training batch (422 otherwise).
        max_tokens_per_batch: limit on the tokens of one forward/forward_backward
            request (422 otherwise).
        max_lora_rank: limit on ``lora_config.rank`` (422 otherwise).
        max_metadata_bytes: limit on a run's ``metadata`` as JSON (422 otherwise).
        worker_memory_bytes: the memory a worker may use for one run and one operation;
            a run or an operation whose estimate exceeds it is refused with 409 before
            anything is allocated. Default: half of the machine's physical memory.
        rate_limit_per_s, rate_limit_burst: requests per second each tenant may send
            (a token bucket of ``rate_limit_burst``); above it, 429 with ``Retry-After``.
            ``none`` turns the limit off.
        long_poll_max_s: cap on ``GET /v1/futures/{id}?wait=S``.
        worker_threads: training runs executing concurrently (operations of one run
            always run one at a time, in submission order).
        device: torch device for models (``cpu``, ``cuda``, ``cuda:1``).
        microbatch_examples: every engine runs forward and forward_backward at most
            this many examples at a time (``TrainingEngine(microbatch_examples=...)``),
            which bounds one operation's transient memory (activations, per-example
            clipping's per-layer tensors) whatever the batch size; results are the
            same up to float rounding. ``None`` (default, ``none`` in the
            environment): each batch in one pass. See docs/operations.md (memory
            planning for multi-LoRA workers).
        activation_checkpointing: every engine keeps only each decoder layer's
            input during forward_backward and recomputes the layer in the backward
            pass (``TrainingEngine(activation_checkpointing=True)``, torch's
            non-reentrant checkpoint): the activations held for backward shrink to
            about one layer's, for one extra forward per training step; results are
            the same up to float rounding. Off by default. See docs/operations.md.
        retain_freed_memory: each worker process (this one for the in-process
            backend, every Ray actor) keeps freed memory for reuse instead of returning
            it to the OS after every step (glibc ``mallopt``:
            :func:`tensafe.engine.allocator.retain_freed_memory`): fewer page faults
            per step (DP full fine-tuning of SmolLM2 on CPU: 7.8–8.0 → 7.2–7.5 s per step);
            the peak resident size is unchanged, but it is not given back between
            steps. On by default.
        worker_backend: where runs' engines live: ``inprocess`` (default: worker threads
            of this process) or ``ray`` (Ray actors; needs the ``ray`` extra; docs/ray.md).
        ray_address: an existing Ray cluster (``host:port`` or ``ray://host:10001``);
            ``None`` starts a local Ray with the server. Only with ``worker_backend=ray``.
        ray_namespace: the Ray namespace of the server's worker actors.
        ray_actors: most worker actors (default: the cluster's GPUs when ``device`` is
            CUDA, else 1); each takes one GPU (CUDA) or ``ray_cpus_per_actor`` CPUs.
        ray_runs_per_actor: runs one actor holds (LoRA runs of one base model share an
            actor; a full fine-tuning run takes an actor of its own).
        ray_cpus_per_actor: CPUs each actor reserves when ``device`` is not CUDA.
        ray_num_cpus: CPUs of the local Ray the server starts (``None``: all).
        ray_call_timeout_s: longest one call may run in a worker actor (a model load, a
            ``forward_backward``, an ``optim_step``, sealing a checkpoint), counted from
            when the actor finished its previous call, so time queued behind other runs'
            calls does not count. An actor past it is treated as hung: it is killed, its
            runs are rebuilt like a dead actor's and the call fails with
            ``WorkerLostError`` (503). Set it well above your slowest step.
        ray_actor_start_timeout_s: longest a new worker actor may take to start
            (scheduling, e.g. waiting for an autoscaler's GPU node, and imports); past
            it the actor is killed and the load fails with ``WorkerLostError``.
        sampling_threads: threads that prepare sampling operations (resolve the
            sampler's model, decrypt and load a checkpoint's adapter); generation itself
            runs batched, one batch at a time per model, never in a run's training queue.
        sampling_batch_window_s: how long the first of several concurrent sample requests
            for one model waits for the others, so they run as one batch.
        max_num_samples: most ``num_samples`` one sample request may ask for.
        max_sampler_base_models: base models kept in memory for samplers of checkpoints
            and base models (beyond it the least recently used idle one is dropped).
        model_cache_dir: where models are prepared/cached (default: tensafe's cache).
        artifact_ttl_s: artifacts expire this many seconds after creation (``None``: never).
        result_ttl_s: a completed operation's result (losses, per-token values, metrics)
            is purged this many seconds after completion (``None``: kept forever); reading
            it later is 410. Requests are never stored with their training data. In the
            environment, ``none`` unsets this (and any other optional setting).
        sweep_interval_s: how often expired artifacts and old results are purged.
        tinker_tokenizer_id: what ``get_info`` on the Tinker protocol (``/api/v1``) tells
            clients to load the tokenizer from: a hub id, or a directory on the clients'
            machines (offline). Default: the hub id of the model's tokenizer.
        tinker_default_dp: DP settings (fields of ``DPConfig``, as JSON) for Tinker-protocol
            models whose metadata names none, so unmodified Tinker scripts train under DP;
            a client's ``tensafe.dp.*`` keys override them field by field.
        tinker_fwdbwd_max_chunk_len: Tinker clients split a forward_backward of more
            datums than this into chunks (each its own submission; the gradients add up
            in the same logical batch).
        log_level, log_json: logging (JSON lines by default).
        host, port: where ``tensafe serve`` listens.
    """

    model_config = SettingsConfigDict(
        env_prefix="TENSAFE_", extra="forbid", frozen=True, env_parse_none_str="none"
    )

    environment: Environment = "production"
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    auto_migrate: bool = True

    storage_backend: StorageBackend = "local"
    artifact_dir: Path | None = None
    s3_bucket: str | None = None
    s3_prefix: str = "artifacts/"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    key_provider: KeyProviderName = "local"
    keyring_path: Path | None = None
    master_key_env: str = "TENSAFE_MASTER_KEY"
    api_key_pepper: SecretStr | None = None

    require_dp: bool = True
    default_epsilon_cap: float | None = Field(None, ge=0)
    deterministic_noise: bool = False
    allow_model_paths: bool = False
    served_models: tuple[str, ...] = ("smollm2-135m-instruct",)
    allow_test_models: bool = False
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    body_idle_timeout_s: float = Field(10.0, gt=0)
    body_total_timeout_s: float = Field(120.0, gt=0)
    max_batch_size: int = Field(256, gt=0)
    max_seq_len: int = Field(4096, gt=0)
    max_tokens_per_batch: int = Field(16384, gt=0)
    max_lora_rank: int = Field(256, gt=0)
    max_metadata_bytes: int = Field(64 * 1024, gt=0)
    worker_memory_bytes: int | None = Field(None, gt=0)
    rate_limit_per_s: float | None = Field(50.0, gt=0)
    rate_limit_burst: int = Field(200, gt=0)
    long_poll_max_s: float = Field(30.0, ge=0, le=600)
    worker_threads: int = Field(2, ge=1, le=64)
    device: str = "cpu"
    microbatch_examples: int | None = Field(None, ge=1)
    activation_checkpointing: bool = False
    retain_freed_memory: bool = True
    worker_backend: Literal["inprocess", "ray"] = "inprocess"
    ray_address: str | None = None
    ray_namespace: str = Field("tensafe", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    ray_actors: int | None = Field(None, ge=1, le=1024)
    ray_runs_per_actor: int = Field(4, ge=1, le=256)
    ray_cpus_per_actor: float = Field(1.0, gt=0, le=256)
    ray_num_cpus: int | None = Field(None, ge=1)
    ray_call_timeout_s: float = Field(600.0, gt=0, le=7 * 24 * 3600)
    ray_actor_start_timeout_s: float = Field(600.0, gt=0, le=7 * 24 * 3600)
    tinker_tokenizer_id: str | None = None
    tinker_default_dp: dict[str, float | int | str] | None = None
    tinker_fwdbwd_max_chunk_len: int = Field(1024, gt=0)
    model_cache_dir: Path | None = None
    sampling_threads: int = Field(4, ge=1, le=64)
    sampling_batch_window_s: float = Field(0.05, ge=0, le=1)
    max_num_samples: int = Field(64, ge=1, le=1024)
    max_sampler_base_models: int = Field(2, ge=1, le=16)

    artifact_ttl_s: float | None = Field(None, gt=0)
    result_ttl_s: float | None = Field(7 * 24 * 3600.0, gt=0)
    sweep_interval_s: float = Field(300.0, gt=0)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    @field_validator("tinker_default_dp")
    @classmethod
    def _dp_fields(
        cls, value: dict[str, float | int | str] | None
    ) -> dict[str, float | int | str] | None:
        if value is not None:
            from tg_tinker.types import DPConfig

            DPConfig.model_validate(value)  # a bad default fails at start, naming the field
        return value

    @field_validator("data_dir", "artifact_dir", "keyring_path", "model_cache_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(os.path.expanduser(str(value))).absolute()

    @model_validator(mode="after")
    def _refuse_insecure(self) -> Settings:
        problems = self.insecure_settings()
        if problems and self.environment != "development":
            raise ValueError(
                "insecure settings refused outside environment=development: " + "; ".join(problems)
            )
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("s3_bucket: required when storage_backend is 's3'")
        if self.ray_address is not None and self.worker_backend != "ray":
            raise ValueError("ray_address: only used with worker_backend 'ray'")
        return self

    def insecure_settings(self) -> list[str]:
        """Human-readable reasons these settings are unsafe (empty when they are fine)."""
        problems: list[str] = []
        if self.deterministic_noise:
            problems.append("deterministic_noise makes DP noise predictable from the run seed")
        if self.api_key_pepper is not None:
            pepper = self.api_key_pepper.get_secret_value()
            if pepper.strip().lower() in _PLACEHOLDERS:
                problems.append("api_key_pepper is a placeholder value")
            elif len(pepper) < MIN_PEPPER_LENGTH:
                problems.append(f"api_key_pepper must be at least {MIN_PEPPER_LENGTH} characters")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if self.storage_backend == "s3" and os.environ.get(name, "").lower() in _PLACEHOLDERS:
                problems.append(f"{name} is a placeholder value")
        if self.s3_endpoint_url:
            url = urlparse(self.s3_endpoint_url)
            local = url.hostname in {"localhost", "127.0.0.1", "::1"}
            if url.scheme == "http" and not local:
                problems.append("s3_endpoint_url uses plain http to a non-local host")
        if self.worker_backend == "ray" and self.ray_address:
            host = urlparse(
                self.ray_address if "://" in self.ray_address else "ray://" + self.ray_address
            ).hostname
            local = host in {"localhost", "127.0.0.1", "::1"}
            if not local and os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true"):
                problems.append(
                    "ray_address names a remote Ray cluster but RAY_USE_TLS is not set: "
                    "tenant keys and training data would cross Ray's transport unencrypted"
                )
        return problems

    # ------------------------------------------------------------ derived paths
    def resolved_database_url(self) -> str:
        """``database_url``, or the SQLite file in ``data_dir``."""
        return self.database_url or f"sqlite:///{self.data_dir / 'tensafe.db'}"

    def resolved_artifact_dir(self) -> Path:
        return self.artifact_dir or self.data_dir / "artifacts"

    def resolved_keyring_path(self) -> Path:
        return self.keyring_path or self.data_dir / "keyring" / "keyring.json"

    def pepper_path(self) -> Path:
        return self.data_dir / "secrets" / "api_key_pepper"

    def resolved_worker_memory_bytes(self) -> int:
        """``worker_memory_bytes``, or half of the machine's physical memory."""
        if self.worker_memory_bytes is not None:
            return self.worker_memory_bytes
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 16 * 1024**3
        return max(1, total // 2)


__all__ = ["Environment", "KeyProviderName", "Settings", "StorageBackend", "default_data_dir"]
