"""DP vs non-DP training step, and vs plain transformers + peft: time and peak memory.

For LoRA and for full fine-tuning, the same model and batch are trained three ways:

* ``dp``: :class:`tensafe.engine.TrainingEngine` with DP-SGD (per-example clipping,
  CSPRNG noise, accounting);
* ``nodp``: the same engine with ``DPConfig(enabled=False)`` (per-example losses,
  finiteness guards, no clipping or noise);
* ``plain``: what a user would run without TenSafe — transformers (+ peft for LoRA,
  the same adapter shape), the model's own mean loss ``model(input_ids,
  labels=input_ids).loss``, ``loss.backward()``, ``torch.optim.AdamW`` (same learning
  rate, ``fused=True``: torch's fastest AdamW, as the engine uses),
  ``zero_grad(set_to_none=True)``: no engine, no handicap (same weights, dtype,
  threads, batch and warm-up; no attention mask since the batch has no padding).

* **Time.** Each trainer runs in a process of its own — as a TenSafe worker and the
  user's own training script do — and they take steps in turns (dp, nodp, plain, dp,
  ...), so drift in machine load hits them alike; the median step time of each is
  reported after warm-up, with its split into forward+backward and optimizer step and
  the process CPU time. A step is everything the user waits for (for ``dp``
  including clipping, noise and privacy accounting). ``--shared-process`` puts all
  three in this process instead; they then share one allocator heap, and which of
  them pays for fresh pages depends on the others' frees (on a 2-core CPU the plain
  SmolLM2 step moved between 5.7 and 6.4 s from run to run that way).
* **Memory.** Each configuration runs alone in a fresh subprocess for two steps: on
  CPU, the peak resident set size (``VmHWM`` from ``/proc/self/status``) minus the
  resident size before the model was built, i.e. model + optimizer state +
  activations + gradients + per-example state; on CUDA,
  ``torch.cuda.max_memory_allocated``.

Ratios ``dp/nodp``, ``dp/plain`` and ``nodp/plain`` are printed side by side.

    python bench/dp_overhead.py --json                 # tiny Llama, 8 × 128, CPU
    python bench/dp_overhead.py --model smollm2-135m-instruct --steps 3 --json

With ``--loss-chunks`` it compares, instead, a DP engine that builds the full
``(B, T, V)`` logits (``loss_chunk_tokens=None``) with one that applies the output
head ``--loss-chunk-tokens`` positions at a time (the default), same measurements:

    python bench/dp_overhead.py --model smollm2-135m-instruct --loss-chunks --batch 4 --seq 1024

The last line of output is one JSON object (with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

KINDS = ("lora", "full")
MODES = ("dp", "nodp", "plain")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _load(args: argparse.Namespace, device: str):
    from tensafe.models import build_tiny_llama, load_causal_lm

    if args.model == "tiny-llama":
        return build_tiny_llama()
    return load_causal_lm(args.model, device=device)


def _engine(
    args: argparse.Namespace,
    *,
    kind: str,
    dp: bool,
    device: str,
    loss_chunk_tokens: int | None,
):
    from tensafe.engine import OptimizerConfig, TrainingEngine
    from tensafe.models import LoRAConfig
    from tensafe.privacy import DPConfig

    loaded = _load(args, device)
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


def _token_ids(args: argparse.Namespace, vocab_size: int):
    """The benchmark's ``(B, T + 1)`` token ids (fixed seed)."""
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab_size, (args.batch, args.seq + 1), generator=g)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _Timer:
    """Wall-clock split of one step into forward+backward and optimizer step, and the
    process CPU time of the whole step."""

    def __init__(self, device: str) -> None:
        self.device = device
        _sync(device)
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()

    def mark(self) -> None:
        _sync(self.device)
        self.t1 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        _sync(self.device)
        t2 = time.perf_counter()
        return {
            "step": t2 - self.t0,
            "fb": self.t1 - self.t0,
            "opt": t2 - self.t1,
            "cpu": time.process_time() - self.cpu0,
        }


