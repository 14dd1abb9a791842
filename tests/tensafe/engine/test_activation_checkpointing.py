"""Activation checkpointing (``activation_checkpointing=True``) changes memory, not results.

Each case runs the same batch through two engines built alike in float64 — one
keeping every activation, one recomputing each decoder layer in the backward pass —
and compares the accumulated (clipped) sums, per-example outputs, loss, grad norm
and every DP clip metric to 1e-12, then the weights after ``optim_step``. Clipping
bites on part of the examples, so a layer recorded twice (or not at all) during the
recomputation would move the norms and the sums: shown directly below with a site
that records twice. Hooks inside a decoder layer prove the layer really runs again
in the backward pass, and a saved-tensor hook that the checkpointed engine saves
less for backward.
"""

from __future__ import annotations

import collections
import functools

import numpy as np
import pytest
import torch
import torch.utils.checkpoint
from torch import nn

from tensafe.engine import ForwardBackwardResult, TrainingEngine
from tensafe.errors import ConfigError
from tensafe.losses import get_loss_function
from tensafe.models import BaseModelPool, LoRAConfig, build_tiny_llama
from tensafe.models.checkpointing import checkpointed_layers, set_activation_checkpointing
from tensafe.privacy import DPConfig
from tensafe.privacy.per_example import ClipCollector, _Site

from .conftest import make_engine
from .test_dp_step import _randomise_lora_b
from .test_microbatches import CHUNK, _acc, _batch, _clear, _clip_between

RTOL = 1e-12
GROUPS = [0, 0, 1, 2, 2, 2, 3]


def _pair(**kw) -> tuple[TrainingEngine, TrainingEngine]:
    kw = {"dtype": torch.float64, "loss_chunk_tokens": CHUNK, **kw}
    plain = make_engine(**kw)
    ckpt = make_engine(activation_checkpointing=True, **kw)
    if kw.get("lora", True):
        _randomise_lora_b(plain)
        _randomise_lora_b(ckpt)
    return plain, ckpt


def _close(got: float | None, want: float | None) -> bool:
    if want is None or got is None:
        return got is want
    return abs(got - want) <= RTOL * max(abs(want), 1e-30)


def _same_result(got: ForwardBackwardResult, want: ForwardBackwardResult) -> bool:
    return (
        got.tokens_processed == want.tokens_processed
        and _close(got.loss, want.loss)
        and _close(got.grad_norm, want.grad_norm)
        and got.metrics.keys() == want.metrics.keys()
        and all(_close(got.metrics[k], v) for k, v in want.metrics.items())
        and all(
            np.allclose(g.logprobs, w.logprobs, rtol=RTOL, atol=0)
            and np.allclose(g.elementwise_loss, w.elementwise_loss, rtol=RTOL, atol=0)
            for g, w in zip(got.loss_fn_outputs, want.loss_fn_outputs, strict=True)
        )
    )


def _same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> bool:
    return (
        bool(got)
        and got.keys() == want.keys()
        and all(
            float((got[k] - w).abs().max()) <= RTOL * max(float(w.abs().max()), 1e-30)
            for k, w in want.items()
        )
    )


def _weights(engine: TrainingEngine) -> dict[str, torch.Tensor]:
    return {engine._param_names[id(p)]: p.detach().clone() for p in engine.params}


def _layer_runs(engine: TrainingEngine) -> list[int]:
    """Counts the runs of decoder layer 0's MLP (a pre-hook: a recomputation stops
    early once the tensors it needs are saved, so a post-hook may never fire)."""
    runs = [0]
    layer = next(m for n, m in engine.model.named_modules() if n.endswith("layers.0.mlp"))
    layer.register_forward_pre_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    return runs


CASES = {
    "dp-lora": {"lora": True},
    "dp-full-tied": {"lora": False},  # tied embedding/head, head repeated: instantiated
    "dp-full-tied-gram": {"lora": False, "loss_chunk_tokens": 1024},  # one chunk: Gram route
    "dp-full-untied": {"lora": False, "tied": False},
    "dp-lora-microbatch": {"lora": True, "microbatch_examples": 3},
    "dp-full-microbatch": {"lora": False, "microbatch_examples": 3},
}


