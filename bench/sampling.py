"""Sampling throughput: our sampler vs ``transformers`` ``generate``, and batching.

Everything runs in one process, side by side, alternating the contenders so that
machine load hits them alike; each figure is the median over ``--repeats`` runs
after one warm-up run. All contenders generate exactly ``--max-tokens`` tokens per
sequence (stop conditions off), with the KV cache on, from the same model and
prompts:

* ``single_*``: one prompt at a time (batch 1), ``Sampler.sample`` vs
  ``model.generate``; greedy and sampling (temperature 0.8, top-k 50, top-p 0.95).
* ``batch_*``: all prompts in one call, ``Sampler.sample_batch`` vs
  ``model.generate`` on the left-padded batch (generate at its best).
* ``concurrent``: ``--prompts`` requests submitted at once from as many threads
  through a ``SampleBatcher`` vs the same requests run one by one.

* ``server_single``: the same requests one by one through a live server (a ``tensafe
  serve`` subprocess on 127.0.0.1, its base-model sampler, the SDK's
  ``SamplingClient.sample(...).result()``: HTTP, JSON, the future's long poll) beside
  ``Sampler.sample`` in this process and ``model.generate`` (batch 1).
* ``server_concurrent``: ``--prompts`` clients (threads) each sending one request at once
  through the server, which batches them, vs the same requests one by one.

Tokens/s of the in-process parts are per CPU second of this process (all threads): on a
shared machine that is steadier than wall time, which is reported too
(``ratio_wall``). For the server parts the CPU time is the server process's (read from
``/proc``) plus this process's (the client) during the call; the server gets as many
torch threads as this process. Ratios above 1 mean ours (the server's, for
``server_*``) is faster. Targets: ``ratio`` ≥ 0.9 against generate
(``server_single.ratio_vs_generate`` through the server), ``concurrent.ratio`` and
``server_concurrent.ratio`` ≥ 3 on CPU.

    python bench/sampling.py --json                              # tiny Llama, all parts
    python bench/sampling.py --model smollm2-135m-instruct --max-tokens 64 --json

The last line of output is one JSON object (with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable

PROMPTS = [
    "Write a short poem about the sea.",
    "What is differential privacy? Explain it to a child.",
    "List three uses of a paperclip.",
    "Translate 'good morning' into French, Spanish and German.",
    "Summarise the plot of Hamlet in two sentences.",
    "Why is the sky blue?",
    "Give me a recipe for pancakes.",
    "What are the benefits of unit tests in software projects?",
]
SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 0.95}


def _load(name: str, device: str):
    from tensafe.models import build_tiny_llama, load_causal_lm

    loaded = build_tiny_llama() if name == "tiny-llama" else load_causal_lm(name, device=device)
    return loaded.model.to(device).eval(), loaded.tokenizer


def _encode(tokenizer, count: int) -> list[list[int]]:
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(count)]
    if tokenizer.chat_template:
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False
            )
            for t in texts
        ]
    return [list(tokenizer.encode(t, add_special_tokens=False)) for t in texts]


def _timed(
    fn: Callable[[], object], other_cpu: Callable[[], float] | None = None
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call; with
    ``other_cpu`` (another process's cumulative CPU seconds) its share is added."""
    before = other_cpu() if other_cpu else 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu + ((other_cpu() - before) if other_cpu else 0.0)


