"""SamplingClient: generate from weights on the server (a run's, a checkpoint's, a base).

Get one from :meth:`ServiceClient.create_sampling_client` (``model_path=``,
``base_model=``, ``run_id=``) or :meth:`TrainingClient.save_weights_and_get_sampling_client`.
``sample`` and ``compute_logprobs`` return an :class:`~tg_tinker.APIFuture` at once and
have ``_async`` twins, like training operations; they run on the server beside
training, never in a run's training queue, and charge no privacy budget (sampling a
DP-trained model is post-processing).

Example::

    sc = service.create_sampling_client(base_model="smollm2-135m-instruct")
    tok = sc.get_tokenizer()
    params = SamplingParams(max_tokens=32, temperature=0.7, stop=["\\n"], seed=1)
    out = sc.sample(ModelInput.from_ints(tok.encode("Hello")), 2, params).result()
    [tok.decode(s.tokens) for s in out.sequences]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from tg_tinker._config import build_model
from tg_tinker._http import Request
from tg_tinker.futures import APIFuture
from tg_tinker.sampling_types import (
    ComputeLogprobsRequest,
    ComputeLogprobsResponse,
    CreateSamplerRequest,
    SampleRequest,
    SampleResponse,
    SamplerInfo,
    SamplingParams,
)
from tg_tinker.types import FutureRef, ModelInput, TokenizerFiles

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tg_tinker._http import HTTPCore

#: What ``sample`` and ``compute_logprobs`` accept as a prompt.
PromptInput = ModelInput | Sequence[int]


def create_sampler_request(
    *,
    model_path: str | None,
    base_model: str | None,
    run_id: str | None,
    artifact_id: str | None,
) -> Request[SamplerInfo]:
    """``POST /v1/samplers`` for exactly one source.

    Raises:
        ValidationError: none or several sources given, or a malformed one.
    """
    body = build_model(
        CreateSamplerRequest,
        model_path=model_path,
        base_model=base_model,
        run_id=run_id,
        artifact_id=artifact_id,
    )
    return Request("POST", "/v1/samplers", response=SamplerInfo, body=body)


def _prompt(prompt: PromptInput) -> ModelInput:
    if isinstance(prompt, ModelInput):
        return prompt
    if isinstance(prompt, (str, bytes)):
        from tg_tinker.errors import ValidationError

        raise ValidationError(
            "give token ids (tokenizer.encode(text)) or a ModelInput, not text", field="prompt"
        )
    return build_model(ModelInput, field="prompt", chunks=[{"tokens": list(prompt)}])


def _params(
    sampling_params: SamplingParams | Mapping[str, object] | None,
) -> SamplingParams | dict[str, object]:
    # a dict is validated inside the request, so errors name ``sampling_params.<field>``
    if sampling_params is None:
        return SamplingParams()
    if isinstance(sampling_params, SamplingParams):
        return sampling_params
    return dict(sampling_params)


class SamplingClient:
    """Samples from one sampler on the server.

    Example::

        sc = tc.save_weights_and_get_sampling_client()
        response = sc.sample(prompt_tokens, num_samples=4,
                             sampling_params=SamplingParams(max_tokens=16, seed=0)).result()
        response.sequences[0].tokens, response.sequences[0].logprobs

    ``SampledSequence.logprobs`` are of the distribution each token was drawn from
    (after temperature, top-k, top-p) — the behaviour policy for importance sampling;
    ``model_logprobs`` are the raw model's (temperature 1).
    """

    def __init__(self, http: HTTPCore, info: SamplerInfo) -> None:
        self._http = http
        self._info = info
        self._tokenizer: PreTrainedTokenizerBase | None = None

    def __repr__(self) -> str:
        return (
            f"SamplingClient(sampler_id={self.sampler_id!r}, source={self._info.source!r}, "
            f"base_model={self._info.base_model!r})"
        )

    @property
    def sampler_id(self) -> str:
        """The server's id of this sampler."""
        return self._info.sampler_id

    @property
    def info(self) -> SamplerInfo:
        """What the sampler samples from (as the server reported it at creation)."""
        return self._info

    @property
    def model_path(self) -> str | None:
        """The ``tensafe://…/sampler_weights/…`` checkpoint sampled, if any."""
        return self._info.model_path

    def _path(self, route: str = "") -> str:
        return f"/v1/samplers/{self.sampler_id}{route}"

    # ---------------------------------------------------------------- model
    def get_base_model(self) -> str:
        """The name of the base model sampled (asks the server once for a run's
        sampler whose model was still loading when it was created)."""
        if self._info.source == "run":
            self._info = self._http.call(Request("GET", self._path(), response=SamplerInfo))
        return self._info.base_model

    async def get_base_model_async(self) -> str:
        """Async twin of :meth:`get_base_model`."""
        if self._info.source == "run":
            request = Request("GET", self._path(), response=SamplerInfo)
            self._info = await self._http.acall(request)
        return self._info.base_model

    def get_tokenizer(self) -> PreTrainedTokenizerBase:
        """The sampled model's tokenizer as a ``transformers`` tokenizer, built offline
        from files the server sends (cached on disk and on this client).

        Raises:
            ImportError: ``transformers`` is not installed.
        """
        if self._tokenizer is None:
            from tg_tinker._tokenizer import load_tokenizer, materialize

            files = self._http.call(
                Request("GET", self._path("/tokenizer"), response=TokenizerFiles)
            )
            self._tokenizer = load_tokenizer(materialize(files))
        return self._tokenizer

    # ---------------------------------------------------------------- operations
    def _sample_request(
        self,
        prompt: PromptInput,
        num_samples: int,
        sampling_params: SamplingParams | Mapping[str, object] | None,
        include_prompt_logprobs: bool,
        topk_prompt_logprobs: int,
    ) -> Request[FutureRef]:
        body = build_model(
            SampleRequest,
            prompt=_prompt(prompt),
            num_samples=num_samples,
            sampling_params=_params(sampling_params),
            prompt_logprobs=include_prompt_logprobs,
            topk_prompt_logprobs=topk_prompt_logprobs,
        )
        return Request("POST", self._path("/sample"), response=FutureRef, body=body)

    def sample(
        self,
        prompt: PromptInput,
        num_samples: int = 1,
        sampling_params: SamplingParams | Mapping[str, object] | None = None,
        *,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
    ) -> APIFuture[SampleResponse]:
        """``num_samples`` completions of ``prompt`` (token ids or a ModelInput).

        Args:
            prompt: the prompt's token ids.
            num_samples: independent completions (the server's limit applies, 64 by
                default).
            sampling_params: :class:`SamplingParams` or a dict of its fields; default
                temperature 1, stop at end of sequence, fill the context.
            include_prompt_logprobs: also return the raw model's prompt logprobs.
            topk_prompt_logprobs: also return the top-k tokens per prompt position (≤ 20).

        Raises:
            ValidationError: malformed input (here, naming the field); from the future,
                input the model refuses (``prompt`` too long,
                ``sampling_params.max_tokens`` beyond the context).
        """
        request = self._sample_request(
            prompt, num_samples, sampling_params, include_prompt_logprobs, topk_prompt_logprobs
        )
        return APIFuture(self._http, self._http.call(request), SampleResponse)

    async def sample_async(
        self,
        prompt: PromptInput,
        num_samples: int = 1,
        sampling_params: SamplingParams | Mapping[str, object] | None = None,
        *,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
    ) -> APIFuture[SampleResponse]:
        """Async twin of :meth:`sample` (``await`` the future for the response)."""
        request = self._sample_request(
            prompt, num_samples, sampling_params, include_prompt_logprobs, topk_prompt_logprobs
        )
        return APIFuture(self._http, await self._http.acall(request), SampleResponse)

    def _logprobs_request(self, prompt: PromptInput, topk: int) -> Request[FutureRef]:
        body = build_model(ComputeLogprobsRequest, prompt=_prompt(prompt), topk=topk)
        return Request("POST", self._path("/compute_logprobs"), response=FutureRef, body=body)

    def compute_logprobs(
        self, prompt: PromptInput, *, topk: int = 0
    ) -> APIFuture[ComputeLogprobsResponse]:
        """The raw model's log-probability of each prompt token given the ones before it
        (``logprobs[0]`` is ``None``); ``topk`` > 0 adds the top tokens per position.

        Raises:
            ValidationError: malformed input; from the future, a prompt beyond the context.
        """
        request = self._logprobs_request(prompt, topk)
        return APIFuture(self._http, self._http.call(request), ComputeLogprobsResponse)

    async def compute_logprobs_async(
        self, prompt: PromptInput, *, topk: int = 0
    ) -> APIFuture[ComputeLogprobsResponse]:
        """Async twin of :meth:`compute_logprobs`."""
        request = self._logprobs_request(prompt, topk)
        return APIFuture(self._http, await self._http.acall(request), ComputeLogprobsResponse)


__all__ = ["PromptInput", "SamplingClient", "create_sampler_request"]