@pytest.mark.parametrize("groups", [None, GROUPS], ids=["examples", "groups"])
@pytest.mark.parametrize("case", list(CASES))
def test_checkpointed_dp_step_equals_plain(case: str, groups: list[int] | None) -> None:
    kw = CASES[case]
    batch = _batch()
    C = _clip_between(
        make_engine(
            **{"dtype": torch.float64, "loss_chunk_tokens": CHUNK, **kw}, max_grad_norm=1e9
        ),
        batch,
        groups=groups,
    )
    plain, ckpt = _pair(max_grad_norm=C, **kw)
    runs = _layer_runs(ckpt)
    want = plain.forward_backward(batch, groups=groups)
    got = ckpt.forward_backward(batch, groups=groups)
    parts = 3 if "microbatch_examples" in kw else 1
    assert runs[0] == 2 * parts  # forward, then again in the backward pass
    assert 0 < want.metrics["dp/clip_fraction"] < 1  # clipping bites on some units
    assert _same_result(got, want)
    assert _same_tensors(_acc(ckpt), _acc(plain))
    plain.optim_step()
    ckpt.optim_step()
    assert _same_tensors(_weights(ckpt), _weights(plain))
    assert not _same_tensors(_weights(ckpt), _weights(make_engine(dtype=torch.float64, **kw)))


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_checkpointed_plain_step_equals_plain(lora: bool) -> None:
    batch = _batch()
    plain, ckpt = _pair(lora=lora, dp=False)
    assert _same_result(ckpt.forward_backward(batch), plain.forward_backward(batch))
    assert _same_tensors(_acc(ckpt), _acc(plain))
    plain.optim_step()
    ckpt.optim_step()
    assert _same_tensors(_weights(ckpt), _weights(plain))


def test_seeded_noise_step_equals_plain() -> None:
    batch = _batch()
    plain, ckpt = _pair(sigma=0.8)
    plain.forward_backward(batch)
    ckpt.forward_backward(batch)
    plain.optim_step()
    ckpt.optim_step()
    assert _same_tensors(_weights(ckpt), _weights(plain))


@pytest.mark.parametrize(
    ("lora", "chunk"),
    [(True, CHUNK), (False, CHUNK), (False, 1024)],
    ids=["lora-chunked-head", "full-chunked-head", "full-gram"],
)
def test_every_site_records_once_per_use(monkeypatch, lora: bool, chunk: int) -> None:
    """The recomputation refills saved tensors only: each clipping site (by module
    name) reports as many times as without checkpointing, every layer call takes the
    same route (ghost, instantiate, Gram for the tied embedding/head) and q/k/v, gate/up
    still share their input's Gram."""
    counts: collections.Counter[nn.Module] = collections.Counter()
    routes: list[tuple[dict[str, int], int]] = []
    record, clip = _Site.record, ClipCollector.clip

    def counting_record(self, inp, grad_out):
        counts[self.module] += 1
        return record(self, inp, grad_out)

    def noting_clip(self, max_grad_norm):
        routes.append((dict(self.strategy_counts), self.shared_input_grams))
        return clip(self, max_grad_norm)

    monkeypatch.setattr(_Site, "record", counting_record)
    monkeypatch.setattr(ClipCollector, "clip", noting_clip)
    batch = _batch()
    per_engine = []
    for engine in _pair(lora=lora, loss_chunk_tokens=chunk):
        counts.clear()
        engine.forward_backward(batch)
        names = {m: n for n, m in engine.model.named_modules()}
        per_engine.append({names[m]: c for m, c in counts.items()})
        repeated = engine._repeated_modules(engine.to_batch(batch))
        assert bool(repeated) == (chunk == CHUNK)  # the head applied chunk by chunk
    assert per_engine[0] == per_engine[1] and per_engine[0]
    assert routes[0] == routes[1]
    if not lora:  # the tied embedding/head takes the Gram route unless chunked
        assert (routes[0][0].get("gram", 0) > 0) == (chunk != CHUNK)
        assert routes[0][0]["ghost"] > 0 and routes[0][1] > 0


