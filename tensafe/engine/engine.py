"""The training engine: one object owning model, optimizer, noise and accountant.

A DP step reads like the algorithm::

    forward_backward(batch)  →  per-example losses → one backward pass →
                                clip each example to C → add to the clipped sum
    optim_step()             →  draw N(0, σ²C²) once → divide by q·N →
                                optimizer step → one accountant step

Each step is a named call of :class:`~tensafe.engine.dp_state.DPState`
(``engine.dp``, ``None`` without DP). Checking the privacy budget is not the
engine's job: the server's budget service checks it before calling
``optim_step`` and charges the step in the transaction that makes it visible.

Several ``forward_backward`` calls before an ``optim_step`` form one logical batch.
With ``DPConfig(enabled=False)`` the engine trains without privacy (for comparison
and non-sensitive data); a DP engine never falls back to that path.

Every operation validates its input first and changes no state when it raises.
The engine is not thread-safe: callers (the server's worker) serialise operations
per run. The operations that run the model or read/write its weights hold
:func:`~tensafe.models.model_lock`, so generation (:mod:`tensafe.generation`) on
another thread never interleaves with them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tensafe.engine.dp_state import DPState
from tensafe.engine.faults import TestFault, check_fault
from tensafe.engine.guards import check_finite_sums, check_weights_finite, finite_update
from tensafe.engine.microbatches import (
    LossTally,
    add_sums,
    check_microbatch_examples,
    merge_clips,
    split_batch,
)
from tensafe.engine.optimizers import (
    AdamParams,
    OptimizerConfig,
    apply_adam_params,
    build_optimizer,
)
from tensafe.engine.probes import StepProbe
from tensafe.engine.results import (
    EngineInfo,
    ForwardBackwardResult,
    OptimStepResult,
)
from tensafe.errors import ConfigError, EngineStateError, InvalidBatchError, PrivacyError
from tensafe.losses import (
    DEFAULT_CHUNK_TOKENS,
    BatchLimits,
    Datum,
    LossFunction,
    LossOutput,
    TokenBatch,
    batch_from_arrays,
    batch_from_datums,
    check_chunk_tokens,
    check_token_batch,
    chunked_token_logprobs,
    get_loss_function,
    loss_from_logprobs,
    num_chunks,
    token_logprobs,
)
from tensafe.models import LoadedModel, LoRAConfig, apply_lora
from tensafe.models.locking import holds_model_lock
from tensafe.models.output_head import split_output_head
from tensafe.models.shared_base import privatize_trainable, shared_base_storages
from tensafe.privacy.config import DPConfig
from tensafe.privacy.per_example import ClipResult

BatchInput = TokenBatch | Sequence[Datum] | Mapping[str, Any]

STATE_FORMAT = 1

_MOVE_PROBES = 1024  # coordinates per tensor checked to have moved after the first step


class TrainingEngine:
    """Trains one model under DP-SGD (or plainly, when DP is disabled).

    Example::

        from tensafe.models import build_tiny_llama, LoRAConfig
        from tensafe.privacy import DPConfig
        engine = TrainingEngine(
            model=build_tiny_llama(),
            lora_config=LoRAConfig(rank=8),
            dp_config=DPConfig(noise_multiplier=1.0, dataset_size=1000, expected_batch_size=8),
        )
        engine.forward_backward({"input_ids": [[1, 2, 3]], "labels": [[2, 3, -100]]})
        result = engine.optim_step()
        print(result.step, result.dp_metrics.epsilon_spent)

    Args:
        model: the loaded base model and tokenizer.
        lora_config: LoRA adapter settings, or ``None`` for full fine-tuning.
        dp_config: required — pass ``DPConfig(enabled=False)`` to train without privacy.
        optimizer: the run's optimizer (AdamW by default).
        seed: seeds LoRA initialisation. It never seeds the DP noise.
        noise_seed: **test-only.** Seeds the DP noise generator deterministically so
            that two runs can be compared bit for bit (warns ``InsecureNoiseWarning``).
            ``None`` (the default, and the only safe choice for real data) draws the
            noise from an AES-256-CTR keystream under a key from the OS CSPRNG
            (:class:`~tensafe.privacy.NoiseSource`): anyone who knows a noise seed can
            regenerate the noise and subtract it from the released weights, which
            voids the privacy guarantee.
        device: where the model lives; the model is moved *before* LoRA wrapping
            and the optimizer is built last, so it holds the live parameters.
        limits: batch-size and sequence-length limits.
        loss_chunk_tokens: how many positions (summed over the batch) get their
            logits at once when losses and log-probabilities are computed: the
            output head and log-softmax run over ``(B, w)`` slices with
            ``B·w ≤ loss_chunk_tokens`` (at least one position per example), so
            the ``(B, T, V)`` logits never exist; the backward pass recomputes each
            slice. Equal results within float32 rounding. ``None`` computes the
            full logits (the reference path). Architectures that post-process
            their logits (see :func:`~tensafe.models.output_head.split_output_head`)
            always take the full path.
        microbatch_examples: run ``forward`` and ``forward_backward`` at most this
            many examples at a time, to bound a step's transient memory
            (activations, per-example clipping's per-layer tensors) whatever the
            batch size; ``None`` (the default) runs each batch in one pass. The
            result is the one pass's, up to float rounding: outputs in batch order,
            ``loss:sum`` and weights added (``loss:mean`` their quotient),
            ``grad_norm`` and the DP clip statistics computed over the whole batch,
            and under DP the micro-batches' clipped sums added (clipping is per
            example, so nothing about the privacy guarantee changes). With
            ``groups`` a unit's examples always share a micro-batch; a unit larger
            than the limit forms a micro-batch of its own. Each micro-batch is
            padded only to its own longest example.
        test_fault: **test-only.** Breaks the DP step on purpose (``"sigma/10"``,
            ``"no-clipping"``; :mod:`tensafe.engine.faults`) so that tests can show the
            privacy audit catching it; warns ``BrokenPrivacyWarning``. Never set it
            on real data: the ε the accountant reports is then false.

    Raises:
        ConfigError: invalid LoRA, optimizer or DP settings, ``test_fault``, or
            ``loss_chunk_tokens`` or ``microbatch_examples`` not ``None`` or a
            positive integer; on a model
            from a :class:`~tensafe.models.BaseModelPool` (frozen base shared with
            other runs): ``lora_config=None`` (full fine-tuning needs a model of its
            own) or a ``device`` other than the pooled base's.
        PrivacyError: DP requested on a model with trainable layers whose
            per-example gradients cannot be computed; on a pooled model, a
            trainable parameter still sharing the base's storage after wrapping
            (:func:`~tensafe.models.shared_base.privatize_trainable` copies those).
    """

    def __init__(
        self,
        *,
        model: LoadedModel,
        lora_config: LoRAConfig | None,
        dp_config: DPConfig,
        optimizer: OptimizerConfig = OptimizerConfig(),
        seed: int = 0,
        noise_seed: int | None = None,
        device: str | torch.device = "cpu",
        limits: BatchLimits = BatchLimits(),
        loss_chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS,
        microbatch_examples: int | None = None,
        test_fault: TestFault | None = None,
    ) -> None:
        if loss_chunk_tokens is not None:
            check_chunk_tokens(loss_chunk_tokens, field="loss_chunk_tokens")
        self.loss_chunk_tokens = loss_chunk_tokens
        check_microbatch_examples(microbatch_examples)
        self.microbatch_examples = microbatch_examples
        fault = check_fault(test_fault)
        if fault is not None and not dp_config.enabled:
            raise ConfigError("test_fault", "breaks the DP step: needs a DP run")
        self.device = torch.device(device)
        self.name = model.name
        self.arch = model.arch
        self.tokenizer = model.tokenizer
        self.lora_config = lora_config
        self.optimizer_config = optimizer
        self.dp_config = dp_config
        self.limits = limits
        self.vocab_size = int(model.model.get_input_embeddings().weight.shape[0])
        _check_pooled(model, lora_config=lora_config, device=self.device)
        net: nn.Module = model.model.to(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if lora_config is not None:
                net = apply_lora(net, lora_config)
                privatize_trainable(net)  # a pooled base is never trained in place
            else:
                for p in net.parameters():
                    p.requires_grad_(True)
        net.train()
        self.model = net
        self._split = split_output_head(net) if loss_chunk_tokens is not None else None
        self.params: list[nn.Parameter] = [p for p in net.parameters() if p.requires_grad]
        if not self.params:
            raise PrivacyError("the model has no trainable parameters")
        self._param_names = {id(p): n for n, p in net.named_parameters() if p.requires_grad}
        self.optimizer = build_optimizer(self.params, optimizer)
        self.step = 0
        self._acc: dict[nn.Parameter, torch.Tensor] = {}
        self._acc_examples = 0
        self._acc_losses: list[float] = []
        self._probe: StepProbe | None = None
        self.dp: DPState | None = (
            DPState.create(
                dp_config.resolve(),
                model=net,
                noise_seed=noise_seed,
                device=self.device,
                fault=fault,
            )
            if dp_config.enabled
            else None
        )

    # ------------------------------------------------------------------ input
    def to_batch(
        self,
        batch: BatchInput,
        *,
        required_inputs: Sequence[str] = ("target_tokens",),
        signed_weights: bool = False,
    ) -> TokenBatch:
        """Validate any accepted batch form and return a :class:`TokenBatch`.

        Raises:
            InvalidBatchError: naming the offending field (see :mod:`tensafe.losses.batch`).
        """
        if isinstance(batch, TokenBatch):
            check_token_batch(batch)  # built by hand: its float inputs were never checked
            return batch
        if isinstance(batch, Mapping):
            unknown = set(batch) - {"input_ids", "attention_mask", "labels"}
            if unknown:
                raise InvalidBatchError(
                    sorted(unknown)[0],
                    "unknown field; BatchData has input_ids, attention_mask, labels",
                )
            if "input_ids" not in batch:
                raise InvalidBatchError("input_ids", "is required")
            return batch_from_arrays(
                input_ids=batch["input_ids"],
                attention_mask=batch.get("attention_mask"),
                labels=batch.get("labels"),
                vocab_size=self.vocab_size,
                limits=self.limits,
            )
        return batch_from_datums(
            list(batch),
            vocab_size=self.vocab_size,
            required_inputs=required_inputs,
            limits=self.limits,
            signed_weights=signed_weights,
        )

    def _model_inputs(self, batch: TokenBatch) -> dict[str, Any]:
        positions = torch.arange(batch.input_ids.shape[1], device=self.device)
        return {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "position_ids": positions.unsqueeze(0).expand_as(batch.input_ids),
            "use_cache": False,
        }

    def _logits(self, batch: TokenBatch) -> torch.Tensor:
        """The full ``(B, T, V)`` logits (the reference path)."""
        return self.model(**self._model_inputs(batch)).logits

    def _token_logprobs(self, batch: TokenBatch) -> torch.Tensor:
        """``(B, T)`` float32 ``log p(target)``: the output head applied chunk by chunk
        (``loss_chunk_tokens``) where the architecture allows, else from full logits."""
        if self._split is None or self.loss_chunk_tokens is None:
            return token_logprobs(self._logits(batch), batch.targets)
        hidden = self._split.body(**self._model_inputs(batch)).last_hidden_state
        return chunked_token_logprobs(
            hidden,
            head=self._split.head,
            targets=batch.targets,
            chunk_tokens=self.loss_chunk_tokens,
        )

    def _repeated_modules(self, batch: TokenBatch) -> tuple[nn.Module, ...]:
        """The modules :meth:`_token_logprobs` calls more than once for ``batch``
        (the output head and its LoRA parts, when the positions span several chunks)."""
        if self._split is None or self.loss_chunk_tokens is None:
            return ()
        batch_size, seq_len = batch.input_ids.shape
        if num_chunks(batch_size, seq_len, chunk_tokens=self.loss_chunk_tokens) == 1:
            return ()
        return tuple(self._split.head.modules())

    def _loss(
        self, batch: TokenBatch, *, fn: LossFunction, config: Mapping[str, float]
    ) -> LossOutput:
        return loss_from_logprobs(self._token_logprobs(batch), batch, loss_fn=fn, config=config)

    # --------------------------------------------------------------- forward
    @holds_model_lock
    def forward(
        self,
        batch: BatchInput,
        *,
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float] | None = None,
    ) -> ForwardBackwardResult:
        """Loss and log-probabilities without gradients; changes no state. Runs in
        micro-batches of ``microbatch_examples`` when that is set (same result)."""
        fn = get_loss_function(loss_fn)
        cfg = fn.resolve_config(loss_fn_config)
        tb = self.to_batch(
            batch, required_inputs=fn.required_inputs, signed_weights=fn.signed_weights
        ).to(self.device)
        tally = LossTally(tb.batch_size)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for part in split_batch(tb, max_examples=self.microbatch_examples, groups=None):
                    tally.add(part, self._loss(part.batch, fn=fn, config=cfg))
        finally:
            self.model.train(was_training)
        return self._result(fn.name, tally, grad_norm=None, extra={})

    @holds_model_lock
    def forward_backward(
        self,
        batch: BatchInput,
        *,
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float] | None = None,
        groups: Sequence[int] | None = None,
    ) -> ForwardBackwardResult:
        """Accumulate this batch's gradient into the current logical batch.

        Under DP each example's gradient is clipped to ``max_grad_norm`` and only the
        clipped sum is kept; no noise is added here. ``groups`` (DP only; one label per
        example) makes the examples that share a label one contribution: their summed
        gradient is clipped to ``max_grad_norm`` (a record's several completions, a
        person's records). An example whose gradient is NaN
        or infinite contributes nothing (metric ``dp/nonfinite_examples:sum``). State
        changes only after the whole computation succeeded.

        With ``microbatch_examples`` set, the batch runs in micro-batches of at most
        that many examples (a ``groups`` unit is never split: one larger than the
        limit is a micro-batch of its own); their sums are added locally and
        committed once, after the last one succeeded. The result is the one pass's
        (see the class docstring).

        Raises:
            InvalidBatchError, ConfigError: bad input (nothing changed); ``groups`` without
                DP (``groups``) or not one label per example.
            NonFiniteUpdateError: the batch's gradient sum is not finite (only
                possible without DP, where one example's overflow reaches the sum);
                nothing was accumulated.
            PrivacyError: per-example gradients could not be computed safely.
        """
        fn = get_loss_function(loss_fn)
        cfg = fn.resolve_config(loss_fn_config)
        tb = self.to_batch(
            batch, required_inputs=fn.required_inputs, signed_weights=fn.signed_weights
        ).to(self.device)
        if groups is not None and self.dp is None:
            raise ConfigError("groups", "groups clip units together: a DP run's option")
        parts = split_batch(tb, max_examples=self.microbatch_examples, groups=groups)
        tally = LossTally(tb.batch_size)
        sums: dict[nn.Parameter, torch.Tensor] = {}  # this call's, committed only at the end
        clips: list[ClipResult] = []
        for part in parts:
            if self.dp is not None:
                out, clip = self._clipped_backward(
                    self.dp, part.batch, fn=fn, config=cfg, groups=part.groups
                )
                part_sums = clip.sums
                clips.append(dataclasses.replace(clip, sums={}))  # per-unit stats only
                del clip
            else:
                out, part_sums = self._plain_backward(part.batch, fn=fn, config=cfg)
            add_sums(sums, part_sums)
            tally.add(part, out)
            del out, part_sums  # last references: freed before the next micro-batch runs
        extra = {} if self.dp is None else self.dp.clip_metrics(merge_clips(clips, sums=sums))
        # one pass per tensor, no squared temporary (a vector norm, squared)
        grad_sq = sum(
            float(torch.linalg.vector_norm(s, dtype=torch.promote_types(s.dtype, torch.float32)))
            ** 2
            for s in sums.values()
        )
        if not math.isfinite(grad_sq):  # the sums may still be finite (squares overflow)
            check_finite_sums(sums, names=self._param_names)
        self._accumulate(sums, examples=tb.batch_size)  # commit: from here on nothing can fail
        result = self._result(
            fn.name, tally, grad_norm=math.sqrt(grad_sq) / tb.batch_size, extra=extra
        )
        self._acc_losses.append(result.loss)
        return result

    def _clipped_backward(
        self,
        dp: DPState,
        tb: TokenBatch,
        *,
        fn: LossFunction,
        config: Mapping[str, float],
        groups: Sequence[int] | None = None,
    ) -> tuple[LossOutput, ClipResult]:
        """Per-example (per-unit, with ``groups``) gradients, each clipped to C, summed
        per parameter (DP path)."""
        with dp.clipper.collect(
            batch_size=tb.batch_size, groups=groups, repeated=self._repeated_modules(tb)
        ) as collector:
            out = self._loss(tb, fn=fn, config=config)
            out.per_example.sum().backward()
        # Per-example clipping sees only the hooked layers; a gradient that reached
        # .grad went around it and would be unclipped.
        stray = [self._param_names[id(p)] for p in self.params if p.grad is not None]
        if stray:
            for p in self.params:
                p.grad = None
            raise PrivacyError(
                "gradients reached parameters outside per-example clipping: " + ", ".join(stray[:5])
            )
        return out, dp.clip(collector)

    def _plain_backward(
        self, tb: TokenBatch, *, fn: LossFunction, config: Mapping[str, float]
    ) -> tuple[LossOutput, dict[nn.Parameter, torch.Tensor]]:
        """The summed gradient of the batch per parameter (non-DP path)."""
        out = self._loss(tb, fn=fn, config=config)
        grads = torch.autograd.grad(out.per_example.sum(), self.params, allow_unused=True)
        return out, {p: g for p, g in zip(self.params, grads, strict=True) if g is not None}

    def _accumulate(self, sums: Mapping[nn.Parameter, torch.Tensor], *, examples: int) -> None:
        """Add gradient sums to the logical batch's accumulator (in at least float32)."""
        add_sums(self._acc, sums)
        self._acc_examples += examples

    def _result(
        self,
        name: str,
        tally: LossTally,
        *,
        grad_norm: float | None,
        extra: Mapping[str, float],
    ) -> ForwardBackwardResult:
        outputs = tally.outputs()
        metrics = {
            "loss:mean": tally.loss_mean,
            "loss:sum": tally.loss_sum,
            "num_examples:sum": float(len(outputs)),
            "step:max": float(self.step),
            **extra,
        }
        return ForwardBackwardResult(
            loss=tally.loss_mean,
            grad_norm=grad_norm,
            tokens_processed=tally.num_tokens,
            loss_fn_output_type=name,
            loss_fn_outputs=outputs,
            metrics=metrics,
        )

    # ------------------------------------------------------------ optimizer
    def epsilon(self, delta: float | None = None) -> float:
        """ε spent so far at ``delta`` (the run's δ by default); 0 before any step.

        Raises:
            EngineStateError: the run does not use differential privacy.
        """
        if self.dp is None:
            raise EngineStateError("this run does not use differential privacy")
        return self.dp.epsilon(delta)

    def attach_probe(self, probe: StepProbe | None) -> None:
        """Let ``probe`` add clipped contributions to every following DP step and see
        its noisy gradient (a privacy audit's gradient canaries,
        :mod:`tensafe.engine.probes`); ``None`` detaches it.

        Raises:
            EngineStateError: the run does not use differential privacy.
        """
        if self.dp is None and probe is not None:
            raise EngineStateError("a step probe audits the DP step: this run has none")
        self._probe = probe

    @holds_model_lock
    def optim_step(self, adam_params: AdamParams | None = None) -> OptimStepResult:
        """Apply the logical batch: noise once (DP), scale, optimizer step, account.

        Under DP the clipped sum gets N(0, σ²C²) per coordinate and is divided by
        the *expected* batch size q·N, whatever the realised batch size; a step
        with no examples is legal (Poisson sampling can draw an empty batch) and
        applies noise only. Without DP the summed gradient is divided by the
        number of examples, and a step without examples is refused.

        The privacy budget is not checked here: the server's budget service does
        that before it calls ``optim_step``.

        A non-finite update is never applied: every gradient is checked in its
        parameter's dtype before the optimizer runs, and if one has a NaN or an
        infinity the step is refused with weights, optimizer state, accountant,
        step counter and accumulated gradients unchanged, and no accountant step
        (the noise generator has moved on, so a retry draws fresh noise).

        Args:
            adam_params: per-step hyperparameters (Tinker style); the run's
                optimizer config otherwise.

        Raises:
            EngineStateError: non-DP step with no accumulated gradient.
            NonFiniteUpdateError: the update is not finite (nothing changed).
            PrivacyError: after the optimizer step, a trainable tensor did not
                change after the first step (the optimizer is not updating the
                model) or is no longer finite (e.g. a learning rate too large for
                float16); the engine has changed and must be restored from a
                checkpoint; nothing was accounted.
        """
        if self.dp is None:
            if self._acc_examples == 0:
                raise EngineStateError(
                    "optim_step: no gradients accumulated; call forward_backward first"
                )
            grads = finite_update(
                self.params, self._mean_gradients(), names=self._param_names, noisy=False
            )
        else:
            extra = {} if self._probe is None else self._probe.contributions(self.dp)
            grads = finite_update(
                self.params,
                self._noisy_gradients(self.dp, extra),
                names=self._param_names,
                noisy=True,
            )
        self._apply(grads, adam_params)  # from here on the engine has changed
        if self.dp is not None and self._probe is not None:
            self._probe.observe(grads, self.dp)
        dp_metrics = None if self.dp is None else self.dp.account()
        self.step += 1
        examples = self._acc_examples
        recent = float(np.mean(self._acc_losses)) if self._acc_losses else float("nan")
        self._acc.clear()
        self._acc_examples = 0
        self._acc_losses.clear()
        lr = float(self.optimizer.param_groups[0]["lr"])
        return OptimStepResult(
            step=self.step,
            learning_rate=lr,
            examples_in_batch=examples,
            dp_metrics=dp_metrics,
            metrics={
                "step:max": float(self.step),
                "learning_rate:mean": lr,
                "recent_loss:mean": recent,
            },
        )

    def _noisy_gradients(
        self, dp: DPState, extra: Mapping[nn.Parameter, torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per parameter, in ``self.params`` order and in its dtype: (clipped sum +
        noise) ÷ q·N, the sum including a probe's ``extra`` clipped contributions
        (never stored, so a refused step leaves the accumulator as it was); the
        order of the noise draws is the parameter order."""
        sums = []
        for p in self.params:
            acc, more = self._acc.get(p), extra.get(p)
            sums.append(acc if more is None else more if acc is None else acc + more)
        return dp.noisy_gradients(sums, like=self.params)

    def _mean_gradients(self) -> Iterator[torch.Tensor | None]:
        """Per parameter: the summed gradient ÷ the number of examples (``None``
        for a parameter no example reached)."""
        for p in self.params:
            acc = self._acc.get(p)
            yield None if acc is None else acc / self._acc_examples

    def _apply(self, grads: list[torch.Tensor | None], adam_params: AdamParams | None) -> None:
        """Set each parameter's gradient (already in its own dtype) and take the
        optimizer step; after the run's first step, check that the weights moved,
        and after every step that they are finite."""
        for p, grad in zip(self.params, grads, strict=True):
            p.grad = grad
        snapshot = self._moved_probes() if self.step == 0 else None
        if adam_params is not None:
            apply_adam_params(self.optimizer, adam_params, name=self.optimizer_config.name)
        self.optimizer.step()
        if snapshot is not None:
            self._check_weights_moved(snapshot)
        check_weights_finite(self.params, names=self._param_names)
        self.optimizer.zero_grad(set_to_none=True)

    def _moved_probes(self) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per parameter, before the optimizer step: flat positions where its gradient
        is non-zero (up to ``_MOVE_PROBES`` evenly spaced ones, and the first one)
        and the weights there; ``None`` where the gradient is absent or zero. A copy
        of a few values per tensor, not of the model (a full copy would add the
        model's size to the first step's peak memory)."""
        probes: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for p in self.params:
            if p.grad is None:
                probes.append(None)
                continue
            grad = p.grad.detach().reshape(-1)
            where = probe_positions(grad)
            weights = p.detach().reshape(-1)[where].clone()
            probes.append((where, weights) if where.numel() else None)
        return probes

    def _check_weights_moved(self, probes: list[tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        # A coordinate with a non-zero gradient and a positive learning rate must
        # move (Adam moves it by about the learning rate, SGD by lr × gradient), so a
        # tensor none of whose probed coordinates moved is not being updated: the
        # "optimizer holds stale copies" failure (e.g. a model moved to a device after
        # the optimizer was built). Under DP every gradient is non-zero (noise), so
        # every tensor is probed.
        frozen = [
            self._param_names[id(p)]
            for p, probe in zip(self.params, probes, strict=True)
            if probe is not None and torch.equal(p.detach().reshape(-1)[probe[0]], probe[1])
        ]
        if frozen:
            raise PrivacyError(
                "trainable tensors did not change after step 1 although they had gradients: "
                + ", ".join(frozen[:5])
            )

    # ----------------------------------------------------------------- state
    @holds_model_lock
    def state_dict(self) -> dict[str, Any]:
        """Trainable weights (by parameter name), optimizer state, accountant
        history and step. Refuses while gradients are pending, so a checkpoint
        always sits on a step boundary."""
        if self._acc_examples:
            raise EngineStateError("save_state: gradients are pending; call optim_step first")
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "weights": {self._param_names[id(p)]: p.detach().clone() for p in self.params},
            # torch returns live state tensors; copy so the checkpoint is a snapshot
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "accountant": None if self.dp is None else self.dp.accountant.state_dict(),
            "noise": {} if self.dp is None else self.dp.noise.state_dict(),
        }

    @holds_model_lock
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`. Everything is checked (names, shapes, DP
        mode) before anything is written; pending gradients are discarded.

        Raises:
            EngineStateError: the state does not belong to this kind of run.
        """
        if state.get("format") != STATE_FORMAT:
            raise EngineStateError(f"unsupported engine state format {state.get('format')!r}")
        weights = state["weights"]
        by_name = {self._param_names[id(p)]: p for p in self.params}
        if set(weights) != set(by_name):
            missing = sorted(set(by_name) - set(weights))[:3]
            extra = sorted(set(weights) - set(by_name))[:3]
            raise EngineStateError(
                f"checkpoint weights do not match this run (missing {missing}, unexpected {extra})"
            )
        for name, tensor in weights.items():
            if tuple(tensor.shape) != tuple(by_name[name].shape):
                raise EngineStateError(
                    f"checkpoint weight {name} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(by_name[name].shape)}"
                )
        if (state.get("accountant") is None) != (self.dp is None):
            raise EngineStateError("checkpoint DP mode does not match this run's")
        probe = build_optimizer(self.params, self.optimizer_config)
        probe.load_state_dict(copy.deepcopy(state["optimizer"]))  # validates before we touch ours
        with torch.no_grad():
            for name, tensor in weights.items():
                by_name[name].copy_(tensor.to(by_name[name].device, by_name[name].dtype))
        self.optimizer = probe
        if self.dp is not None:
            self.dp.accountant.load_state_dict(state["accountant"])
            self.dp.noise.load_state_dict(state.get("noise", {}))
        self.step = int(state["step"])
        self._acc.clear()
        self._acc_examples = 0
        self._acc_losses.clear()

    def reseed_noise(self) -> None:
        """Re-key the DP noise generator from the OS CSPRNG (e.g. after restoring a
        checkpoint, so earlier noise is never replayed). No-op without DP."""
        if self.dp is not None:
            self.dp.noise.reseed()

    def fresh_optimizer_state(self) -> dict[str, Any]:
        """The state dict of a newly built optimizer for this run (no moments yet)."""
        return build_optimizer(self.params, self.optimizer_config).state_dict()

    def info(self) -> EngineInfo:
        """Model name, architecture, LoRA rank and parameter counts."""
        trainable = sum(p.numel() for p in self.params)
        total = sum(p.numel() for p in self.model.parameters())
        return EngineInfo(
            model_name=self.name,
            arch=self.arch,
            is_lora=self.lora_config is not None,
            lora_rank=None if self.lora_config is None else self.lora_config.rank,
            trainable_params=trainable,
            total_params=total,
            vocab_size=self.vocab_size,
            dp_enabled=self.dp is not None,
            step=self.step,
        )


def probe_positions(grad: torch.Tensor, *, count: int = _MOVE_PROBES) -> torch.Tensor:
    """Sorted flat positions of the 1-d ``grad`` where it is non-zero, among ``count``
    evenly spaced positions (first and last included) and the first non-zero one:
    int64, empty when ``grad`` is all zeros or empty."""
    n = grad.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=grad.device)
    spaced = torch.arange(min(n, count), dtype=torch.int64, device=grad.device)
    if n > count:  # exact in int64 (a float32 linspace rounds 28,311,551 up to n)
        spaced = spaced * (n - 1) // (count - 1)
    first = torch.argmax(grad.ne(0).to(torch.uint8)).view(1)  # 0 when all are 0
    where = torch.cat([spaced, first]).unique()
    return where[grad[where].ne(0)]


def _check_pooled(
    model: LoadedModel, *, lora_config: LoRAConfig | None, device: torch.device
) -> None:
    """Refuse what would write a pooled (shared, frozen) base model's tensors or copy them."""
    if shared_base_storages(model.model) is None:
        return
    if lora_config is None:
        raise ConfigError(
            "lora_config",
            "full fine-tuning would train the base model that other runs share; "
            "load a model of its own for it (load_causal_lm), or give a LoRA config",
        )
    on = model.device
    wanted = device
    if wanted.type == "cuda" and wanted.index is None:
        wanted = torch.device("cuda", torch.cuda.current_device())
    if on != wanted:
        raise ConfigError(
            "device",
            f"the pooled base model is on {on}, the run asks for {device}: moving it "
            "would copy the shared weights; take it from a pool on that device",
        )


__all__ = ["BatchInput", "TrainingEngine"]
