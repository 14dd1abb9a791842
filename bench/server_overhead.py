"""The same DP-LoRA step in-process vs through the SDK and a live server, side by side.

* **In-process**: :class:`tensafe.engine.TrainingEngine` in this process,
  ``forward_backward(batch)`` then ``optim_step()``.
* **Server**: a ``tensafe serve`` subprocess on 127.0.0.1 (SQLite, local artifact
  store, JSON logs to a file), driven by the ``tg_tinker`` SDK with one run of the
  same config: ``tc.forward_backward(batch).result()`` then ``tc.optim_step().result()``
  — two HTTP submissions, two long-polls, the database writes (operation rows, the
  dataset budget check and the step's ledger row, as every DP step on a server is
  charged to a budget) and JSON serialisation of the per-token outputs.
  In a run's first 400 steps of one (σ, q) every step needs a fresh PRV evaluation
  for the budget (12–27 ms of CPU here, prefetched during the step; see
  docs/audit.md §4), which this short benchmark includes.
  Also reported: the pipelined form (both submitted, then both awaited).

Steps alternate (in-process, server, server pipelined, then the reverse order, ...)
so drift in machine load hits all alike. The ratio reported is the median of the
per-iteration ratios (each pair measured back to back), which is robust to load from
other processes; the ratio of the median step times is reported too. The server's
model runs in another process on the same cores, idle while the in-process step runs.

    python bench/server_overhead.py --json              # tiny Llama, batch 8 × 128
    python bench/server_overhead.py --steps 20 --batch 4 --seq 64

The last line of output is one JSON object (with ``--json``), including
``server_step_time_ratio`` (server / in-process median step time; target ≤ 1.10).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _live_server import LiveServer

VOCAB = 49152


def _batch(args: argparse.Namespace, seed: int) -> dict[str, list[list[int]]]:
    ids = np.random.default_rng(seed).integers(0, VOCAB, size=(args.batch, args.seq)).tolist()
    return {"input_ids": ids, "labels": [[*row[1:], -100] for row in ids]}


def _dp(args: argparse.Namespace) -> dict[str, object]:
    return {"noise_multiplier": 1.0, "dataset_size": 100_000, "expected_batch_size": args.batch}


def _engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from tensafe.engine import TrainingEngine
    from tensafe.models import LoRAConfig, load_causal_lm
    from tensafe.privacy import DPConfig

    return TrainingEngine(
        model=load_causal_lm(args.model),
        lora_config=LoRAConfig(rank=args.lora_rank, alpha=2 * args.lora_rank),
        dp_config=DPConfig(**_dp(args)),  # type: ignore[arg-type]
        seed=0,
    )


def step_arguments(description: str) -> argparse.ArgumentParser:
    """The options of a step benchmark (model, batch × seq, LoRA rank, steps, --json)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="measured steps of each kind")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    return parser


def main() -> int:
    args = step_arguments(__doc__.splitlines()[0]).parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tg_tinker import BatchData, DPConfig, LoRAConfig, ServiceClient, TrainingConfig

    engine = _engine(args)
    with tempfile.TemporaryDirectory(prefix="tensafe-bench-") as tmp:
        server = LiveServer(Path(tmp))
        keys = json.loads(server.tensafe("admin", "create-tenant", "bench", "--json"))
        api_key = keys["api_key"]
        server.start()
        try:
            # As in production, every DP step is charged to a dataset budget (set with
            # the privacy-officer key): the server side of the ratio includes the budget
            # check and ledger append. δ below 1/N for N = 100,000 (the default 1e-5 is
            # refused at admission).
            with ServiceClient(server.url, api_key=keys["privacy_officer_api_key"]) as officer:
                officer.create_privacy_budget("bench", epsilon_cap=1e6, delta=1e-6)
            with ServiceClient(server.url, api_key=api_key, timeout=300) as service:
                config = TrainingConfig(
                    model_ref=args.model,
                    lora_config=LoRAConfig(rank=args.lora_rank, alpha=2 * args.lora_rank),
                    dp_config=DPConfig(**_dp(args), dataset_id="bench"),  # type: ignore[arg-type]
                    seed=0,
                )
                tc = service.create_training_client(config)
                local: list[float] = []
                remote: list[float] = []
                pipelined: list[float] = []

                def step_local(batch: dict[str, list[list[int]]]) -> float:
                    t0 = time.perf_counter()
                    engine.forward_backward(batch)
                    engine.optim_step()
                    return time.perf_counter() - t0

                def step_server(wire: BatchData) -> float:
                    t0 = time.perf_counter()
                    tc.forward_backward(wire).result()
                    tc.optim_step().result()
                    return time.perf_counter() - t0

                def step_pipelined(wire: BatchData) -> float:
                    t0 = time.perf_counter()
                    fb, opt = tc.forward_backward(wire), tc.optim_step()
                    fb.result()
                    opt.result()
                    return time.perf_counter() - t0

                for i in range(args.warmup + args.steps):
                    batch = _batch(args, i)
                    wire = BatchData(**batch)
                    if i % 2 == 0:
                        t_local = step_local(batch)
                        t_remote = step_server(wire)
                        t_pipe = step_pipelined(wire)
                    else:
                        t_pipe = step_pipelined(wire)
                        t_remote = step_server(wire)
                        t_local = step_local(batch)
                    if i >= args.warmup:
                        local.append(t_local)
                        remote.append(t_remote)
                        pipelined.append(t_pipe)
                    print(
                        f"step {i}: in-process {t_local:.3f}s  server {t_remote:.3f}s  "
                        f"server pipelined {t_pipe:.3f}s"
                        + ("  (warm-up)" if i < args.warmup else ""),
                        flush=True,
                    )
        finally:
            server.stop()

    local_s = statistics.median(local)
    remote_s = statistics.median(remote)
    pipelined_s = statistics.median(pipelined)
    paired = statistics.median(r / t for r, t in zip(remote, local, strict=True))
    paired_pipelined = statistics.median(p / t for p, t in zip(pipelined, local, strict=True))
    result = {
        "model": args.model,
        "batch": args.batch,
        "seq": args.seq,
        "lora_rank": args.lora_rank,
        "steps": args.steps,
        "inprocess_step_s": round(local_s, 4),
        "server_step_s": round(remote_s, 4),
        "server_pipelined_step_s": round(pipelined_s, 4),
        "server_overhead_ms": round((remote_s - local_s) * 1000, 1),
        "server_step_time_ratio": round(paired, 4),
        "server_pipelined_step_time_ratio": round(paired_pipelined, 4),
        "ratio_of_medians": round(remote_s / local_s, 4),
    }
    print(
        f"in-process {local_s:.3f}s/step, server {remote_s:.3f}s/step "
        f"(paired ratio {paired:.3f}; pipelined {paired_pipelined:.3f}; "
        f"ratio of medians {remote_s / local_s:.3f})"
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