def engine_stepper(args: argparse.Namespace, *, kind: str, dp: bool, device: str):
    """One TenSafe engine step (``forward_backward`` + ``optim_step``) as a callable."""
    engine = _engine(args, kind=kind, dp=dp, device=device, loss_chunk_tokens=_chunk_tokens(args))
    ids = _token_ids(args, engine.vocab_size)
    batch = engine.to_batch({"input_ids": ids[:, :-1].tolist(), "labels": ids[:, 1:].tolist()}).to(
        device
    )

    def step() -> dict[str, float]:
        timer = _Timer(device)
        engine.forward_backward(batch)
        timer.mark()
        engine.optim_step()
        return timer.stop()

    return step


def plain_stepper(args: argparse.Namespace, *, kind: str, device: str):
    """The user's real alternative, as a callable: transformers (+ peft LoRA of the same
    shape as TenSafe's default adapter), the model's own mean token loss, torch AdamW."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from tensafe.models import LoRAConfig

    model = _load(args, device).model.to(device)
    if kind == "lora":
        ours = LoRAConfig(rank=args.lora_rank)
        model = get_peft_model(
            model,
            LoraConfig(
                r=ours.rank,
                lora_alpha=ours.alpha,
                lora_dropout=0.0,
                target_modules=list(ours.selected_modules),
                task_type=TaskType.CAUSAL_LM,
            ),
        )
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True
    )
    vocab = int(model.get_input_embeddings().weight.shape[0])
    input_ids = _token_ids(args, vocab)[:, :-1].contiguous().to(device)

    def step() -> dict[str, float]:
        timer = _Timer(device)
        loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
        loss.backward()
        timer.mark()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return timer.stop()

    return step


def _stepper(args: argparse.Namespace, *, kind: str, mode: str, device: str):
    if mode == "plain":
        return plain_stepper(args, kind=kind, device=device)
    return engine_stepper(args, kind=kind, dp=mode == "dp", device=device)


def _allocator(args: argparse.Namespace) -> None:
    """The trainer process's allocator: with ``--allocator retain`` (default) glibc keeps
    freed memory for reuse, as TenSafe's workers do
    (:func:`tensafe.engine.allocator.retain_freed_memory`), for every trainer alike."""
    if args.allocator == "retain":
        from tensafe.engine.allocator import retain_freed_memory

        if not retain_freed_memory():
            raise SystemExit("--allocator retain: this C library refused it; use default")


def _trainer_process(conn, args: argparse.Namespace, kind: str, mode: str) -> None:
    """A trainer in a process of its own: builds its stepper, then takes one step per
    ``"step"`` it receives and sends back the step's times, until ``"stop"``."""
    try:
        _allocator(args)
        step = _stepper(args, kind=kind, mode=mode, device=_device(args.device))
        conn.send("ready")
        while conn.recv() == "step":
            conn.send(step())
    except BaseException as exc:  # report, do not hang the parent
        conn.send(f"error: {type(exc).__name__}: {exc}")
        raise


def _in_processes(args: argparse.Namespace, kind: str) -> dict[str, list[dict[str, float]]]:
    """Each trainer of ``kind`` in its own process (as a TenSafe worker and the user's
    own training script are), stepping in turns (dp, nodp, plain, dp, ...)."""
    ctx = mp.get_context("spawn")
    trainers = {}
    for mode in MODES:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_trainer_process, args=(child, args, kind, mode), daemon=True)
        proc.start()
        trainers[mode] = (proc, parent)
    try:
        for mode, (_, conn) in trainers.items():
            if (msg := conn.recv()) != "ready":
                raise SystemExit(f"{kind} {mode} trainer: {msg}")
        times: dict[str, list[dict[str, float]]] = {mode: [] for mode in trainers}
        for i in range(args.warmup + args.steps):
            for mode, (_, conn) in trainers.items():
                conn.send("step")
                t = conn.recv()
                if isinstance(t, str):
                    raise SystemExit(f"{kind} {mode} trainer: {t}")
                if i >= args.warmup:
                    times[mode].append(t)
        return times
    finally:
        for proc, conn in trainers.values():
            if proc.is_alive():
                conn.send("stop")
            proc.join(timeout=60)


def _in_this_process(args: argparse.Namespace, kind: str) -> dict[str, list[dict[str, float]]]:
    """All trainers of ``kind`` in this process, stepping in turns (they share one
    allocator heap: who pays the page faults depends on the others' frees)."""
    _allocator(args)
    device = _device(args.device)
    steppers = {mode: _stepper(args, kind=kind, mode=mode, device=device) for mode in MODES}
    times: dict[str, list[dict[str, float]]] = {mode: [] for mode in steppers}
    for i in range(args.warmup + args.steps):
        for mode, step in steppers.items():
            t = step()
            if i >= args.warmup:
                times[mode].append(t)
    return times


