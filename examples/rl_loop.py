"""A small RL loop under differential privacy, sampling from the weights it trains.

The reward is verifiable by a program: the fraction of a completion's tokens that lie
in a target set (``--target`` words, or ``auto``: the tokens the model proposes most
often before training — RL can only reinforce what the policy sometimes samples). Each
step:

1. the server draws a logical batch of prompts from the server-held prompt dataset
   (Poisson, rate q; the privacy unit is one prompt record);
2. the run's **current** weights complete each drawn prompt ``--group`` times, on the
   server (``service.create_sampling_client(run_id=...)``); the requests of a step are
   all in flight at once and batched together there;
3. advantages: each token's reward term minus the mean over the prompt's group (a
   baseline that needs no value model);
4. ``importance_sampling`` datums — with the sampler's logprobs, which are those of the
   distribution actually sampled from (top-k here), and ``record_id`` of the prompt, so a
   prompt's completions are clipped together as one contribution; ``forward_backward``
   clips, ``optim_step`` adds the noise once and charges ε.

Choose C near the typical per-example gradient norm (printed each step): noise is
σ·C, so a C far above the gradients drowns them. On the random ``tiny-llama`` the
model's distribution is nearly uniform over 49,152 tokens, so the loop samples from its
top 16 tokens (``--top-k 16``) and the importance ratios p_model/p_sampled are ≈ 16/V:
its gradients are ~1e-4, hence ``--clip 1e-4`` there (the test's setting).

Sampling charges no ε (post-processing). Usage (a server running, a tenant key in
``TG_TINKER_API_KEY``, the dataset's budget created by a privacy officer, or a server
with ``TENSAFE_DEFAULT_EPSILON_CAP``)::

    python examples/rl_loop.py                      # SmolLM2, C = 1
    python examples/rl_loop.py --model tiny-llama --top-k 16 --clip 1e-4 --lr 0.02
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter

from tg_tinker import AdamParams, Datum, DPConfig, SamplingParams, ServiceClient
from tg_tinker.sampling_types import SampledSequence

TOPICS = ["a storm", "a cat", "the sea", "a city", "a garden", "a train", "music", "winter"]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url", default=None, help="default: $TG_TINKER_BASE_URL")
    ap.add_argument("--api-key", default=None, help="default: $TG_TINKER_API_KEY")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=32, help="prompt records N")
    ap.add_argument("--batch", type=float, default=16, help="expected prompts per step q·N")
    ap.add_argument("--group", type=int, default=4, help="completions per prompt")
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--sigma", type=float, default=0.5, help="noise multiplier σ")
    ap.add_argument(
        "--clip",
        type=float,
        default=1.0,
        help="max_grad_norm C; set it near the per-example gradient norms the steps print",
    )
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=-1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--target",
        default="auto",
        help="words whose tokens form the target set, or 'auto' (see above)",
    )
    ap.add_argument("--target-size", type=int, default=8, help="tokens in an 'auto' target")
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--json", action="store_true", help="print a JSON summary line at the end")
    return ap.parse_args()


def token_rewards(tokens: list[int], target: set[int]) -> list[float]:
    """The reward's per-token terms: 1.0 for a token in the target set, else 0.0.
    A completion's reward is their mean."""
    return [float(t in target) for t in tokens]


def rl_datum(
    prompt: list[int], seq: SampledSequence, advantages: list[float], record_id: int
) -> Datum:
    """An ``importance_sampling`` datum: the prompt's positions carry advantage 0."""
    pad = [0.0] * (len(prompt) - 1)
    return Datum(
        model_input=prompt + seq.tokens[:-1],
        loss_fn_inputs={
            "target_tokens": prompt[1:] + seq.tokens,
            "logprobs": pad + seq.logprobs,
            "advantages": pad + advantages,
        },
        record_id=record_id,
    )


def main() -> None:
    args = parse_args()
    service = ServiceClient(args.base_url, args.api_key)
    tokenizer = service.create_sampling_client(base_model=args.model).get_tokenizer()
    prompts = [
        tokenizer.encode(f"Write about {TOPICS[i % len(TOPICS)]} (#{i}):", add_special_tokens=False)
        for i in range(args.prompts)
    ]
    dataset = service.create_dataset("rl-prompts", prompts, progress=False)
    dp = DPConfig(
        noise_multiplier=args.sigma,
        max_grad_norm=args.clip,
        sample_rate=args.batch / args.prompts,
        dataset_id=dataset.dataset_id,
    )
    tc = service.create_lora_training_client(
        args.model, rank=8, dp_config=dp, train_unembed=True, seed=args.seed
    )
    policy = service.create_sampling_client(run_id=tc.run_id)  # follows the training
    # temperature 1, no truncation: the sampled distribution is the policy being trained,
    # so the importance ratio starts at 1 (top-k or a temperature would make it p/p_sampled)
    params = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "stop": [],
    }

    def rollouts(batch_prompts: list[list[int]], seed: int) -> list[list[SampledSequence]]:
        """``--group`` completions per prompt; all requests in flight at once."""
        futures = [
            policy.sample(p, args.group, SamplingParams(**params, seed=seed + i))
            for i, p in enumerate(batch_prompts)
        ]
        return [f.result().sequences for f in futures]

    eval_prompts = prompts[: args.eval_prompts]
    first = rollouts(eval_prompts, 10_000)
    if args.target == "auto":
        counts = Counter(t for group in first for seq in group for t in seq.tokens)
        target = {t for t, _ in counts.most_common(args.target_size)}
    else:
        target = set(tokenizer.encode(args.target, add_special_tokens=False))
    print("target tokens:", sorted(tokenizer.decode([t]) for t in target))

    def mean_reward(groups: list[list[SampledSequence]]) -> float:
        return statistics.fmean(
            statistics.fmean(token_rewards(s.tokens, target)) for g in groups for s in g
        )

    before = mean_reward(first)
    print(f"mean reward before training: {before:.3f}")
    history, epsilon = [], 0.0
    for step in range(args.steps):
        batch = tc.draw_batch(include_records=True).result()
        records = batch.records or []
        groups = rollouts([r.tokens for r in records], seed=step * 1000)
        data = []
        for record_id, record, group in zip(batch.record_ids, records, groups, strict=True):
            terms = [token_rewards(seq.tokens, target) for seq in group]
            baseline = statistics.fmean(t for seq_terms in terms for t in seq_terms)
            for seq, seq_terms in zip(group, terms, strict=True):
                advantages = [t - baseline for t in seq_terms]
                data.append(rl_datum(record.tokens, seq, advantages, record_id))
        norm = float("nan")
        if data:  # an empty draw still steps: the noise the accountant expects
            fb = tc.forward_backward(data, loss_fn="importance_sampling").result()
            norm = fb.metrics.get("dp/per_example_grad_norm:mean", norm)
        out = tc.optim_step(AdamParams(learning_rate=args.lr)).result()
        epsilon = out.dp_metrics.epsilon_spent if out.dp_metrics else float("nan")
        reward = mean_reward(groups) if groups else float("nan")
        history.append(reward)
        print(
            f"step {out.step}: {batch.size} prompts, mean reward {reward:.3f}, "
            f"per-example grad norm {norm:.2g} (C = {args.clip:g}), ε = {epsilon:.2f}"
        )
    after = mean_reward(rollouts(eval_prompts, 10_000))
    print(f"mean reward after training:  {after:.3f}  (before: {before:.3f})")
    if args.json:
        summary = {"before": before, "after": after, "steps": history, "epsilon": epsilon}
        print(json.dumps(summary))
    service.close()


if __name__ == "__main__":
    main()
