"""Per-step overhead of the Ray worker backend vs the in-process one, side by side.

Two ``tensafe serve`` subprocesses run at once on 127.0.0.1, identical except for
``TENSAFE_WORKER_BACKEND``: ``inprocess`` (the run's engine in a worker thread of the
server) and ``ray`` (a local Ray started by that server, one actor holding the run's
engine; every engine call is an actor call, checkpoints would be sealed in the actor).
Each gets one DP-LoRA run of the same config, charged to a dataset budget, driven by
the ``tg_tinker`` SDK: ``forward_backward(batch).result()`` then
``optim_step().result()``.

Steps alternate (in-process then Ray, then the reverse order, ...) so drift in machine
load hits both alike; the ratio reported is the median of per-step ratios (each pair
measured back to back), with the ratio of the medians beside it. The Ray actor gets as
many CPUs (and torch threads) as the machine has, like the in-process server.

    python bench/ray_overhead.py --json                           # tiny Llama, 8 × 128
    python bench/ray_overhead.py --model smollm2-135m-instruct --steps 20 --json

The last line of output is one JSON object (with ``--json``), including
``ray_step_time_ratio`` (Ray / in-process median step time; target ≤ 1.05 on
SmolLM2-135M).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from _live_server import LiveServer
from server_overhead import step_arguments

VOCAB = 49152


def _serve(stack: ExitStack, data_dir: Path, env: dict[str, str]) -> tuple[LiveServer, str]:
    """A started server with one tenant and a dataset budget ``bench``; its API key."""
    from tg_tinker import ServiceClient

    server = LiveServer(data_dir, env)
    keys = json.loads(server.tensafe("admin", "create-tenant", "bench", "--json"))
    server.start()
    stack.callback(server.stop)
    with ServiceClient(server.url, api_key=keys["privacy_officer_api_key"]) as officer:
        officer.create_privacy_budget("bench", epsilon_cap=1e6, delta=1e-6)
    return server, keys["api_key"]


def measure_ray_overhead(
    *,
    model: str = "tiny-llama",
    steps: int = 10,
    warmup: int = 2,
    batch: int = 8,
    seq: int = 128,
    lora_rank: int = 8,
    verbose: bool = True,
) -> dict[str, Any]:
    """Median per-step times of the same DP-LoRA workload through an in-process-backend
    server and a Ray-backend server, and their paired ratio (see the module docstring).

    Raises:
        RuntimeError: a server did not start (its ``server.log`` is named).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tg_tinker import BatchData, DPConfig, LoRAConfig, ServiceClient, TrainingConfig

    cpus = str(os.cpu_count() or 1)
    config = TrainingConfig(
        model_ref=model,
        lora_config=LoRAConfig(rank=lora_rank, alpha=2 * lora_rank),
        dp_config=DPConfig(
            noise_multiplier=1.0,
            dataset_size=100_000,
            expected_batch_size=batch,
            dataset_id="bench",
        ),
        seed=0,
    )
    times: dict[str, list[float]] = {"inprocess": [], "ray": []}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="tensafe-bench-") as tmp:
        clients = {}
        for name, env in (
            ("inprocess", {"TENSAFE_WORKER_BACKEND": "inprocess"}),
            (
                "ray",
                {
                    "TENSAFE_WORKER_BACKEND": "ray",
                    "TENSAFE_RAY_ACTORS": "1",
                    "TENSAFE_RAY_NUM_CPUS": cpus,
                    "TENSAFE_RAY_CPUS_PER_ACTOR": cpus,
                },
            ),
        ):
            server, api_key = _serve(stack, Path(tmp) / name, env)
            service = stack.enter_context(ServiceClient(server.url, api_key=api_key, timeout=600))
            clients[name] = service.create_training_client(config)

        def step(name: str, wire: BatchData) -> float:
            tc = clients[name]
            t0 = time.perf_counter()
            tc.forward_backward(wire).result()
            tc.optim_step().result()
            return time.perf_counter() - t0

        for i in range(warmup + steps):
            ids = np.random.default_rng(i).integers(0, VOCAB, size=(batch, seq)).tolist()
            wire = BatchData(input_ids=ids, labels=[[*row[1:], -100] for row in ids])
            order = ("inprocess", "ray") if i % 2 == 0 else ("ray", "inprocess")
            measured = {name: step(name, wire) for name in order}
            if i >= warmup:
                for name, seconds in measured.items():
                    times[name].append(seconds)
            if verbose:
                print(
                    f"step {i}: in-process {measured['inprocess']:.3f}s  "
                    f"ray {measured['ray']:.3f}s" + ("  (warm-up)" if i < warmup else ""),
                    flush=True,
                )

    local_s = statistics.median(times["inprocess"])
    ray_s = statistics.median(times["ray"])
    paired = statistics.median(r / t for r, t in zip(times["ray"], times["inprocess"], strict=True))
    return {
        "model": model,
        "batch": batch,
        "seq": seq,
        "lora_rank": lora_rank,
        "steps": steps,
        "inprocess_step_s": round(local_s, 4),
        "ray_step_s": round(ray_s, 4),
        "inprocess_steps_s": [round(t, 4) for t in times["inprocess"]],
        "ray_steps_s": [round(t, 4) for t in times["ray"]],
        "ray_overhead_ms": round((ray_s - local_s) * 1000, 1),
        "ray_step_time_ratio": round(paired, 4),
        "ratio_of_medians": round(ray_s / local_s, 4),
    }


def main() -> int:
    args = step_arguments(__doc__.splitlines()[0]).parse_args()
    result = measure_ray_overhead(
        model=args.model,
        steps=args.steps,
        warmup=args.warmup,
        batch=args.batch,
        seq=args.seq,
        lora_rank=args.lora_rank,
    )
    print(
        f"in-process {result['inprocess_step_s']:.3f}s/step, ray {result['ray_step_s']:.3f}s/step "
        f"(paired ratio {result['ray_step_time_ratio']:.3f}; "
        f"ratio of medians {result['ratio_of_medians']:.3f})"
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
