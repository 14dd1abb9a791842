"""The sampled distribution (temperature, top-k, top-p) and the draw, on known logits."""

from __future__ import annotations

import math

import pytest
import torch

from tensafe.generation import SamplingParams
from tensafe.generation.distribution import RowSettings, draw_tokens, truncated_logits

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 3.0])  # token 5 is the most likely


def _settings(*params: SamplingParams) -> RowSettings:
    return RowSettings.from_params(list(params), device=torch.device("cpu"))


def _reference(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Slow reference of the sampled distribution's log-probabilities (one row)."""
    if params.is_greedy:
        out = torch.full_like(logits, -math.inf)
        out[int(logits.argmax())] = 0.0
        return out
    scaled = logits.double() / params.temperature
    probs = scaled.softmax(-1)
    keep = torch.ones_like(probs, dtype=torch.bool)
    order = torch.argsort(-scaled, stable=True).tolist()  # most likely first, ties by id
    if params.top_k != -1:
        kth = float(scaled[order[params.top_k - 1]])
        keep &= scaled >= kth
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    kept = kept / kept.sum()
    if params.top_p < 1:
        mass = 0.0
        nucleus = torch.zeros_like(keep)
        for i in order:
            if mass >= params.top_p:
                break
            if keep[i]:
                nucleus[i] = True
                mass += float(kept[i])
        keep &= nucleus
    logp = torch.where(keep, scaled, torch.full_like(scaled, -math.inf))
    return logp.log_softmax(-1)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(temperature=0.5),
        SamplingParams(temperature=2.0, top_k=3),
        SamplingParams(top_p=0.6),
        SamplingParams(temperature=0.7, top_k=4, top_p=0.8),
        SamplingParams(top_k=1),
        SamplingParams(top_p=1e-6),
    ],
)
def test_truncated_distribution_matches_reference(params):
    got = truncated_logits(LOGITS[None], _settings(params)).log_softmax(-1)[0]
    want = _reference(LOGITS, params)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    finite = ~torch.isinf(want)
    torch.testing.assert_close(got[finite].double(), want[finite], atol=1e-6, rtol=0)


def test_rows_with_different_settings_do_not_affect_each_other():
    params = [
        SamplingParams(temperature=0.7, top_k=2),
        SamplingParams(),
        SamplingParams(top_p=0.5),
        SamplingParams(temperature=0),
    ]
    batch = truncated_logits(LOGITS.expand(4, -1), _settings(*params))
    for i, p in enumerate(params):
        alone = truncated_logits(LOGITS[None], _settings(p))[0]
        assert torch.equal(batch[i], alone)
    # A row without top-p keeps every token, even beside rows that use it.
    assert not torch.isinf(batch[1]).any()


def test_top_k_keeps_ties_with_the_kth_token():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    kept = truncated_logits(logits, _settings(SamplingParams(top_k=1)))
    assert (~torch.isinf(kept[0])).tolist() == [False, True, True, False]


def test_greedy_takes_argmax_with_logprob_zero_and_no_randomness():
    logits = torch.tensor([[0.0, 5.0, 5.0, 1.0]])  # tie: the lower id wins
    draw = draw_tokens(logits, _settings(SamplingParams(temperature=0)), [None])
    assert draw.tokens.tolist() == [1]
    assert draw.sampled_logprobs.tolist() == [0.0]
    assert draw.model_logprobs.item() == pytest.approx(float(logits.log_softmax(-1)[0, 1]))


def test_sampled_and_model_logprobs_are_of_their_own_distributions():
    params = SamplingParams(temperature=0.5, top_k=3)
    draw = draw_tokens(LOGITS[None], _settings(params), [torch.Generator().manual_seed(1)])
    token = int(draw.tokens)
    assert draw.sampled_logprobs.item() == pytest.approx(float(_reference(LOGITS, params)[token]))
    assert draw.model_logprobs.item() == pytest.approx(float(LOGITS.log_softmax(-1)[token]))
    plain = draw_tokens(LOGITS[None], _settings(SamplingParams()), [torch.Generator()])
    assert plain.sampled_logprobs.item() == pytest.approx(plain.model_logprobs.item(), abs=1e-6)


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.8, top_p=0.9), SamplingParams()])
def test_draw_frequencies_follow_the_sampled_distribution(params):
    n = 4000
    settings = _settings(*([params] * n))
    generators = [torch.Generator().manual_seed(i) for i in range(n)]
    tokens = draw_tokens(LOGITS.expand(n, -1), settings, generators).tokens
    counts = torch.bincount(tokens, minlength=len(LOGITS)).double()
    probs = _reference(LOGITS, params).exp()
    assert counts[probs == 0].sum() == 0  # never outside the support
    # every frequency within 5 standard deviations of its expectation
    sd = (n * probs * (1 - probs)).sqrt()
    assert ((counts - n * probs).abs() <= 5 * sd + 1).all(), (counts / n, probs)


def test_a_rows_draw_depends_only_on_its_logits_and_generator():
    def draw(batch_logits: torch.Tensor, params: list[SamplingParams], seeds: list[int]):
        return draw_tokens(
            batch_logits,
            _settings(*params),
            [torch.Generator().manual_seed(s) for s in seeds],
        )

    alone = draw(LOGITS[None], [SamplingParams(top_p=0.95)], [42])
    others = torch.randn(3, len(LOGITS), generator=torch.Generator().manual_seed(0))
    batched = draw(
        torch.cat([others[:2], LOGITS[None], others[2:]]),
        [
            SamplingParams(temperature=0),
            SamplingParams(top_k=2),
            SamplingParams(top_p=0.95),
            SamplingParams(),
        ],
        [1, 2, 42, 3],
    )
    assert batched.tokens[2] == alone.tokens[0]
    assert batched.sampled_logprobs[2] == alone.sampled_logprobs[0]
