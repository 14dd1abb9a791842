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

With ``--loss-chunks`` it compares, instead, a DP engine that builds the full
``(B, T, V)`` logits (``loss_chunk_tokens=None``) with one that applies the output
head ``--loss-chunk-tokens`` positions at a time (the default), same measurements:

    python bench/dp_overhead.py --model smollm2-135m-instruct --loss-chunks --batch 4 --seq 1024

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


def _engine(
    args: argparse.Namespace,
    *,
    kind: str,
    dp: bool,
    device: str,
    loss_chunk_tokens: int | None,
):
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
        loss_chunk_tokens=loss_chunk_tokens,
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


def _kinds(args: argparse.Namespace) -> list[str]:
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise SystemExit(f"--kinds: {unknown or 'none'} not in {','.join(KINDS)}")
    return kinds


def _chunk_tokens(args: argparse.Namespace) -> int | None:
    """The engines' ``loss_chunk_tokens``: ``--loss-chunk-tokens``, 0 meaning full
    logits, the engine's default when not given."""
    from tensafe.losses import DEFAULT_CHUNK_TOKENS

    if args.loss_chunk_tokens is None:
        return DEFAULT_CHUNK_TOKENS
    return args.loss_chunk_tokens or None


def time_kind(args: argparse.Namespace, kind: str) -> dict[str, float]:
    """Median step time of DP and non-DP engines stepping alternately."""
    device = _device(args.device)
    chunks = _chunk_tokens(args)
    return _median_step_times(
        args,
        {
            "dp": _engine(args, kind=kind, dp=True, device=device, loss_chunk_tokens=chunks),
            "nodp": _engine(args, kind=kind, dp=False, device=device, loss_chunk_tokens=chunks),
        },
    )


def _median_step_times(args: argparse.Namespace, engines: dict) -> dict[str, float]:
    """Median step time of each engine, the engines stepping alternately on one batch."""
    device = _device(args.device)
    batch = _batch(next(iter(engines.values())), args).to(device)
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
    engine = _engine(
        args, kind=kind, dp=mode == "dp", device=device, loss_chunk_tokens=_chunk_tokens(args)
    )
    batch = _batch(engine, args).to(device)
    # the step times are a by-product (a process of its own, not alternating): the
    # side-by-side figures come from time_kind / _median_step_times
    step_s = statistics.median(_step(engine, batch, device) for _ in range(args.memory_steps))
    if device.startswith("cuda"):
        return {"mem_bytes": float(torch.cuda.max_memory_allocated()), "step_s": step_s}
    return {"mem_bytes": float((_rss_kib("VmHWM:") - base) * 1024), "step_s": step_s}


def _peak_memory(worker: str, passthrough: list[str]) -> float:
    """Peak memory (bytes) of one configuration, measured by a fresh subprocess."""
    out = subprocess.run(
        [sys.executable, __file__, f"--worker={worker}", *passthrough],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["mem_bytes"]


def _report_pair(
    summary: dict[str, object],
    kind: str,
    *,
    med: dict[str, float],
    mem: dict[str, float],
    new: str,
    base: str,
) -> None:
    """Add ``new``'s and ``base``'s step time and peak memory and the ratios
    ``{new}_{kind}_time_ratio`` / ``_mem_ratio`` to ``summary``; print one line."""
    for mode in (new, base):
        summary[f"{kind}_{mode}_step_ms"] = round(med[mode] * 1e3, 2)
        summary[f"{kind}_{mode}_mem_mib"] = round(mem[mode] / 2**20, 1)
    time_ratio = summary[f"{new}_{kind}_time_ratio"] = round(med[new] / med[base], 3)
    mem_ratio = summary[f"{new}_{kind}_mem_ratio"] = round(mem[new] / mem[base], 3)
    print(
        f"{kind:5s} step: {new} {med[new] * 1e3:8.1f} ms, {base} {med[base] * 1e3:8.1f} ms "
        f"(×{time_ratio}); peak memory: {new} {mem[new] / 2**20:7.1f} MiB, "
        f"{base} {mem[base] / 2**20:7.1f} MiB (×{mem_ratio})",
        file=sys.stderr,
    )


def compare_loss_chunks(args: argparse.Namespace, passthrough: list[str]) -> dict[str, object]:
    """DP engines with full logits vs chunked logits: median step time (alternating,
    one process) and peak memory (a fresh process each), for LoRA and full FT."""
    device = _device(args.device)
    chunked = _chunk_tokens(args)
    if chunked is None:
        raise SystemExit("--loss-chunks compares with chunked logits: --loss-chunk-tokens > 0")
    modes = {"full_logits": None, "chunked": chunked}
    summary: dict[str, object] = {
        "model": args.model,
        "batch": args.batch,
        "seq": args.seq,
        "device": device,
        "steps": args.steps,
        "loss_chunk_tokens": chunked,
    }
    for kind in _kinds(args):
        med = _median_step_times(
            args,
            {
                mode: _engine(args, kind=kind, dp=True, device=device, loss_chunk_tokens=tokens)
                for mode, tokens in modes.items()
            },
        )
        mem = {
            mode: _peak_memory(f"{kind}-dp", [*passthrough, f"--loss-chunk-tokens={tokens or 0}"])
            for mode, tokens in modes.items()
        }
        _report_pair(summary, kind, med=med, mem=mem, new="chunked", base="full_logits")
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--kinds", default=",".join(KINDS), help="lora,full or one of them")
    p.add_argument("--memory-steps", type=int, default=2, help="steps of each peak-memory process")
    p.add_argument(
        "--loss-chunk-tokens",
        type=int,
        default=None,
        help="positions whose logits are held at once (0: the full B×T×V logits; "
        "default: the engine's)",
    )
    p.add_argument(
        "--loss-chunks",
        action="store_true",
        help="compare full logits with chunked ones (DP engines) instead of DP with non-DP",
    )
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
        f"--memory-steps={args.memory_steps}",
    ]
    if args.loss_chunks:
        summary = compare_loss_chunks(args, passthrough)
        if not args.json:
            for key, value in summary.items():
                print(f"{key:32s} {value}")
        print(json.dumps(summary))
        return
    if args.loss_chunk_tokens is not None:
        passthrough.append(f"--loss-chunk-tokens={args.loss_chunk_tokens}")
    summary: dict[str, object] = {
        "model": args.model,
        "batch": args.batch,
        "seq": args.seq,
        "device": _device(args.device),
        "steps": args.steps,
    }
    for kind in _kinds(args):
        med = time_kind(args, kind)
        mem = {mode: _peak_memory(f"{kind}-{mode}", passthrough) for mode in ("dp", "nodp")}
        _report_pair(summary, kind, med=med, mem=mem, new="dp", base="nodp")
    if not args.json:
        for key, value in summary.items():
            print(f"{key:24s} {value}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
