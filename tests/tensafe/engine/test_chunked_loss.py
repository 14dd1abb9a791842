"""The chunked output head (``loss_chunk_tokens``) changes memory, never results.

Every comparison runs the same batch through two engines built alike — one with
``loss_chunk_tokens=None`` (full ``(B, T, V)`` logits, the reference) and one whose
chunks are a few positions wide — and asks for equal per-example losses,
log-probabilities and (σ = 0, clipping active) updates, within float32 rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import LlamaForCausalLM

from tensafe.engine import TrainingEngine
from tensafe.errors import ConfigError
from tensafe.losses import LOSS_FUNCTIONS, Datum, token_logprobs
from tensafe.models import LoRAConfig, build_tiny_llama
from tensafe.privacy import DPConfig

from .conftest import make_engine, random_batch
from .test_dp_step import _randomise_lora_b

CHUNK = 8  # 4 examples → 2 positions per slice → 7 slices for 13 positions
LORA_UNEMBED = LoRAConfig(rank=4, alpha=8, train_unembed=True)
KINDS = {
    "lora": {"lora": True},
    "lora-unembed": {"lora": True, "lora_config": LORA_UNEMBED},  # LoRA on lm_head itself
    "full": {"lora": False},
}


def _pair(**kwargs) -> tuple[TrainingEngine, TrainingEngine]:
    pair = (
        make_engine(loss_chunk_tokens=None, **kwargs),
        make_engine(loss_chunk_tokens=CHUNK, **kwargs),
    )
    for engine in pair:
        _randomise_lora_b(engine)
    return pair


def _step_gradients(engine: TrainingEngine, batch, **kwargs):
    """The forward_backward result and the gradients the optimizer is then given."""
    seen: dict[int, torch.Tensor] = {}
    engine.optimizer.register_step_pre_hook(
        lambda opt, args, kw: seen.update({id(p): p.grad.detach().clone() for p in engine.params})
    )
    result = engine.forward_backward(batch, **kwargs)
    engine.optim_step()
    return result, [seen[id(p)] for p in engine.params]


def _assert_same_outputs(got, want) -> None:
    assert got.loss == pytest.approx(want.loss, rel=1e-6)
    for g, w in zip(got.loss_fn_outputs, want.loss_fn_outputs, strict=True):
        torch.testing.assert_close(
            torch.as_tensor(g.logprobs), torch.as_tensor(w.logprobs), rtol=1e-6, atol=1e-5
        )
        torch.testing.assert_close(
            torch.as_tensor(g.elementwise_loss),
            torch.as_tensor(w.elementwise_loss),
            rtol=1e-6,
            atol=1e-5,
        )


def _assert_same_gradients(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    # float32 sums taken in another order (slice by slice; and the thread count changes
    # the reduction order): 1e-5 of the largest entry was exceeded (1.1e-5) with one
    # torch thread; a wrong slice or a missing term is off by far more.
    for g, w in zip(got, want, strict=True):
        scale = max(float(w.abs().max()), 1e-12)
        assert float((g - w).abs().max()) / scale <= 5e-5


def _count_head_calls(engine: TrainingEngine) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    engine._split.head.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    return shapes


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_dp_update_equals_the_full_logits_update(kind, tied):
    C = 0.05 if kind != "full" else 0.5  # small enough that clipping is active
    ref, chunked = _pair(dp=True, sigma=0.0, max_grad_norm=C, tied=tied, **KINDS[kind])
    shapes = _count_head_calls(chunked)
    batch = random_batch(n=4, seq=13)
    want, want_grads = _step_gradients(ref, batch)
    got, got_grads = _step_gradients(chunked, batch)
    assert want.metrics["dp/clip_fraction"] > 0
    assert got.metrics["dp/clip_fraction"] == want.metrics["dp/clip_fraction"]
    assert max(s[0] * s[1] for s in shapes) <= CHUNK and len(shapes) == 14  # 7 + recomputed
    _assert_same_outputs(got, want)
    _assert_same_gradients(got_grads, want_grads)
    for p, q in zip(chunked.params, ref.params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_non_dp_update_equals_the_full_logits_update(kind):
    ref, chunked = _pair(dp=False, **KINDS[kind])
    batch = random_batch(n=4, seq=13, seed=2)
    want, want_grads = _step_gradients(ref, batch)
    got, got_grads = _step_gradients(chunked, batch)
    _assert_same_outputs(got, want)
    _assert_same_gradients(got_grads, want_grads)


def _rl_datums(n: int = 4, seq: int = 11) -> list[Datum]:
    g = torch.Generator().manual_seed(5)
    data = []
    for i in range(n):
        length = seq - i
        tokens = torch.randint(0, 49152, (length + 1,), generator=g)
        data.append(
            Datum(
                tokens=tokens[:-1].tolist(),
                loss_fn_inputs={
                    "target_tokens": tokens[1:].tolist(),
                    "weights": torch.rand(length, generator=g).tolist(),
                    "logprobs": (-10.8 + 0.2 * torch.randn(length, generator=g)).tolist(),
                    "advantages": torch.randn(length, generator=g).tolist(),
                },
            )
        )
    return data


@pytest.mark.parametrize("loss_fn", sorted(LOSS_FUNCTIONS))
def test_every_loss_function_agrees_forward_and_backward(loss_fn):
    ref, chunked = _pair(dp=True, sigma=0.0, max_grad_norm=0.05)
    data = _rl_datums()
    _assert_same_outputs(chunked.forward(data, loss_fn=loss_fn), ref.forward(data, loss_fn=loss_fn))
    want, want_grads = _step_gradients(ref, data, loss_fn=loss_fn)
    got, got_grads = _step_gradients(chunked, data, loss_fn=loss_fn)
    _assert_same_outputs(got, want)
    _assert_same_gradients(got_grads, want_grads)


def test_grouped_examples_agree():
    ref, chunked = _pair(dp=True, sigma=0.0, max_grad_norm=0.05, lora=False)
    batch = random_batch(n=4, seq=13, seed=4)
    want, want_grads = _step_gradients(ref, batch, groups=[1, 2, 1, 3])
    got, got_grads = _step_gradients(chunked, batch, groups=[1, 2, 1, 3])
    _assert_same_outputs(got, want)
    _assert_same_gradients(got_grads, want_grads)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation allocates (views and in-place results
    of existing tensors are not new memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.largest = max(self.largest, leaf.numel())
        return out


@pytest.mark.parametrize("dp", [True, False], ids=["dp", "non-dp"])
def test_no_tensor_of_the_full_logits_size_exists(dp):
    ref, chunked = _pair(dp=dp, sigma=0.0, max_grad_norm=0.05)
    batch = chunked.to_batch(random_batch(n=4, seq=40))
    vocab = chunked.vocab_size
    sizes = {}
    for name, engine in (("ref", ref), ("chunked", chunked)):
        with _LargestTensor() as probe:
            engine.forward_backward(batch)
            engine.forward(batch)
        sizes[name] = probe.largest
    assert sizes["ref"] >= 4 * 40 * vocab  # the reference does build the full logits
    assert sizes["chunked"] <= CHUNK * vocab


class _HalvedLogitsLlama(LlamaForCausalLM):
    """An architecture that post-processes its logits: it must keep the full path."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out


def test_an_architecture_that_changes_its_logits_keeps_the_full_path():
    loaded = build_tiny_llama()
    loaded.model.__class__ = _HalvedLogitsLlama
    engine = TrainingEngine(
        model=loaded,
        lora_config=None,
        dp_config=DPConfig(enabled=False),
        loss_chunk_tokens=CHUNK,
    )
    assert engine._split is None
    batch = engine.to_batch(random_batch(n=2, seq=9))
    with torch.no_grad():
        want = token_logprobs(engine.model(input_ids=batch.input_ids).logits, batch.targets)
    got = engine.forward(batch)
    torch.testing.assert_close(
        torch.as_tensor(got.loss_fn_outputs[0].logprobs), want[0, :9], rtol=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_loss_chunk_tokens_is_validated(bad):
    with pytest.raises(ConfigError, match="loss_chunk_tokens"):
        make_engine(dp=False, loss_chunk_tokens=bad)
