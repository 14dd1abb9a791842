"""The same DP-LoRA step through the Tinker protocol (official ``tinker`` 0.38 client,
``/api/v1``) vs the native protocol (``tg_tinker``, ``/v1``), on one live server.

Two runs of the same config (LoRA on attention and MLP; the Tinker client is told
``train_unembed=False``, its default being True) on one ``tensafe serve`` subprocess
(SQLite, local store),
both charged to one dataset budget: each step is ``forward_backward(datums)`` then
``optim_step``, awaited in turn. The native step sends JSON datums and reads JSON
results; the Tinker step sends a zstd-compressed protobuf batch, reads a protobuf
result, and polls ``retrieve_future``. Both compute the same loss (Tinker's
``cross_entropy`` is the native ``cross_entropy_sum``). Steps alternate (native first,
then Tinker first, ...); the ratio reported is the median of the per-iteration ratios.

    python bench/tinker_overhead.py --json             # tiny Llama, batch 8 × 128
    python bench/tinker_overhead.py --steps 20 --batch 4 --seq 64

The last line of output is one JSON object (with ``--json``), including
``tinker_step_time_ratio`` (Tinker / native median step time; target ≤ 1.05).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _live_server import LiveServer
from server_overhead import step_arguments

VOCAB = 49152


def _rows(args: argparse.Namespace, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, VOCAB, size=(args.batch, args.seq + 1)).tolist()


def main() -> int:
    args = step_arguments(__doc__.splitlines()[0]).parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import tinker
    from tg_tinker import DPConfig, LoRAConfig, ServiceClient, TrainingConfig
    from tg_tinker.types import Datum
    from tinker import types as tt

    dp = {"noise_multiplier": 1.0, "dataset_size": 100_000, "expected_batch_size": args.batch}
    with tempfile.TemporaryDirectory(prefix="tensafe-bench-") as tmp:
        server = LiveServer(Path(tmp))
        keys = json.loads(server.tensafe("admin", "create-tenant", "bench", "--json"))
        server.start()
        native_times: list[float] = []
        tinker_times: list[float] = []
        try:
            with ServiceClient(server.url, api_key=keys["privacy_officer_api_key"]) as officer:
                officer.create_privacy_budget("bench", epsilon_cap=1e6, delta=1e-6)
            native = ServiceClient(server.url, api_key=keys["api_key"], timeout=300)
            ntc = native.create_training_client(
                TrainingConfig(
                    model_ref=args.model,
                    lora_config=LoRAConfig(rank=args.lora_rank, alpha=2 * args.lora_rank),
                    dp_config=DPConfig(**dp, dataset_id="bench"),  # type: ignore[arg-type]
                    seed=0,
                )
            )
            metadata = {f"tensafe.dp.{k}": str(v) for k, v in dp.items()}
            service = tinker.ServiceClient(
                user_metadata={**metadata, "tensafe.dp.dataset_id": "bench"},
                base_url=server.url,
                api_key="tml-" + keys["api_key"],
            )
            # the native run's LoRA layers (Tinker's default also trains the unembedding,
            # a far heavier per-example gradient: not a protocol cost)
            ttc = service.create_lora_training_client(
                base_model=args.model, rank=args.lora_rank, train_unembed=False
            ).result()

            def step_native(rows: list[list[int]]) -> float:
                data = [
                    Datum(model_input=r[:-1], loss_fn_inputs={"target_tokens": r[1:]}) for r in rows
                ]
                t0 = time.perf_counter()
                ntc.forward_backward(data, loss_fn="cross_entropy_sum").result()
                ntc.optim_step().result()
                return time.perf_counter() - t0

            def step_tinker(rows: list[list[int]]) -> float:
                data = [
                    tt.Datum(
                        model_input=tt.ModelInput.from_ints(r[:-1]),
                        loss_fn_inputs={"target_tokens": np.asarray(r[1:], dtype=np.int64)},
                    )
                    for r in rows
                ]
                t0 = time.perf_counter()
                ttc.forward_backward(data, "cross_entropy").result()
                ttc.optim_step(tt.AdamParams(learning_rate=1e-4)).result()
                return time.perf_counter() - t0

            for i in range(args.warmup + args.steps):
                # fresh rows per step: a declared logical batch holds each example once
                native_rows, tinker_rows = _rows(args, 2 * i), _rows(args, 2 * i + 1)
                if i % 2 == 0:
                    t_native, t_tinker = step_native(native_rows), step_tinker(tinker_rows)
                else:
                    t_tinker, t_native = step_tinker(tinker_rows), step_native(native_rows)
                if i >= args.warmup:
                    native_times.append(t_native)
                    tinker_times.append(t_tinker)
                print(
                    f"step {i}: native {t_native:.3f}s  tinker {t_tinker:.3f}s"
                    + ("  (warm-up)" if i < args.warmup else ""),
                    flush=True,
                )
            service.close("success").result()
            native.close()
        finally:
            server.stop()

    native_s = statistics.median(native_times)
    tinker_s = statistics.median(tinker_times)
    paired = statistics.median(t / n for t, n in zip(tinker_times, native_times, strict=True))
    result = {
        "model": args.model,
        "batch": args.batch,
        "seq": args.seq,
        "lora_rank": args.lora_rank,
        "steps": args.steps,
        "native_step_s": round(native_s, 4),
        "tinker_step_s": round(tinker_s, 4),
        "tinker_overhead_ms": round((tinker_s - native_s) * 1000, 1),
        "tinker_step_time_ratio": round(paired, 4),
        "ratio_of_medians": round(tinker_s / native_s, 4),
    }
    print(
        f"native {native_s:.3f}s/step, tinker {tinker_s:.3f}s/step "
        f"(paired ratio {paired:.3f}; ratio of medians {tinker_s / native_s:.3f})"
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
