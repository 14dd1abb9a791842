"""Generation on a tiny Llama: KV cache, batching, seeds, logprobs, stop conditions."""

from __future__ import annotations

import pytest
import torch

from tensafe.generation import Sampler, SampleRequest, SamplerLimits, SamplingParams
from tensafe.models import build_tiny_llama

from .test_distribution import _reference

PROMPTS = [[1, 4093, 198, 19556], [5, 6, 7, 8, 9, 10, 11, 12, 13], [42]]
GREEDY = SamplingParams(max_tokens=12, temperature=0, stop=[])


def _req(prompt, params, **kwargs) -> SampleRequest:
    return SampleRequest(prompt=prompt, params=params, **kwargs)


def _full_logits(model, tokens: list[int]) -> torch.Tensor:
    """Logits of one unpadded sequence, recomputed from scratch without a cache."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0].double()


def test_greedy_matches_transformers_generate(tiny_sampler):
    model = tiny_sampler.model
    for prompt in PROMPTS:
        ours = tiny_sampler.sample(_req(prompt, GREEDY)).sequences[0]
        with torch.no_grad():
            theirs = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=12,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        assert list(ours.tokens) == theirs[0, len(prompt) :].tolist()
        assert ours.stop_reason == "length" and ours.logprobs == (0.0,) * 12


def test_batched_greedy_equals_one_by_one(tiny_sampler):
    alone = [tiny_sampler.sample(_req(p, GREEDY)).sequences[0] for p in PROMPTS]
    batched = tiny_sampler.sample_batch([_req(p, GREEDY) for p in PROMPTS])
    for single, response in zip(alone, batched, strict=True):
        assert response.sequences[0].tokens == single.tokens
        for a, b in zip(response.sequences[0].model_logprobs, single.model_logprobs, strict=True):
            assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=10, stop=[], seed=1),
        SamplingParams(max_tokens=10, stop=[], seed=2, temperature=0.6, top_k=20, top_p=0.9),
        SamplingParams(max_tokens=10, stop=[], temperature=0),
    ],
)
def test_kv_cache_decoding_equals_full_recomputation(tiny_sampler, params):
    """Every token's logprobs from incremental (left-padded, batched) decoding equal a
    full forward of prompt + tokens so far, without a cache, within 1e-5."""
    responses = tiny_sampler.sample_batch([_req(p, params, num_samples=2) for p in PROMPTS])
    for prompt, response in zip(PROMPTS, responses, strict=True):
        for seq in response.sequences:
            full = _full_logits(tiny_sampler.model, prompt + list(seq.tokens))
            for i, token in enumerate(seq.tokens):
                logits = full[len(prompt) + i - 1]
                assert seq.model_logprobs[i] == pytest.approx(
                    float(logits.log_softmax(-1)[token]), abs=1e-5
                )
                sampled = _reference(logits, params)
                assert seq.logprobs[i] == pytest.approx(float(sampled[token]), abs=1e-5)
                assert sampled[token] > -float("inf")  # drawn from inside the support


def test_sampled_logprobs_differ_from_raw_unless_untruncated(tiny_sampler):
    prompt = PROMPTS[0]
    plain = tiny_sampler.sample(_req(prompt, SamplingParams(max_tokens=8, stop=[], seed=3)))
    for seq in plain.sequences:
        for a, b in zip(seq.logprobs, seq.model_logprobs, strict=True):
            assert a == pytest.approx(b, abs=1e-5)
    hot = tiny_sampler.sample(
        _req(prompt, SamplingParams(max_tokens=8, stop=[], seed=3, temperature=0.5, top_k=5))
    ).sequences[0]
    # Truncation to 5 tokens makes each drawn token far more likely than under the model.
    assert all(s > m + 5 for s, m in zip(hot.logprobs, hot.model_logprobs, strict=True))


def test_seed_reproducible_and_independent_of_batch_company(tiny_sampler):
    params = SamplingParams(max_tokens=10, stop=[], seed=1234, temperature=0.9, top_p=0.95)
    request = _req(PROMPTS[0], params, num_samples=3)
    first = tiny_sampler.sample(request)
    again = tiny_sampler.sample(request)
    assert first == again
    company = [
        _req(PROMPTS[1], SamplingParams(max_tokens=4, temperature=0)),
        _req(PROMPTS[2], SamplingParams(max_tokens=15, stop=[]), num_samples=2),
    ]
    batched = tiny_sampler.sample_batch([company[0], request, company[1]])[1]
    assert [s.tokens for s in batched.sequences] == [s.tokens for s in first.sequences]
    samples = {s.tokens for s in first.sequences}
    assert len(samples) == 3  # the samples of one request differ from each other
    other_seed = tiny_sampler.sample(
        _req(PROMPTS[0], SamplingParams(max_tokens=10, stop=[], seed=1235, temperature=0.9))
    )
    assert other_seed.sequences[0].tokens != first.sequences[0].tokens


def test_unseeded_sampling_varies_and_leaves_global_rng_alone(tiny_sampler):
    state = torch.get_rng_state()
    params = SamplingParams(max_tokens=8, stop=[])
    a = tiny_sampler.sample(_req(PROMPTS[0], params)).sequences[0]
    b = tiny_sampler.sample(_req(PROMPTS[0], params)).sequences[0]
    assert a.tokens != b.tokens
    assert torch.equal(torch.get_rng_state(), state)


def test_num_samples_and_max_tokens(tiny_sampler):
    response = tiny_sampler.sample(
        _req(PROMPTS[1], SamplingParams(max_tokens=5, stop=[], seed=0), num_samples=4)
    )
    assert len(response.sequences) == 4
    for seq in response.sequences:
        assert len(seq.tokens) == len(seq.logprobs) == len(seq.model_logprobs) == 5
        assert seq.stop_reason == "length"


def test_max_tokens_none_fills_the_context(tiny_sampler):
    prompt = [7] * (tiny_sampler.context_length - 6)
    seq = tiny_sampler.sample(_req(prompt, SamplingParams(stop=[], seed=0))).sequences[0]
    assert (len(seq.tokens), seq.stop_reason) == (6, "length")


def test_stop_token_ids_and_default_eos():
    tiny = build_tiny_llama(seed=5)
    plain = Sampler(model=tiny.model, tokenizer=tiny.tokenizer)
    tokens = plain.sample(_req(PROMPTS[1], GREEDY)).sequences[0].tokens
    target = tokens[3]
    first = tokens.index(target)
    by_id = plain.sample(
        _req(PROMPTS[1], SamplingParams(max_tokens=12, temperature=0, stop=[target]))
    )
    seq = by_id.sequences[0]
    assert (seq.tokens, seq.stop_reason) == (tokens[: first + 1], "stop")
    # stop=None stops at the model's end-of-sequence ids; make `target` one of them.
    tiny.model.generation_config.eos_token_id = [tiny.tokenizer.eos_token_id, target]
    eos_sampler = Sampler(model=tiny.model, tokenizer=tiny.tokenizer)
    default = eos_sampler.sample(_req(PROMPTS[1], SamplingParams(max_tokens=12, temperature=0)))
    assert default.sequences[0].tokens == tokens[: first + 1]
    never = eos_sampler.sample(_req(PROMPTS[1], GREEDY))  # stop=[]: EOS does not stop
    assert never.sequences[0].tokens == tokens


def test_stop_string_spanning_generated_tokens(tiny_sampler, smollm2_tokenizer):
    """Pick a stop string across the boundary of two sampled tokens, resample with the
    same seed: the output ends with the token that completes it."""
    params = SamplingParams(max_tokens=30, stop=[], seed=99)
    tokens = list(tiny_sampler.sample(_req(PROMPTS[0], params)).sequences[0].tokens)
    texts = [smollm2_tokenizer.decode([t]) for t in tokens]
    full = smollm2_tokenizer.decode(tokens)
    for k in range(1, len(tokens)):
        left, right = texts[k - 1], texts[k]
        if len(left.strip()) < 2 or len(right.strip()) < 2 or not (left + right).isprintable():
            continue
        stop = left[-2:] + right[:2]
        prefix = smollm2_tokenizer.decode(tokens[: k + 1])
        if full.find(stop) == len(prefix) - len(right) - 2:  # first occurrence is at k-1|k
            break
    else:
        pytest.fail("no suitable token pair in the sample")
    stopped = tiny_sampler.sample(
        _req(PROMPTS[0], SamplingParams(max_tokens=30, stop=[stop], seed=99))
    ).sequences[0]
    assert stopped.stop_reason == "stop"
    assert list(stopped.tokens) == tokens[: k + 1]
    assert stop in smollm2_tokenizer.decode(stopped.tokens)


def test_prompt_logprobs_chunked_equal_full_and_in_sample_responses(tiny_sampler):
    prompt = list(range(100, 137))
    full = _full_logits(tiny_sampler.model, prompt).log_softmax(-1)
    want = [float(full[i - 1, prompt[i]]) for i in range(1, len(prompt))]
    chunked = Sampler(
        model=tiny_sampler.model,
        tokenizer=tiny_sampler.tokenizer,
        limits=SamplerLimits(prompt_chunk_tokens=5),
    ).compute_logprobs(prompt=prompt, topk=3)
    whole = tiny_sampler.compute_logprobs(prompt=prompt, topk=3)
    for result in (chunked, whole):
        assert result.logprobs[0] is None and result.topk[0] is None
        assert list(result.logprobs[1:]) == pytest.approx(want, abs=1e-5)
        for i in range(1, len(prompt)):
            ids = [t for t, _ in result.topk[i]]
            assert ids == full[i - 1].topk(3).indices.tolist()
    response = tiny_sampler.sample(
        _req(prompt, SamplingParams(max_tokens=2), prompt_logprobs=True, topk_prompt_logprobs=2)
    )
    assert list(response.prompt_logprobs[1:]) == pytest.approx(want, abs=1e-5)
    assert [len(t) for t in response.topk_prompt_logprobs[1:]] == [2] * (len(prompt) - 1)
    assert tiny_sampler.sample(_req(prompt, SamplingParams(max_tokens=2))).prompt_logprobs is None
    assert tiny_sampler.compute_logprobs(prompt=[5]).logprobs == (None,)


def test_large_batches_run_in_several_passes_with_the_same_results(tiny_sampler):
    small = Sampler(
        model=tiny_sampler.model,
        tokenizer=tiny_sampler.tokenizer,
        limits=SamplerLimits(max_batch_sequences=2),
    )
    requests = [_req(p, GREEDY, num_samples=2) for p in PROMPTS]
    split = small.sample_batch(requests)
    whole = tiny_sampler.sample_batch(requests)
    for a, b in zip(split, whole, strict=True):
        assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
        for sa, sb in zip(a.sequences, b.sequences, strict=True):
            assert list(sa.model_logprobs) == pytest.approx(list(sb.model_logprobs), abs=1e-5)


def test_finished_sequences_leave_the_batch_and_others_are_unaffected():
    tiny = build_tiny_llama(seed=3)
    sampler = Sampler(model=tiny.model, tokenizer=tiny.tokenizer)
    sizes: list[int] = []
    tiny.model.register_forward_pre_hook(
        lambda m, a, kw: sizes.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    requests = [
        _req(PROMPTS[0], SamplingParams(max_tokens=2, temperature=0, stop=[])),
        _req(PROMPTS[1], SamplingParams(max_tokens=3, stop=[], seed=4), num_samples=2),
        _req(PROMPTS[2], SamplingParams(max_tokens=9, stop=[], seed=5, top_k=7)),
    ]
    alone = [sampler.sample(r) for r in requests]
    sizes.clear()
    batched = sampler.sample_batch(requests)
    # prefill of 3 prompts; 4 rows; the greedy row ends after 2 tokens (1/4 of the
    # batch: dropped), the two 3-token rows after 3, then the last row runs alone.
    assert sizes == [3, 4, 3, 1, 1, 1, 1, 1, 1]
    for a, b in zip(alone, batched, strict=True):
        assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
        assert all(s.stop_reason == "length" for s in b.sequences)
