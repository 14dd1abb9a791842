"""ServiceClient: the connection to a TenSafe server, and the entry point of the SDK.

One design for sync and async code: every method has an ``_async`` twin on the
same object (``create_lora_training_client`` / ``create_lora_training_client_async``),
as in the Tinker SDK. Sync calls use one ``httpx.Client``; async calls use an
``httpx.AsyncClient`` per event loop. Close with ``close()`` / ``with``, or
``await aclose()`` / ``async with`` in async code.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import httpx

from tg_tinker import downloads
from tg_tinker._config import (
    ENV_API_KEY,
    ENV_BASE_URL,
    lora_training_config,
    resolve_base_url,
    run_id_from_path,
)
from tg_tinker._http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, HTTPCore, RawRequest, Request
from tg_tinker.datasets import DEFAULT_BATCH_RECORDS, Progress, ProgressBar, RecordLike
from tg_tinker.datasets import upload as dataset_upload
from tg_tinker.downloads import PulledArtifact
from tg_tinker.errors import ValidationError
from tg_tinker.sampling_client import SamplingClient, create_sampler_request
from tg_tinker.training_client import TrainingClient, run_request
from tg_tinker.types import (
    ArtifactInfo,
    ArtifactList,
    BudgetCreate,
    BudgetUpdate,
    ClientOverrides,
    DatasetInfo,
    DatasetList,
    DPConfig,
    DPPolicy,
    DPPolicyInfo,
    OptimizerConfig,
    PrivacyBudget,
    SamplingPolicy,
    TrainingConfig,
    TrainingRun,
    TrainingRunList,
)

# Requests that have a sync and an ``_async`` twin, described once.
_LIST_RUNS = Request("GET", "/v1/training_runs", response=TrainingRunList)
_EXPORT_KEY = RawRequest("GET", "/v1/keys/export")


_LIST_DATASETS = Request("GET", "/v1/datasets", response=DatasetList)


def _dataset_request(method: str, dataset_id: str) -> Request[DatasetInfo]:
    return Request(method, f"/v1/datasets/{quote(dataset_id, safe='')}", response=DatasetInfo)


def _progress(name: str, progress: bool | Progress) -> tuple[ProgressBar | None, Progress | None]:
    if progress is True:
        bar = ProgressBar(name)
        return bar, bar
    if progress is False:
        return None, None
    return None, progress


def _create_run_request(config: TrainingConfig) -> Request[TrainingRun]:
    return Request("POST", "/v1/training_runs", response=TrainingRun, body=config)


def _artifact_request(artifact_id: str) -> Request[ArtifactInfo]:
    return Request("GET", f"/v1/artifacts/{artifact_id}", response=ArtifactInfo)


def _artifacts_request(run_id: str | None) -> Request[ArtifactList]:
    params = {"run_id": run_id} if run_id is not None else None
    return Request("GET", "/v1/artifacts", response=ArtifactList, params=params)


def _source_from_path(path: str | None, artifact_id: str | None) -> str | None:
    """The run that saved a checkpoint, if ``path`` names it; None if ``artifact_id``
    must be looked up."""
    if (path is None) == (artifact_id is None):
        raise ValidationError("give exactly one of 'path' or 'artifact_id'", field="path")
    return None if path is None else run_id_from_path(path)


class ServiceClient:
    """Connection to a TenSafe server; creates training clients and pulls artifacts.

    Args:
        base_url: the server, e.g. ``"https://tensafe.example.org"``; defaults to
            ``$TG_TINKER_BASE_URL``.
        api_key: your tenant's API key; defaults to ``$TG_TINKER_API_KEY``.
        timeout: seconds for connecting and for each ordinary request (long polls
            wait longer on purpose).
        max_retries: retries for requests that are safe to repeat (see ``docs/sdk.md``).
        transport, async_transport: custom ``httpx`` transports (proxies, mTLS,
            tests); an ``httpx.MockTransport`` serves both.

    Raises:
        ValidationError: no URL / key given or found in the environment.

    Example::

        with ServiceClient("http://localhost:8000", api_key="tsk-...") as service:
            tc = service.create_lora_training_client("smollm2-135m-instruct", rank=8)
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url = resolve_base_url(base_url)
        key = api_key or os.environ.get(ENV_API_KEY)
        if not key:
            raise ValidationError(
                f"no API key: pass api_key=... or set {ENV_API_KEY}", field="api_key"
            )
        if timeout <= 0:
            raise ValidationError(f"must be > 0, got {timeout}", field="timeout")
        if max_retries < 0:
            raise ValidationError(f"must be >= 0, got {max_retries}", field="max_retries")
        self._http = HTTPCore(
            base_url=url,
            api_key=key,
            timeout=timeout,
            max_retries=max_retries,
            transport=transport,
            async_transport=async_transport,
        )

    @property
    def base_url(self) -> str:
        """The server this client talks to."""
        return self._http.base_url

    def __repr__(self) -> str:  # never shows the API key
        return f"ServiceClient(base_url={self.base_url!r})"

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the connections. The client (and its training clients) is unusable afterwards."""
        self._http.close()

    async def aclose(self) -> None:
        """Async twin of :meth:`close` (also closes the running loop's async connections)."""
        await self._http.aclose()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ---------------------------------------------------------------- training runs
    def create_training_client(self, config: TrainingConfig) -> TrainingClient:
        """Create a training run from a full :class:`TrainingConfig`.

        Returns at once; the run starts ``INITIALIZING`` while the worker loads the
        model, and operations submitted meanwhile queue behind the load.

        Raises:
            ValidationError: the server refused the config (``field`` names it).
            BudgetExceededError: the DP settings cannot fit the privacy budget.
        """
        return TrainingClient(self._http, self._http.call(_create_run_request(config)))

    async def create_training_client_async(self, config: TrainingConfig) -> TrainingClient:
        """Async twin of :meth:`create_training_client`."""
        return TrainingClient(self._http, await self._http.acall(_create_run_request(config)))

    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 16,
        *,
        alpha: float | None = None,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        train_attn: bool = True,
        train_mlp: bool = True,
        train_unembed: bool = False,
        dp_config: DPConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        batch_size: int = 8,
        gradient_accumulation_steps: int = 1,
        seed: int = 0,
        metadata: dict[str, object] | None = None,
    ) -> TrainingClient:
        """Create a LoRA training run (Tinker's shortcut for :meth:`create_training_client`).

        ``alpha`` defaults to ``2 * rank``. ``dp_config=None`` trains without
        differential privacy (the server may require DP for your tenant).

        Raises:
            ValidationError: a bad argument (raised before sending), or refused by the server.
        """
        config = lora_training_config(
            base_model,
            rank,
            alpha=alpha,
            dropout=dropout,
            target_modules=target_modules,
            train_attn=train_attn,
            train_mlp=train_mlp,
            train_unembed=train_unembed,
            dp_config=dp_config,
            optimizer=optimizer,
            batch_size=batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            seed=seed,
            metadata=metadata,
        )
        return self.create_training_client(config)

    async def create_lora_training_client_async(
        self,
        base_model: str,
        rank: int = 16,
        *,
        alpha: float | None = None,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        train_attn: bool = True,
        train_mlp: bool = True,
        train_unembed: bool = False,
        dp_config: DPConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        batch_size: int = 8,
        gradient_accumulation_steps: int = 1,
        seed: int = 0,
        metadata: dict[str, object] | None = None,
    ) -> TrainingClient:
        """Async twin of :meth:`create_lora_training_client`."""
        config = lora_training_config(
            base_model,
            rank,
            alpha=alpha,
            dropout=dropout,
            target_modules=target_modules,
            train_attn=train_attn,
            train_mlp=train_mlp,
            train_unembed=train_unembed,
            dp_config=dp_config,
            optimizer=optimizer,
            batch_size=batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            seed=seed,
            metadata=metadata,
        )
        return await self.create_training_client_async(config)

    def create_training_client_from_state(
        self, path: str | None = None, *, artifact_id: str | None = None
    ) -> TrainingClient:
        """Start a new run with the config of the run that saved a checkpoint, and
        load that checkpoint into it (by ``tensafe://`` path or ``artifact_id``).

        Blocks until the checkpoint is loaded. If loading fails, the new run is
        unloaded and the error re-raised.

        Raises:
            ValidationError: neither or both references given, or a malformed path.
            NotFoundError: no such checkpoint or run for this tenant.
        """
        source = self._source_run_id(path, artifact_id)
        config = self._http.call(run_request(source)).config
        tc = self.create_training_client(config)
        try:
            tc.load_state(path, artifact_id=artifact_id).result()
        except BaseException:
            with contextlib.suppress(Exception):  # the load error is the one worth reporting
                tc.unload_model()
            raise
        return tc

    async def create_training_client_from_state_async(
        self, path: str | None = None, *, artifact_id: str | None = None
    ) -> TrainingClient:
        """Async twin of :meth:`create_training_client_from_state`."""
        source = await self._asource_run_id(path, artifact_id)
        config = (await self._http.acall(run_request(source))).config
        tc = await self.create_training_client_async(config)
        try:
            await (await tc.load_state_async(path, artifact_id=artifact_id))
        except BaseException:
            with contextlib.suppress(Exception):
                await tc.unload_model_async()
            raise
        return tc

    def _source_run_id(self, path: str | None, artifact_id: str | None) -> str:
        source = _source_from_path(path, artifact_id)
        if source is not None:
            return source
        return self.get_artifact(artifact_id).run_id  # type: ignore[arg-type]

    async def _asource_run_id(self, path: str | None, artifact_id: str | None) -> str:
        source = _source_from_path(path, artifact_id)
        if source is not None:
            return source
        return (await self.get_artifact_async(artifact_id)).run_id  # type: ignore[arg-type]

    # ---------------------------------------------------------------- sampling
    def create_sampling_client(
        self,
        model_path: str | None = None,
        *,
        base_model: str | None = None,
        run_id: str | None = None,
        artifact_id: str | None = None,
    ) -> SamplingClient:
        """A :class:`SamplingClient` of exactly one source:

        * ``model_path`` — a sampler checkpoint, ``tensafe://{run}/sampler_weights/{name}``
          (from ``save_weights_for_sampler``), decrypted only in the server's memory;
        * ``artifact_id`` — the same checkpoint by id;
        * ``run_id`` — a run's **current** weights (each sample sees the weights as of
          its start; RL loops sample the policy they train this way);
        * ``base_model`` — a base model by name (``smollm2-135m-instruct``).

        Raises:
            ValidationError: none or several sources, or a checkpoint that is not a
                LoRA sampler checkpoint (``field`` names it).
            NotFoundError: no such run or checkpoint for your tenant.
        """
        request = create_sampler_request(
            model_path=model_path, base_model=base_model, run_id=run_id, artifact_id=artifact_id
        )
        return SamplingClient(self._http, self._http.call(request))

    async def create_sampling_client_async(
        self,
        model_path: str | None = None,
        *,
        base_model: str | None = None,
        run_id: str | None = None,
        artifact_id: str | None = None,
    ) -> SamplingClient:
        """Async twin of :meth:`create_sampling_client`."""
        request = create_sampler_request(
            model_path=model_path, base_model=base_model, run_id=run_id, artifact_id=artifact_id
        )
        return SamplingClient(self._http, await self._http.acall(request))

    def get_training_client(self, run_id: str) -> TrainingClient:
        """A client for an existing run of this tenant (e.g. after a restart).

        Raises:
            NotFoundError: no such run for this tenant.
        """
        return TrainingClient(self._http, self._http.call(run_request(run_id)))

    async def get_training_client_async(self, run_id: str) -> TrainingClient:
        """Async twin of :meth:`get_training_client`."""
        return TrainingClient(self._http, await self._http.acall(run_request(run_id)))

    def list_training_runs(self) -> list[TrainingRun]:
        """This tenant's training runs, as data."""
        return self._http.call(_LIST_RUNS).runs

    async def list_training_runs_async(self) -> list[TrainingRun]:
        """Async twin of :meth:`list_training_runs`."""
        return (await self._http.acall(_LIST_RUNS)).runs

    def list_training_clients(self) -> list[TrainingClient]:
        """A :class:`TrainingClient` for each of this tenant's runs (one request)."""
        return [TrainingClient(self._http, run) for run in self.list_training_runs()]

    async def list_training_clients_async(self) -> list[TrainingClient]:
        """Async twin of :meth:`list_training_clients`."""
        return [TrainingClient(self._http, run) for run in await self.list_training_runs_async()]

    # ---------------------------------------------------------------- artifacts
    def get_artifact(self, artifact_id: str) -> ArtifactInfo:
        """Metadata of one artifact (kind, step, size, content hash)."""
        return self._http.call(_artifact_request(artifact_id))

    async def get_artifact_async(self, artifact_id: str) -> ArtifactInfo:
        """Async twin of :meth:`get_artifact`."""
        return await self._http.acall(_artifact_request(artifact_id))

    def list_artifacts(self, run_id: str | None = None) -> list[ArtifactInfo]:
        """This tenant's artifacts, optionally only those of one run."""
        return self._http.call(_artifacts_request(run_id)).artifacts

    async def list_artifacts_async(self, run_id: str | None = None) -> list[ArtifactInfo]:
        """Async twin of :meth:`list_artifacts`."""
        return (await self._http.acall(_artifacts_request(run_id))).artifacts

    def pull_artifact(self, artifact_id: str, *, expected_sha256: str | None = None) -> bytes:
        """Download an artifact's ciphertext into memory, verified.

        The bytes are checked against the response's ``Content-Length`` and
        ``X-Content-SHA256`` (and ``expected_sha256``, e.g. the ``content_hash`` a
        ``save_state`` returned). They are still encrypted. Prefer
        :meth:`pull_artifact_to_file` for large artifacts.

        Raises:
            ArtifactIntegrityError: size or hash mismatch.
            NotFoundError: no such artifact for this tenant.
        """
        return downloads.download_bytes(self._http, artifact_id, expected_sha256=expected_sha256)

    async def pull_artifact_async(
        self, artifact_id: str, *, expected_sha256: str | None = None
    ) -> bytes:
        """Async twin of :meth:`pull_artifact`."""
        return await downloads.download_bytes_async(
            self._http, artifact_id, expected_sha256=expected_sha256
        )

    def pull_artifact_to_file(
        self,
        artifact_id: str,
        path: str | os.PathLike[str],
        *,
        expected_sha256: str | None = None,
        overwrite: bool = False,
    ) -> PulledArtifact:
        """Stream an artifact's ciphertext to ``path``, verified, in bounded memory.

        The bytes go to a temporary file beside ``path``, are hashed as they
        arrive, and are renamed onto ``path`` only if size and SHA-256 match both
        the response headers and the artifact's listing. On any failure no file
        is left at ``path`` (nor a partial one beside it).

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.
            ArtifactIntegrityError: size or hash mismatch.
            NotFoundError: no such artifact for this tenant.
        """
        target = downloads.check_target(path, overwrite=overwrite)
        info = self.get_artifact(artifact_id)
        expected = downloads.expected_hash(info, expected_sha256)
        with downloads.atomic_file(target, overwrite=overwrite) as handle:
            size, digest = downloads.download(
                self._http,
                artifact_id,
                handle,
                expected_sha256=expected,
                expected_size=info.size_bytes,
            )
        return downloads.pulled(target, info, size, digest)

    async def pull_artifact_to_file_async(
        self,
        artifact_id: str,
        path: str | os.PathLike[str],
        *,
        expected_sha256: str | None = None,
        overwrite: bool = False,
    ) -> PulledArtifact:
        """Async twin of :meth:`pull_artifact_to_file`."""
        target = downloads.check_target(path, overwrite=overwrite)
        info = await self.get_artifact_async(artifact_id)
        expected = downloads.expected_hash(info, expected_sha256)
        with downloads.atomic_file(target, overwrite=overwrite) as handle:
            size, digest = await downloads.download_async(
                self._http,
                artifact_id,
                handle,
                expected_sha256=expected,
                expected_size=info.size_bytes,
            )
        return downloads.pulled(target, info, size, digest)

    # ---------------------------------------------------------------- keys
    def export_tenant_key(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save your tenant key file (JSON, mode 0600) to decrypt pulled artifacts offline.

        Keep it secret: anyone with this file and your artifacts can read them.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.
            PermissionDeniedError: the API key lacks the ``train`` scope (an
                ``AuthenticationError`` too).
        """
        target = downloads.check_target(path, overwrite=overwrite)
        content = self._http.send(_EXPORT_KEY).content
        return downloads.write_key_file(target, content, overwrite=overwrite)

    async def export_tenant_key_async(
        self, path: str | os.PathLike[str], *, overwrite: bool = False
    ) -> Path:
        """Async twin of :meth:`export_tenant_key`."""
        target = downloads.check_target(path, overwrite=overwrite)
        content = (await self._http.asend(_EXPORT_KEY)).content
        return downloads.write_key_file(target, content, overwrite=overwrite)

    # ---------------------------------------------------------------- privacy budgets
    def get_privacy_budget(self, dataset_id: str) -> PrivacyBudget:
        """A dataset's privacy budget: cap, δ, ε spent (all runs composed), remaining, runs."""
        return self._http.call(
            Request("GET", f"/v1/budgets/{quote(dataset_id, safe='')}", response=PrivacyBudget)
        )

    def create_privacy_budget(
        self,
        dataset_id: str,
        *,
        epsilon_cap: float,
        delta: float = 1e-5,
        accountant: str = "prv",
        reason: str | None = None,
        sampling_policy: SamplingPolicy | None = None,
    ) -> PrivacyBudget:
        """Create the ε budget of one of your datasets. ``sampling_policy``:
        ``"server-only"`` (only runs on server-drawn batches; the production default) or
        ``"any"`` (client-declared runs too).

        Raises:
            PermissionDeniedError: the API key lacks the ``privacy-officer`` scope;
                nothing was created.
            ConflictError: the dataset already has a budget.
        """
        body = BudgetCreate(
            dataset_id=dataset_id,
            epsilon_cap=epsilon_cap,
            delta=delta,
            accountant=accountant,  # type: ignore[arg-type]
            reason=reason,
            sampling_policy=sampling_policy,
        )
        return self._http.call(Request("POST", "/v1/budgets", response=PrivacyBudget, body=body))

    def raise_privacy_budget(
        self,
        dataset_id: str,
        *,
        epsilon_cap: float | None = None,
        sampling_policy: SamplingPolicy | None = None,
        reason: str | None = None,
    ) -> PrivacyBudget:
        """Change a dataset's cap and/or its sampling policy.

        Raises:
            PermissionDeniedError: the API key lacks the ``privacy-officer`` scope;
                nothing was changed.
            ValidationError: the new cap is below the ε already spent.
        """
        body = BudgetUpdate(epsilon_cap=epsilon_cap, sampling_policy=sampling_policy, reason=reason)
        path = f"/v1/budgets/{quote(dataset_id, safe='')}"
        response = self._http.send(RawRequest("PATCH", path, body=body))
        return PrivacyBudget.model_validate_json(response.content)

    # ---------------------------------------------------------------- DP policy
    def set_dp_policy(
        self,
        *,
        dataset_id: str,
        noise_multiplier: float | None = None,
        target_epsilon: float | None = None,
        planned_steps: int | None = None,
        max_grad_norm: float = 1.0,
        target_delta: float | None = None,
        client_overrides: ClientOverrides = "tighten",
    ) -> DPPolicyInfo:
        """Set (or replace) your tenant's DP policy: every new DP run — native or through
        the Tinker protocol — is charged to ``dataset_id`` with σ (``noise_multiplier``)
        or a target ε (``target_epsilon`` + ``planned_steps``) and C (``max_grad_norm``);
        runs may only tighten them (``client_overrides="tighten"``) or not change them
        (``"none"``). Existing runs keep their settings.

        Example:
            >>> officer.set_dp_policy(dataset_id="notes", noise_multiplier=1.0)  # doctest: +SKIP

        Raises:
            PermissionDeniedError: the API key lacks the ``privacy-officer`` scope.
            ConflictError: the dataset has no privacy budget (and the server creates
                none on first use).
            ValidationError: neither or both of σ and target ε; a value out of range.
        """
        body = DPPolicy(
            dataset_id=dataset_id,
            noise_multiplier=noise_multiplier,
            target_epsilon=target_epsilon,
            planned_steps=planned_steps,
            max_grad_norm=max_grad_norm,
            target_delta=target_delta,
            client_overrides=client_overrides,
        )
        response = self._http.send(RawRequest("PUT", "/v1/dp_policy", body=body))
        return DPPolicyInfo.model_validate_json(response.content)

    def get_dp_policy(self) -> DPPolicyInfo:
        """Your tenant's DP policy.

        Raises:
            PermissionDeniedError: the API key lacks the ``privacy-officer`` scope.
            NotFoundError: the tenant has no DP policy.
        """
        return self._http.call(Request("GET", "/v1/dp_policy", response=DPPolicyInfo))

    def delete_dp_policy(self) -> None:
        """Remove your tenant's DP policy (new runs then take their DP settings from
        the client again).

        Raises:
            PermissionDeniedError: the API key lacks the ``privacy-officer`` scope.
            NotFoundError: the tenant has no DP policy.
        """
        self._http.send(RawRequest("DELETE", "/v1/dp_policy"))

    # ---------------------------------------------------------------- datasets
    def create_dataset(
        self,
        name: str,
        records: Iterable[RecordLike],
        privacy_units: Iterable[str | int] | None = None,
        *,
        batch_records: int = DEFAULT_BATCH_RECORDS,
        progress: bool | Progress = True,
    ) -> DatasetInfo:
        """Register a dataset on the server (stored encrypted; N fixed at the end).

        ``records`` may be any iterable — a generator of a million records is streamed in
        batches of ``batch_records``, one batch in memory at a time. Each item is a
        ``Datum``, a ``(prompt_tokens, completion_tokens)`` pair, a ``BatchData`` (one
        record per row), a list of token ids (a prompt) or a ``DatasetRecord``.
        ``privacy_units`` (a patient or customer id per record) makes ε count per unit:
        sampling is over units and a unit's records are clipped together. Registering
        the same content again returns the dataset you already have (and its budget).

        Example::

            info = service.create_dataset("notes-2026", zip(prompts, completions))
            print(info.dataset_id, info.num_records, info.commitment)

        Raises:
            ValidationError: a bad record (``field`` names ``records[i]``), or units that
                do not match the records one to one.
        """
        bar, report = _progress(name, progress)
        plan = dataset_upload(name, records, privacy_units, batch_records=batch_records,
                              progress=report)  # fmt: skip
        try:
            request = next(plan)
            while True:
                request = plan.send(self._http.call(request))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            if bar is not None:
                bar.close()

    async def create_dataset_async(
        self,
        name: str,
        records: Iterable[RecordLike],
        privacy_units: Iterable[str | int] | None = None,
        *,
        batch_records: int = DEFAULT_BATCH_RECORDS,
        progress: bool | Progress = True,
    ) -> DatasetInfo:
        """Async twin of :meth:`create_dataset`."""
        bar, report = _progress(name, progress)
        plan = dataset_upload(name, records, privacy_units, batch_records=batch_records,
                              progress=report)  # fmt: skip
        try:
            request = next(plan)
            while True:
                request = plan.send(await self._http.acall(request))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            if bar is not None:
                bar.close()

    def list_datasets(self) -> list[DatasetInfo]:
        """Your datasets, newest first (each version separately)."""
        return self._http.call(_LIST_DATASETS).datasets

    async def list_datasets_async(self) -> list[DatasetInfo]:
        """Async twin of :meth:`list_datasets`."""
        return (await self._http.acall(_LIST_DATASETS)).datasets

    def get_dataset(self, dataset_id: str) -> DatasetInfo:
        """One of your datasets (NotFoundError for another tenant's id)."""
        return self._http.call(_dataset_request("GET", dataset_id))

    async def get_dataset_async(self, dataset_id: str) -> DatasetInfo:
        """Async twin of :meth:`get_dataset`."""
        return await self._http.acall(_dataset_request("GET", dataset_id))

    def delete_dataset(self, dataset_id: str) -> DatasetInfo:
        """Crypto-shred one of your datasets: its key is destroyed, its ciphertext deleted."""
        return self._http.call(_dataset_request("DELETE", dataset_id))

    async def delete_dataset_async(self, dataset_id: str) -> DatasetInfo:
        """Async twin of :meth:`delete_dataset`."""
        return await self._http.acall(_dataset_request("DELETE", dataset_id))

    def audit_report(self, dataset_id: str, *, format: str = "json") -> dict[str, object] | str:
        """The dataset's privacy audit report: a dict (``format="json"``) or an HTML page."""
        if format not in ("json", "html"):
            raise ValidationError("must be 'json' or 'html'", field="format")
        path = f"/v1/audit/{quote(dataset_id, safe='')}/report"
        request = RawRequest("GET", path, params={"format": format}, read_extra=120.0)
        response = self._http.send(request)
        if format == "html":
            return response.text
        return dict(json.loads(response.content))

    def pull_evidence(self, artifact_id: str) -> bytes:
        """The artifact's signed evidence bundle (DSSE envelope JSON), byte for byte as the
        server signed it when the checkpoint was saved. Verify it offline, beside the
        pulled artifact, with :func:`tg_tinker.evidence.verify_bundle`.

        Raises:
            NotFoundError: no such artifact for this tenant, or it has no bundle.
        """
        return self._http.send(_evidence_request(artifact_id)).content

    async def pull_evidence_async(self, artifact_id: str) -> bytes:
        """Async twin of :meth:`pull_evidence`."""
        return (await self._http.asend(_evidence_request(artifact_id))).content

    def evidence_public_keys(self) -> list[dict[str, object]]:
        """The server's evidence public keys, old versions too (``version``, ``keyid``,
        ``public_key_pem``, ``current``): from its well-known route. Keep the one that
        signed your bundles; a rotation never removes it."""
        response = self._http.send(RawRequest("GET", _EVIDENCE_KEYS))
        return list(json.loads(response.content)["keys"])

    async def evidence_public_keys_async(self) -> list[dict[str, object]]:
        """Async twin of :meth:`evidence_public_keys`."""
        response = await self._http.asend(RawRequest("GET", _EVIDENCE_KEYS))
        return list(json.loads(response.content)["keys"])


_EVIDENCE_KEYS = "/.well-known/tensafe-evidence-keys"


def _evidence_request(artifact_id: str) -> RawRequest:
    return RawRequest("GET", f"/v1/artifacts/{quote(artifact_id, safe='')}/evidence")


__all__ = ["ENV_API_KEY", "ENV_BASE_URL", "ServiceClient"]