def time_kind(args: argparse.Namespace, kind: str) -> dict[str, dict[str, float]]:
    """Median step time (and its parts) of the dp, nodp and plain trainers of ``kind``,
    stepping in turns: each in its own process (default), or all in this one
    (``--shared-process``)."""
    times = (_in_this_process if args.shared_process else _in_processes)(args, kind)
    return {
        mode: {part: statistics.median(t[part] for t in ts) for part in ts[0]}
        for mode, ts in times.items()
    }


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

    _allocator(args)
    device = _device(args.device)
    kind, mode = args.worker.split("-")
    base = _rss_kib("VmRSS:")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    step = _stepper(args, kind=kind, mode=mode, device=device)
    for _ in range(args.memory_steps):
        step()
    if device.startswith("cuda"):
        return {"mem_bytes": float(torch.cuda.max_memory_allocated())}
    return {"mem_bytes": float((_rss_kib("VmHWM:") - base) * 1024)}


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


def report_kind(
    summary: dict[str, object],
    kind: str,
    *,
    med: dict[str, dict[str, float]],
    mem: dict[str, float],
) -> None:
    """Add each mode's figures and the ratios dp/nodp, dp/plain, nodp/plain to
    ``summary``; print them side by side."""
    for mode in MODES:
        for part, key in (("step", "step"), ("fb", "fb"), ("opt", "opt"), ("cpu", "cpu")):
            summary[f"{kind}_{mode}_{key}_ms"] = round(med[mode][part] * 1e3, 2)
        summary[f"{kind}_{mode}_mem_mib"] = round(mem[mode] / 2**20, 1)
    pairs = (
        ("dp", "nodp", "dp"),
        ("dp", "plain", "dp_vs_plain"),
        ("nodp", "plain", "nodp_vs_plain"),
    )
    for new, base, name in pairs:
        summary[f"{name}_{kind}_time_ratio"] = round(med[new]["step"] / med[base]["step"], 3)
        summary[f"{name}_{kind}_mem_ratio"] = round(mem[new] / mem[base], 3)
    lines = [
        f"{kind:5s} {mode:5s} step {med[mode]['step'] * 1e3:9.1f} ms "
        f"(fwd+bwd {med[mode]['fb'] * 1e3:9.1f}, optim {med[mode]['opt'] * 1e3:8.1f}, "
        f"cpu {med[mode]['cpu'] * 1e3:9.1f}); peak memory {mem[mode] / 2**20:7.1f} MiB"
        for mode in MODES
    ]
    lines += [
        f"{kind:5s} {new}/{base}: time ×{summary[f'{name}_{kind}_time_ratio']}, "
        f"memory ×{summary[f'{name}_{kind}_mem_ratio']}"
        for new, base, name in pairs
    ]
    print("\n".join(lines), file=sys.stderr)


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
    p.add_argument("--warmup", type=int, default=1)
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
    p.add_argument(
        "--allocator",
        choices=("retain", "default"),
        default="retain",
        help="every trainer's malloc: keep freed memory (as TenSafe workers do) or glibc's default",
    )
    p.add_argument(
        "--shared-process",
        action="store_true",
        help="time all trainers of a kind in this process instead of one process each",
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
        f"--allocator={args.allocator}",
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
    summary["memory"] = (
        f"peak RSS (VmHWM) minus RSS before the model was built, fresh process, "
        f"{args.memory_steps} steps"
        if summary["device"] == "cpu"
        else f"torch.cuda.max_memory_allocated, fresh process, {args.memory_steps} steps"
    )
    summary["threads"] = _threads()
    summary["allocator"] = args.allocator
    summary["timing"] = (
        "one process, in turns" if args.shared_process else "a process per trainer, in turns"
    )
    for kind in _kinds(args):
        med = time_kind(args, kind)
        mem = {mode: _peak_memory(f"{kind}-{mode}", passthrough) for mode in MODES}
        report_kind(summary, kind, med=med, mem=mem)
    if not args.json:
        for key, value in summary.items():
            print(f"{key:32s} {value}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
