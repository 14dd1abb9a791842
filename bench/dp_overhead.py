"""DP vs non-DP training step: time and peak memory, side by side in one run.

For LoRA and for full fine-tuning, the same model and batch are trained with and
without DP-SGD through :class:`tensafe.engine.TrainingEngine`.

* **Time.** The DP and non-DP engines live in one process and take steps
  alternately (DP, non-DP, DP, ...), so any drift in machine load hits both alike;
  the median step time of each is reported after warm-up. A step is
  ``forward_backward`` + ``optim_step`` — everything the user waits for,
  including clipping, noise and privacy accounting.
* **Memory.** Each configuration runs alone in a fresh subprocess: on CPU, the
  peak resident memory (VmHWM) minus the resident memory before the model was
  built, i.e. model + optimizer state + activations + per-example state; on
  CUDA, ``torch.cuda.max_memory_allocated``.

    python bench/dp_overhead.py --json                 # tiny Llama, 8 × 128, CPU
    python bench/dp_overhead.py --model smollm2-135m-instruct --steps 5

The last line of output is one JSON object (with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

KINDS = ("lora", "full")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _engine(args: argparse.Namespace, *, kind: str, dp: bool, device: str):
    from tensafe.engine import OptimizerConfig, TrainingEngine
    from tensafe.models import LoRAConfig, build_tiny_llama, load_causal_lm
    from tensafe.privacy import DPConfig

    loaded = (
        build_tiny_llama()
        if args.model == "tiny-llama"
        else load_causal_lm(args.model, device=device)
    )
    dp_config = (
        DPConfig(
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            dataset_size=100_000,
            expected_batch_size=args.batch,
        )
        if dp
        else DPConfig(enabled=False)
    )
    return TrainingEngine(
        model=loaded,
        lora_config=LoRAConfig(rank=args.lora_rank) if kind == "lora" else None,
        dp_config=dp_config,
        optimizer=OptimizerConfig(learning_rate=1e-4),
        device=device,
    )


def _batch(engine, args: argparse.Namespace):
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, engine.vocab_size, (args.batch, args.seq + 1), generator=g)
    return engine.to_batch({"input_ids": ids[:, :-1].tolist(), "labels": ids[:, 1:].tolist()})


def _step(engine, batch, device: str) -> float:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    engine.forward_backward(batch)
    engine.optim_step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def time_kind(args: argparse.Namespace, kind: str) -> dict[str, float]:
    """Median step time of DP and non-DP engines stepping alternately."""
    device = _device(args.device)
    engines = {
        "dp": _engine(args, kind=kind, dp=True, device=device),
        "nodp": _engine(args, kind=kind, dp=False, device=device),
    }
    batch = _batch(engines["dp"], args).to(device)
    times: dict[str, list[float]] = {k: [] for k in engines}
    for i in range(args.warmup + args.steps):
        for name, engine in engines.items():
            dt = _step(engine, batch, device)
            if i >= args.warmup:
                times[name].append(dt)
    return {name: statistics.median(v) for name, v in times.items()}


def memory_worker(args: argparse.Namespace) -> dict[str, float]:
    """Peak training memory of one configuration (run in a fresh process)."""
    import torch

    device = _device(args.device)
    kind, mode = args.worker.split("-")
    base = _rss_kib("VmRSS:")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    engine = _engine(args, kind=kind, dp=mode == "dp", device=device)
    batch = _batch(engine, args).to(device)
    for _ in range(2):
        _step(engine, batch, device)
    if device.startswith("cuda"):
        return {"mem_bytes": float(torch.cuda.max_memory_allocated())}
    return {"mem_bytes": float((_rss_kib("VmHWM:") - base) * 1024)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(memory_worker(args)))
        return
    passthrough = [
        f"--model={args.model}",
        f"--batch={args.batch}",
        f"--seq={args.seq}",
        f"--lora-rank={args.lora_rank}",
        f"--device={args.device}",
    ]
    summary: dict[str, object] = {
        "model": args.model,
        "batch": args.batch,
        "seq": args.seq,
        "device": _device(args.device),
        "steps": args.steps,
    }
    for kind in KINDS:
        med = time_kind(args, kind)
        mem = {}
        for mode in ("dp", "nodp"):
            out = subprocess.run(
                [sys.executable, __file__, f"--worker={kind}-{mode}", *passthrough],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
            )
            mem[mode] = json.loads(out.stdout.strip().splitlines()[-1])["mem_bytes"]
        for mode in ("dp", "nodp"):
            summary[f"{kind}_{mode}_step_ms"] = round(med[mode] * 1e3, 2)
            summary[f"{kind}_{mode}_mem_mib"] = round(mem[mode] / 2**20, 1)
        summary[f"dp_{kind}_time_ratio"] = round(med["dp"] / med["nodp"], 3)
        summary[f"dp_{kind}_mem_ratio"] = round(mem["dp"] / mem["nodp"], 3)
        print(
            f"{kind:5s} step: DP {med['dp'] * 1e3:8.1f} ms, non-DP {med['nodp'] * 1e3:8.1f} ms "
            f"(×{summary[f'dp_{kind}_time_ratio']}); peak memory: DP {mem['dp'] / 2**20:7.1f} MiB, "
            f"non-DP {mem['nodp'] / 2**20:7.1f} MiB (×{summary[f'dp_{kind}_mem_ratio']})",
            file=sys.stderr,
        )
    if not args.json:
        for key, value in summary.items():
            print(f"{key:24s} {value}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
