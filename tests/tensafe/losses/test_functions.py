"""Loss functions: per-example reduction, known answers, registry errors."""

from __future__ import annotations

import pytest
import torch

from tensafe.errors import ConfigError, InvalidBatchError
from tensafe.losses import Datum, batch_from_datums, compute_loss, get_loss_function, token_logprobs

V = 7


def _batch(**extra):
    data = [
        Datum(
            tokens=[1, 2, 3],
            loss_fn_inputs={
                "target_tokens": [2, 3, 4],
                "weights": [1, 1, 0],
                **{k: v[0] for k, v in extra.items()},
            },
        ),
        Datum(
            tokens=[5], loss_fn_inputs={"target_tokens": [6], **{k: v[1] for k, v in extra.items()}}
        ),
    ]
    return batch_from_datums(data, vocab_size=V)


def test_token_logprobs_known_answer():
    logits = torch.zeros(1, 2, V)
    logits[0, 0, 3] = 2.0
    lp = token_logprobs(logits, torch.tensor([[3, 0]]))
    expected0 = 2.0 - torch.log(torch.exp(torch.tensor(2.0)) + V - 1)
    expected1 = -torch.log(torch.tensor(float(V)))
    torch.testing.assert_close(lp, torch.stack([expected0, expected1]).view(1, 2))


def test_cross_entropy_is_a_weighted_mean_per_example_not_across_the_batch():
    b = _batch()
    logits = torch.randn(2, 3, V, generator=torch.Generator().manual_seed(0))
    out = compute_loss(logits, b, loss_fn=get_loss_function("cross_entropy"), config={})
    lp = torch.log_softmax(logits, -1)
    ex0 = -(lp[0, 0, 2] + lp[0, 1, 3]) / 2
    ex1 = -lp[1, 0, 6]
    torch.testing.assert_close(out.per_example, torch.stack([ex0, ex1]))
    # example 1's loss does not depend on example 0's length or logits
    logits2 = logits.clone()
    logits2[0] += 5 * torch.randn(3, V)
    out2 = compute_loss(logits2, b, loss_fn=get_loss_function("cross_entropy"), config={})
    torch.testing.assert_close(out2.per_example[1], out.per_example[1])
    assert out.elementwise[0, 2] == 0  # zero weight


def test_importance_sampling_and_ppo_known_answers():
    b = _batch(logprobs=([-1.0, -1.0, -1.0], [-2.0]), advantages=([1.0, -1.0, 0.0], [2.0]))
    logits = torch.zeros(2, 3, V)
    lp = -torch.log(torch.tensor(float(V)))
    ratio0 = torch.exp(lp + 1.0)
    ratio1 = torch.exp(lp + 2.0)
    is_out = compute_loss(logits, b, loss_fn=get_loss_function("importance_sampling"), config={})
    torch.testing.assert_close(
        is_out.per_example, torch.stack([(-ratio0 + ratio0) / 2, -ratio1 * 2])
    )
    fn = get_loss_function("ppo")
    cfg = fn.resolve_config({"clip_low_threshold": 0.9})
    ppo = compute_loss(logits, b, loss_fn=fn, config=cfg)
    c0 = ratio0.clamp(0.9, 1.2)
    c1 = ratio1.clamp(0.9, 1.2)
    want0 = (-torch.minimum(ratio0, c0) - torch.minimum(-ratio0, -c0)) / 2
    want1 = -torch.minimum(ratio1 * 2, c1 * 2)
    torch.testing.assert_close(ppo.per_example, torch.stack([want0, want1]))


def test_unknown_loss_and_config_keys_name_the_field():
    with pytest.raises(ConfigError) as exc:
        get_loss_function("mse")
    assert exc.value.field == "loss_fn"
    with pytest.raises(ConfigError) as exc:
        get_loss_function("cross_entropy").resolve_config({"clip_low_threshold": 0.5})
    assert exc.value.field == "loss_fn_config.clip_low_threshold"


def test_sum_losses_add_token_losses_and_accept_negative_weights():
    data = [
        Datum(tokens=[1, 2, 3], loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [2, -1, 0]})
    ]
    with pytest.raises(InvalidBatchError):  # the mean convention needs non-negative weights
        batch_from_datums(data, vocab_size=V)
    b = batch_from_datums(data, vocab_size=V, signed_weights=True)
    logits = torch.randn(1, 3, V, generator=torch.Generator().manual_seed(1))
    fn = get_loss_function("cross_entropy_sum")
    assert fn.reduction == "sum" and fn.signed_weights
    out = compute_loss(logits, b, loss_fn=fn, config={})
    lp = torch.log_softmax(logits, -1)
    torch.testing.assert_close(out.per_example, (-2 * lp[0, 0, 2] + lp[0, 1, 3]).view(1))


def test_cispo_gradient_flows_through_logprobs_only_with_a_clipped_constant_weight():
    b = _batch(logprobs=([-3.0, -3.0, -3.0], [-0.5]), advantages=([1.0, 1.0, 0.0], [2.0]))
    logits = torch.zeros(2, 3, V, requires_grad=True)
    fn = get_loss_function("cispo_sum")
    out = compute_loss(logits, b, loss_fn=fn, config=fn.resolve_config(None))
    lp = -torch.log(torch.tensor(float(V)))
    w0 = torch.exp(lp + 3.0).clamp(0.8, 1.2)  # ratio > 1.2: clipped to 1.2
    w1 = torch.exp(lp + 0.5).clamp(0.8, 1.2)  # ratio < 0.8: clipped to 0.8
    torch.testing.assert_close(out.per_example.detach(), torch.stack([-2 * w0 * lp, -w1 * lp * 2]))
    out.per_example.sum().backward()
    # d/dlogit of -w*A*log p(target): -w*A*(1 - p) at the target, as for a scaled CE
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad[1, 0, 6], -(w1 * 2) * (1 - 1 / V))


def test_dro_known_answer_and_beta():
    b = _batch(logprobs=([-1.0, -1.0, -1.0], [-2.0]), advantages=([1.0, -1.0, 0.0], [2.0]))
    logits = torch.zeros(2, 3, V)
    lp = -torch.log(torch.tensor(float(V)))
    fn = get_loss_function("dro_sum")
    cfg = fn.resolve_config({"beta": 0.5})
    out = compute_loss(logits, b, loss_fn=fn, config=cfg)
    pen0 = 0.25 * (lp + 1.0) ** 2
    pen1 = 0.25 * (lp + 2.0) ** 2
    want0 = -(lp * 1 - pen0) - (lp * -1 - pen0)
    want1 = -(lp * 2 - pen1)
    torch.testing.assert_close(out.per_example, torch.stack([want0, want1]))