def test_comparison_catches_a_site_that_records_twice(monkeypatch) -> None:
    """A site that reported again during the recomputation would count that layer
    twice: the equality check used above fails on it."""
    batch = _batch()
    C = _clip_between(make_engine(lora=False, dtype=torch.float64, max_grad_norm=1e9), batch)
    plain, ckpt = _pair(lora=False, max_grad_norm=C)
    want = plain.forward_backward(batch)
    record = _Site.record

    def recording_twice(self, inp, grad_out):
        record(self, inp, grad_out)
        if self.kind == "rmsnorm":  # the decoder layers' norm gains (and the final norm)
            record(self, inp, grad_out)

    monkeypatch.setattr(_Site, "record", recording_twice)
    got = ckpt.forward_backward(batch)
    assert not _same_result(got, want)
    assert not _same_tensors(_acc(ckpt), _acc(plain))


def test_checkpointing_saves_fewer_tensors_for_backward() -> None:
    batch = _batch()
    saved = []
    for engine in _pair():
        nbytes = [0]

        def pack(t: torch.Tensor, nbytes=nbytes) -> torch.Tensor:
            nbytes[0] += t.numel() * t.element_size()
            return t

        tb = engine.to_batch(batch)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = engine._loss(tb, fn=get_loss_function("cross_entropy"), config={})
        del out
        saved.append(nbytes[0])
    assert saved[1] < 0.6 * saved[0], saved


def test_forward_without_gradients_is_not_recomputed() -> None:
    plain, ckpt = _pair()
    runs = _layer_runs(ckpt)
    batch = _batch()
    assert _same_result(ckpt.forward(batch), plain.forward(batch))
    assert runs[0] == 1  # eval mode, no gradients: the layer runs once
    assert ckpt.model.training  # and the engine is back in training mode
    _clear(ckpt)


def test_pooled_runs_choose_independently() -> None:
    """Two runs on one pooled base: checkpointing on for one leaves the other's layers
    alone, and both compute the same step."""
    pool = BaseModelPool()
    engines = [
        TrainingEngine(
            model=pool.lora_model(model_ref="tiny-llama", dtype=torch.float64),
            lora_config=LoRAConfig(rank=4, alpha=8),
            dp_config=DPConfig(
                noise_multiplier=0.0,
                allow_zero_noise=True,
                max_grad_norm=1.0,
                dataset_size=1000,
                expected_batch_size=4,
            ),
            seed=0,
            noise_seed=0,
            activation_checkpointing=ckpt,
        )
        for ckpt in (True, False)
    ]
    on, off = engines
    assert len(checkpointed_layers(on.model)) == 2
    assert checkpointed_layers(off.model) == []
    runs = [_layer_runs(e) for e in engines]
    for e in engines:
        _randomise_lora_b(e)
    batch = _batch()
    got, want = on.forward_backward(batch), off.forward_backward(batch)
    assert [r[0] for r in runs] == [2, 1]
    assert _same_result(got, want)
    assert _same_tensors(_acc(on), _acc(off))


def test_option_is_validated() -> None:
    with pytest.raises(ConfigError) as err:
        make_engine(activation_checkpointing=1)  # type: ignore[arg-type]
    assert err.value.field == "activation_checkpointing"


def test_unsupported_architecture_is_refused() -> None:
    loaded = build_tiny_llama()
    loaded.model.supports_gradient_checkpointing = False
    with pytest.raises(ConfigError) as err:
        TrainingEngine(
            model=loaded,
            lora_config=LoRAConfig(rank=4),
            dp_config=DPConfig(enabled=False),
            activation_checkpointing=True,
        )
    assert err.value.field == "activation_checkpointing"
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        set_activation_checkpointing(nn.Sequential(nn.Linear(2, 2)), enabled=True)


def test_reentrant_checkpointing_is_refused_or_switched_off() -> None:
    loaded = build_tiny_llama()
    layer = loaded.model.model.layers[0]
    layer.gradient_checkpointing = True
    layer._gradient_checkpointing_func = functools.partial(
        torch.utils.checkpoint.checkpoint, use_reentrant=True
    )
    with pytest.raises(ConfigError, match="reentrant"):
        checkpointed_layers(loaded.model)
    # an engine without the option never runs a checkpoint the model came with
    engine = TrainingEngine(
        model=loaded, lora_config=LoRAConfig(rank=4), dp_config=DPConfig(enabled=False)
    )
    assert checkpointed_layers(engine.model) == []
