"""DP-SGD step semantics: equivalence to a slow reference, noise scale, accounting."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch

from tensafe.engine import OptimizerConfig
from tensafe.losses import compute_loss, get_loss_function

from .conftest import N, make_engine, random_batch


def _randomise_lora_b(engine):
    # LoRA B starts at zero, which makes lora_A's gradient exactly zero; randomise it
    # so the comparison covers every LoRA matrix.
    with torch.no_grad():
        for name, p in engine.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.05)


def _reference_update(ref, batch, *, C, expected_batch_size):
    """Each example's gradient computed alone, clipped to C, summed, divided."""
    tb = ref.to_batch(batch)
    fn = get_loss_function("cross_entropy")
    total = {p: torch.zeros_like(p) for p in ref.params}
    for i in range(tb.batch_size):
        n = tb.lengths[i]
        one = ref.to_batch(
            {
                "input_ids": [tb.input_ids[i, :n].tolist()],
                "labels": [
                    [
                        t if w else -100
                        for t, w in zip(
                            tb.targets[i, :n].tolist(), tb.weights[i, :n].tolist(), strict=True
                        )
                    ]
                ],
            }
        )
        out = compute_loss(ref._logits(one), one, loss_fn=fn, config={})
        grads = torch.autograd.grad(out.per_example.sum(), ref.params, allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g for p, g in zip(ref.params, grads, strict=True)
        ]
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        factor = min(1.0, C / (norm + 1e-6))
        for p, g in zip(ref.params, grads, strict=True):
            total[p] += g * factor
    return [total[p] / expected_batch_size for p in ref.params]


@pytest.mark.parametrize(
    ("lora", "dtype", "rtol"), [(True, torch.float32, 1e-5), (False, torch.float64, 1e-5)]
)
def test_noise_free_update_equals_slow_reference(lora, dtype, rtol):
    C = 0.05 if lora else 0.5  # small enough that clipping is active
    dp = make_engine(lora=lora, dp=True, sigma=0.0, dtype=dtype, max_grad_norm=C)
    ref = make_engine(lora=lora, dp=False, dtype=dtype)
    if lora:
        _randomise_lora_b(dp)
        _randomise_lora_b(ref)
    batch = random_batch(n=4, seq=10)
    want = _reference_update(ref, batch, C=C, expected_batch_size=4)
    seen = {}
    dp.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.update({id(p): p.grad.detach().clone() for p in dp.params})
    )
    fb = dp.forward_backward(batch)
    assert fb.metrics["dp/clip_fraction"] > 0
    dp.optim_step()
    for p, w in zip(dp.params, want, strict=True):
        got = seen[id(p)]  # exactly what the optimizer was given
        scale = max(float(w.abs().max()), 1e-12)
        assert float((got - w).abs().max()) / scale <= rtol


def test_gradient_accumulation_equals_one_big_batch():
    batch = random_batch(n=6, seq=8, seed=3)
    halves = [{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}]
    one = make_engine(dp=True, sigma=0.0, batch=6, max_grad_norm=0.01)
    two = make_engine(dp=True, sigma=0.0, batch=6, max_grad_norm=0.01)
    one.forward_backward(batch)
    for h in halves:
        two.forward_backward(h)
    r1, r2 = one.optim_step(), two.optim_step()
    assert r1.examples_in_batch == r2.examples_in_batch == 6
    for a, b in zip(one.params, two.params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("with_data", [False, True])
def test_noise_std_is_sigma_C_over_expected_batch_size(with_data):
    sigma, C, batch = 1.3, 0.7, 4
    eng = make_engine(lora=False, dp=True, sigma=sigma, max_grad_norm=C, batch=batch, seed=5)
    if with_data:
        # examples with all-zero weights: zero per-example gradients, noise only
        b = random_batch(n=3, seq=6)
        b["labels"] = [[-100] * 6 for _ in range(3)]
        eng.forward_backward(b)
    before = torch.cat([p.detach().flatten().clone() for p in eng.params])
    eng.optim_step()
    delta = torch.cat([p.detach().flatten() for p in eng.params]) - before
    expected = sigma * C / batch  # SGD lr=1; expected batch size q·N = 4
    assert abs(float(delta.mean())) < 5 * expected / math.sqrt(delta.numel())
    assert float(delta.std()) == pytest.approx(expected, rel=0.01)  # ~3M samples: 1% is > 10 s.e.


def _pld_epsilon(sigma, q, steps, delta):
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


def test_epsilon_reported_per_step_agrees_with_google_pld():
    sigma, batch = 0.7, 50
    eng = make_engine(dp=True, sigma=sigma, batch=batch)
    data = random_batch(n=2, seq=4)
    reported = []
    for _ in range(3):
        eng.forward_backward(data)
        reported.append(eng.optim_step().dp_metrics)
    q = batch / N
    for k, m in enumerate(reported, start=1):
        assert m.steps == k and m.sample_rate == pytest.approx(q)
        pld = _pld_epsilon(sigma, q, k, m.delta)
        assert m.epsilon_spent == pytest.approx(pld, rel=0.01)
        assert m.epsilon_spent >= pld * 0.999  # never under-reported beyond discretisation noise
    assert reported[0].epsilon_spent < reported[1].epsilon_spent < reported[2].epsilon_spent


def test_lora_weights_change_after_step_one_under_dp():
    eng = make_engine(dp=True, sigma=1.0, optimizer=OptimizerConfig(learning_rate=1e-3))
    before = {n: p.detach().clone() for n, p in eng.model.named_parameters() if p.requires_grad}
    assert before and all("lora_" in n for n in before)
    eng.forward_backward(random_batch())
    eng.optim_step()
    for n, p in eng.model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p.detach(), before[n]), n