def _side_by_side(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    other_cpu: dict[str, Callable[[], float]] | None = None,
) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per contender, runs interleaved (a, b, a, b, ...);
    ``other_cpu[name]`` adds another process's CPU to that contender's (the server)."""
    extra = other_cpu or {}
    for fn in contenders.values():
        fn()  # warm-up
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            runs[name].append(_timed(fn, extra.get(name)))
    return {
        name: (statistics.median(r[0] for r in t), statistics.median(r[1] for r in t))
        for name, t in runs.items()
    }


def _process_cpu(pid: int) -> Callable[[], float]:
    """Cumulative CPU seconds (user + system, all threads) of process ``pid`` (Linux)."""
    import os

    ticks = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    return read


def _figures(times: dict[str, tuple[float, float]], tokens: int, ours: str, other: str) -> dict:
    """Tokens/s (by CPU time) of both, and ours/other speed ratios by CPU and wall time."""
    return {
        f"{ours}_tokens_per_s": tokens / times[ours][1],
        f"{other}_tokens_per_s": tokens / times[other][1],
        "ratio": times[other][1] / times[ours][1],
        "ratio_wall": times[other][0] / times[ours][0],
    }


def _generate_fn(model, tokenizer, prompts: list[list[int]], *, max_tokens: int, sampled: bool):
    import torch

    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor(
        [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device
    )
    extra = {"do_sample": True, **SAMPLING} if sampled else {"do_sample": False}

    def run() -> None:
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                eos_token_id=None,
                pad_token_id=pad,
                use_cache=True,
                **extra,
            )
        assert out.shape[1] == width + max_tokens

    return run


def _requests(prompts: list[list[int]], *, max_tokens: int, sampled: bool):
    from tensafe.generation import SampleRequest, SamplingParams

    settings = SAMPLING if sampled else {"temperature": 0.0}
    params = SamplingParams(max_tokens=max_tokens, stop=[], **settings)
    return [SampleRequest(prompt=p, params=params) for p in prompts]


def _compare(model, tokenizer, sampler, prompts, args, *, batched: bool, sampled: bool) -> dict:
    requests = _requests(prompts, max_tokens=args.max_tokens, sampled=sampled)
    if batched:
        ours = lambda: sampler.sample_batch(requests)  # noqa: E731
        theirs = _generate_fn(
            model, tokenizer, prompts, max_tokens=args.max_tokens, sampled=sampled
        )
    else:
        ours = lambda: [sampler.sample(r) for r in requests]  # noqa: E731
        singles = [
            _generate_fn(model, tokenizer, [p], max_tokens=args.max_tokens, sampled=sampled)
            for p in prompts
        ]
        theirs = lambda: [g() for g in singles]  # noqa: E731
    times = _side_by_side({"ours": ours, "generate": theirs}, args.repeats)
    return _figures(times, len(prompts) * args.max_tokens, "ours", "generate")


def _concurrent(sampler, prompts, args) -> dict:
    from tensafe.generation import SampleBatcher

    requests = _requests(prompts, max_tokens=args.max_tokens, sampled=True)
    batcher = SampleBatcher(sampler=sampler, window_s=args.window_ms / 1000)

    def together() -> None:
        results: list = [None] * len(requests)
        barrier = threading.Barrier(len(requests))

        def one(i: int) -> None:
            barrier.wait()  # concurrent clients: all requests arrive at once
            results[i] = batcher.sample(requests[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r is not None for r in results)

    def one_by_one() -> None:
        for r in requests:
            sampler.sample(r)

    try:
        times = _side_by_side({"batched": together, "one_by_one": one_by_one}, args.repeats)
    finally:
        batcher.close()
    figures = _figures(times, len(requests) * args.max_tokens, "batched", "one_by_one")
    runs = args.repeats + 1
    return {"requests": len(requests), **figures, "batches_per_run": batcher.batches_run / runs}


def _server(model, tokenizer, sampler, prompts, args) -> dict:
    """The server parts: SamplingClient vs in-process Sampler vs generate, one by one;
    and concurrent clients vs one by one, through the server."""
    import tempfile
    from pathlib import Path

    import torch
    from _live_server import LiveServer
    from tg_tinker import SamplingParams, ServiceClient

    requests = _requests(prompts, max_tokens=args.max_tokens, sampled=True)
    params = SamplingParams(max_tokens=args.max_tokens, stop=[], **SAMPLING)
    singles = [
        _generate_fn(model, tokenizer, [p], max_tokens=args.max_tokens, sampled=True)
        for p in prompts
    ]
    threads = str(torch.get_num_threads())
    env = {"OMP_NUM_THREADS": threads, "TENSAFE_DEVICE": args.device}
    tokens = len(prompts) * args.max_tokens
    with tempfile.TemporaryDirectory(prefix="tensafe-bench-") as tmp:
        server = LiveServer(Path(tmp), env=env)
        keys = json.loads(server.tensafe("admin", "create-tenant", "bench", "--json"))
        server.start()
        try:
            with ServiceClient(server.url, api_key=keys["api_key"], timeout=300) as service:
                remote = service.create_sampling_client(base_model=args.model)

                def server_one_by_one() -> None:
                    for p in prompts:
                        remote.sample(p, 1, params).result()

                def server_together() -> None:
                    barrier = threading.Barrier(len(prompts))

                    def client(p: list[int]) -> None:
                        barrier.wait()  # concurrent clients: all requests arrive at once
                        remote.sample(p, 1, params).result()

                    pool = [threading.Thread(target=client, args=(p,)) for p in prompts]
                    for t in pool:
                        t.start()
                    for t in pool:
                        t.join()

                assert server.process is not None
                server_cpu = _process_cpu(server.process.pid)
                single = _side_by_side(
                    {
                        "server": server_one_by_one,
                        "in_process": lambda: [sampler.sample(r) for r in requests],
                        "generate": lambda: [g() for g in singles],
                    },
                    args.repeats,
                    other_cpu={"server": server_cpu},
                )
                together = _side_by_side(
                    {"server_concurrent": server_together, "server_one_by_one": server_one_by_one},
                    args.repeats,
                    other_cpu={"server_concurrent": server_cpu, "server_one_by_one": server_cpu},
                )
        finally:
            server.stop()
    times = {**single, **together}
    wall = {name: t[0] for name, t in times.items()}
    cpu = {name: t[1] for name, t in times.items()}  # server parts: server + client CPU
    return {
        "server_single": {
            "server_tokens_per_s": tokens / cpu["server"],
            "in_process_tokens_per_s": tokens / cpu["in_process"],
            "generate_tokens_per_s": tokens / cpu["generate"],
            "ratio_vs_generate": cpu["generate"] / cpu["server"],
            "ratio_vs_in_process": cpu["in_process"] / cpu["server"],
            "ratio_vs_generate_wall": wall["generate"] / wall["server"],
            "ratio_vs_in_process_wall": wall["in_process"] / wall["server"],
        },
        "server_concurrent": {
            "requests": len(prompts),
            "concurrent_tokens_per_s": tokens / cpu["server_concurrent"],
            "one_by_one_tokens_per_s": tokens / cpu["server_one_by_one"],
            "ratio": cpu["server_one_by_one"] / cpu["server_concurrent"],
            "ratio_wall": wall["server_one_by_one"] / wall["server_concurrent"],
        },
        "server_threads": int(threads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-llama", help="tiny-llama or smollm2-135m-instruct")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window-ms", type=float, default=10.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--only", choices=["single", "batch", "concurrent", "server"], action="append"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from tensafe.generation import Sampler

    torch.manual_seed(0)
    model, tokenizer = _load(args.model, args.device)
    sampler = Sampler(model=model, tokenizer=tokenizer)
    prompts = _encode(tokenizer, args.prompts)
    only = set(args.only or ["single", "batch", "concurrent", "server"])
    report: dict = {
        "model": args.model,
        "device": args.device,
        "max_tokens": args.max_tokens,
        "prompts": len(prompts),
        "threads": torch.get_num_threads(),
    }
    for mode in ("greedy", "sampling"):
        if "single" in only:
            report[f"single_{mode}"] = _compare(
                model, tokenizer, sampler, prompts, args, batched=False, sampled=mode == "sampling"
            )
        if "batch" in only:
            report[f"batch_{mode}"] = _compare(
                model, tokenizer, sampler, prompts, args, batched=True, sampled=mode == "sampling"
            )
    if "concurrent" in only:
        report["concurrent"] = _concurrent(sampler, prompts, args)
    if "server" in only:
        report.update(_server(model, tokenizer, sampler, prompts, args))
    for key, value in report.items():
        if isinstance(value, dict):
            print(key, " ".join(f"{k}={v:.3g}" for k, v in value.items()))
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