def test_stale_optimizer_parameters_are_detected():
    # The failure seen in the wild: the optimizer holds tensors that are not the
    # model's (e.g. the model was moved after the optimizer was built). Loss and ε
    # look normal but nothing trains; the engine must refuse.
    eng = make_engine(dp=True, sigma=1.0)
    stale = [torch.nn.Parameter(p.detach().clone()) for p in eng.params]
    eng.optimizer = torch.optim.SGD(stale, lr=1.0)
    eng.forward_backward(random_batch())
    from tensafe.errors import PrivacyError

    with pytest.raises(PrivacyError, match="did not change after step 1"):
        eng.optim_step()


@pytest.mark.parametrize("dp", [False, True])
def test_stale_full_fine_tuning_tensors_are_detected_from_probed_coordinates(dp):
    """Full fine-tuning, where (without DP) the embedding's gradient is non-zero only
    in the rows of the batch's tokens: the first step's check probes coordinates with
    a non-zero gradient, so a stale embedding is caught and a live one is not."""
    from tensafe.errors import PrivacyError

    live = make_engine(lora=False, dp=dp, sigma=1.0 if dp else 0.0, tied=False)
    live.forward_backward(random_batch())
    live.optim_step()  # no false alarm: every tensor moved where it had a gradient

    eng = make_engine(lora=False, dp=dp, sigma=1.0 if dp else 0.0, tied=False)
    embed = eng.model.get_input_embeddings().weight
    stale = [torch.nn.Parameter(p.detach().clone()) if p is embed else p for p in eng.params]
    eng.optimizer = torch.optim.SGD(stale, lr=1.0)
    eng.forward_backward(random_batch())
    with pytest.raises(PrivacyError, match="did not change after step 1") as exc:
        eng.optim_step()
    assert "embed" in str(exc.value)


@pytest.mark.parametrize("dp", [False, True])
def test_loss_falls_over_twenty_noise_free_steps(dp):
    eng = make_engine(
        dp=dp, sigma=0.0, max_grad_norm=100.0, optimizer=OptimizerConfig(learning_rate=1e-2)
    )
    batch = random_batch(n=4, seq=12, seed=11)
    first = eng.forward(batch).loss
    for _ in range(20):
        eng.forward_backward(batch)
        eng.optim_step()
    last = eng.forward(batch).loss
    assert last < first - 0.5, (first, last)


def test_probe_positions_stay_in_range_and_find_a_lone_non_zero():
    from tensafe.engine.engine import probe_positions

    n = 49152 * 576  # SmolLM2's embedding: float32 cannot hold n - 1 exactly
    grad = torch.zeros(n)
    assert probe_positions(grad).numel() == 0
    grad[-1] = 1.0
    grad[12_345] = -2.0  # between the evenly spaced positions: found as the first non-zero
    assert probe_positions(grad).tolist() == [12_345, n - 1]
    small = torch.tensor([0.0, 3.0, 0.0])
    assert probe_positions(small).tolist() == [1]
    assert probe_positions(torch.zeros(0)).numel() == 0
