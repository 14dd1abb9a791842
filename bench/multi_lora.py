"""N concurrent DP-LoRA runs on one shared base model vs N separate model copies.

For each N (``--runs``, default 1, 2, 4, 8) and each layout, a fresh subprocess builds N
:class:`tensafe.engine.TrainingEngine` DP-LoRA runs and trains them:

* ``shared``: the N runs' models come from one :class:`tensafe.models.BaseModelPool`
  (one base in memory; each run has its own module tree aliasing it, own adapter,
  optimizer, clipper and noise stream) — what the in-process worker does;
* ``separate``: each run loads its own copy of the model (``load_causal_lm``) — what
  it did before the pool.

Runs are stepped **round-robin on one thread** (run 1, 2, ..., N, then again), each
step a ``forward_backward`` of its own ``--batch`` × ``--seq`` batch (default 8 × 128)
and an ``optim_step`` with CSPRNG noise; torch's intra-op threads are the process's.

* **Memory**: the peak resident set size of the subprocess (``ru_maxrss`` of that
  child from ``os.wait4``, i.e. everything: interpreter, torch, tokenizer, models,
  optimizer state, activations); on CUDA, ``torch.cuda.max_memory_allocated``. Nothing
  is subtracted from ``peak``; the RSS the process had after its imports, before any
  model, is reported beside it (``baseline``), and ``peak - baseline`` under its own name.
* **Held**: the RSS after the measured steps (activations freed, ``gc`` run, glibc's
  freed heap returned with ``malloc_trim``): what the worker holds between
  operations — models, adapters, optimizer states, interpreter (CUDA:
  ``torch.cuda.memory_allocated``). One DP step's activations and per-example state
  come on top of it, once per step in flight (runs here step one at a time).
* **Floor**: from parameter byte counts: one base (its unique parameter and buffer
  storages) + N × (trainable adapter bytes + optimizer state bytes after a step);
  ``separate`` has N × base instead.
* **Throughput**: aggregate steps/s = N × ``--steps`` / wall time of the measured
  rounds (after ``--warmup`` rounds).

The ratio shared/separate of peak memory at the largest N is the headline (issue #16
target at N = 8: ≤ 0.35).

    python bench/multi_lora.py --json                                    # tiny Llama
    python bench/multi_lora.py --model smollm2-135m-instruct --steps 2 --json
    python bench/multi_lora.py --runs 1 --ray --json    # + Ray backend vs in-process per step
    python bench/multi_lora.py --microbatch 2 --json    # every engine, both layouts: 2 at a time

``--microbatch m`` gives every engine of both layouts ``microbatch_examples=m`` (at most
``m`` examples per pass), so the comparison stays like for like; it bounds the step's
transient memory that both layouts pay. It is recorded in the JSON
(``microbatch_examples``, ``null`` when off).

The last line of output is one JSON object (with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

LAYOUTS = ("shared", "separate")


# ------------------------------------------------------------------ child process
def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``), so that RSS shows
    live memory rather than what the allocator keeps after a step; no-op elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
        if trim is not None:
            trim(0)


def _unique_bytes(tensors: Sequence[object]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()  # type: ignore[attr-defined]
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _optimizer_bytes(engine: object) -> int:
    import torch

    return sum(
        v.nbytes
        for state in engine.optimizer.state.values()  # type: ignore[attr-defined]
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )


def run_layout(
    *,
    layout: str,
    runs: int,
    model: str,
    steps: int,
    warmup: int,
    batch: int,
    seq: int,
    lora_rank: int,
    device: str,
    microbatch: int | None = None,
) -> dict[str, float]:
    """Build ``runs`` DP-LoRA engines in ``layout`` (``microbatch``: their
    ``microbatch_examples``) and train them round-robin (this process); their figures
    (memory is measured by the parent)."""
    import torch

    from tensafe.engine import OptimizerConfig, TrainingEngine
    from tensafe.models import BaseModelPool, LoRAConfig, load_causal_lm
    from tensafe.privacy import DPConfig

    baseline = _rss_bytes()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    pool = BaseModelPool()
    t_build = time.perf_counter()
    engines = []
    for i in range(runs):
        loaded = (
            pool.lora_model(model_ref=model, device=device)
            if layout == "shared"
            else load_causal_lm(model, device=device)
        )
        engines.append(
            TrainingEngine(
                model=loaded,
                lora_config=LoRAConfig(rank=lora_rank),
                dp_config=DPConfig(
                    noise_multiplier=1.0,
                    max_grad_norm=1.0,
                    dataset_size=100_000,
                    expected_batch_size=batch,
                ),
                optimizer=OptimizerConfig(learning_rate=1e-4),
                seed=i,
                device=device,
                microbatch_examples=microbatch,
            )
        )
    build_s = time.perf_counter() - t_build
    batches = []
    for i, engine in enumerate(engines):
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(0, engine.vocab_size, (batch, seq + 1), generator=g)
        batches.append(
            engine.to_batch({"input_ids": ids[:, :-1].tolist(), "labels": ids[:, 1:].tolist()})
        )

    def round_robin() -> None:
        for engine, tb in zip(engines, batches, strict=True):
            engine.forward_backward(tb)
            engine.optim_step()

    for _ in range(warmup):
        round_robin()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        round_robin()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    import gc

    gc.collect()
    _release_free_heap()
    # between steps: models, adapters, optimizer states (activations freed)
    held = torch.cuda.memory_allocated() if device.startswith("cuda") else _rss_bytes()
    first = engines[0]
    frozen = [p for p in first.model.parameters() if not p.requires_grad]
    base_bytes = _unique_bytes([*frozen, *first.model.buffers()])
    out = {
        "baseline_bytes": float(baseline),
        "held_bytes": float(held),
        "build_s": build_s,
        "steps_per_s": runs * steps / elapsed if steps else 0.0,
        "base_bytes": float(base_bytes),
        "adapter_bytes": float(sum(p.nbytes for p in first.params)),
        "optimizer_bytes": float(_optimizer_bytes(first)),
    }
    if device.startswith("cuda"):
        out["cuda_peak_bytes"] = float(torch.cuda.max_memory_allocated())
    return out


# ------------------------------------------------------------------ parent process
def _measure(layout: str, runs: int, argv: list[str]) -> dict[str, float]:
    """One configuration in a fresh subprocess: its figures and its peak RSS."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, f"--child={layout}:{runs}", *argv],
            stdout=out,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{layout} × {runs} failed (exit {proc.returncode}); rerun: {argv}")
        out.seek(0)
        figures = json.loads(out.read().strip().splitlines()[-1])
    figures["peak_rss_bytes"] = float(usage.ru_maxrss * 1024)  # Linux: KiB
    return figures


def ray_overhead(
    *, model: str, steps: int, batch: int, seq: int, lora_rank: int
) -> dict[str, object]:
    """The per-step overhead of the Ray worker backend over the in-process one on the
    same model and batch (issue #16 target ≤ 5 %): one DP-LoRA run through two live
    servers side by side, alternating steps (:mod:`ray_overhead`)."""
    from ray_overhead import measure_ray_overhead

    return measure_ray_overhead(
        model=model, steps=max(steps, 4), batch=batch, seq=seq, lora_rank=lora_rank
    )


def run_benchmark(
    *,
    model: str = "tiny-llama",
    runs: Sequence[int] = (1, 2, 4, 8),
    steps: int = 3,
    warmup: int = 1,
    batch: int = 8,
    seq: int = 128,
    lora_rank: int = 16,
    device: str = "cpu",
    microbatch: int | None = None,
    with_ray: bool = False,
) -> dict[str, object]:
    """Both layouts at each N in ``runs``, each in a fresh subprocess; the figures
    side by side (see the module doc for what is measured and how); with ``with_ray``
    also the Ray backend's per-step overhead (:func:`ray_overhead`), else ``None``."""
    argv = [
        f"--model={model}",
        f"--steps={steps}",
        f"--warmup={warmup}",
        f"--batch={batch}",
        f"--seq={seq}",
        f"--lora-rank={lora_rank}",
        f"--device={device}",
        *([f"--microbatch={microbatch}"] if microbatch is not None else []),
    ]
    rows: list[dict[str, object]] = []
    for n in runs:
        for layout in LAYOUTS:
            figures = _measure(layout, n, argv)
            per_run = figures["adapter_bytes"] + figures["optimizer_bytes"]
            copies = 1 if layout == "shared" else n
            peak = figures.get("cuda_peak_bytes", figures["peak_rss_bytes"])
            row = {
                "layout": layout,
                "runs": n,
                "peak_mib": peak / 2**20,
                "baseline_mib": figures["baseline_bytes"] / 2**20,
                "peak_minus_baseline_mib": (peak - figures["baseline_bytes"]) / 2**20
                if "cuda_peak_bytes" not in figures
                else peak / 2**20,
                "held_mib": figures["held_bytes"] / 2**20,
                "floor_mib": (copies * figures["base_bytes"] + n * per_run) / 2**20,
                "steps_per_s": figures["steps_per_s"],
                "build_s": figures["build_s"],
            }
            rows.append(row)
            print(
                f"{layout:8s} N={n}: peak {row['peak_mib']:8.1f} MiB (baseline "
                f"{row['baseline_mib']:6.1f}, held {row['held_mib']:8.1f}, "
                f"floor {row['floor_mib']:8.1f}), "
                f"{row['steps_per_s']:6.2f} steps/s, built in {row['build_s']:.1f} s",
                file=sys.stderr,
            )
    by = {(r["layout"], r["runs"]): r for r in rows}
    ratios = {
        str(n): {
            "peak": by["shared", n]["peak_mib"] / by["separate", n]["peak_mib"],
            "peak_minus_baseline": by["shared", n]["peak_minus_baseline_mib"]
            / by["separate", n]["peak_minus_baseline_mib"],
            "held": by["shared", n]["held_mib"] / by["separate", n]["held_mib"],
            "floor": by["shared", n]["floor_mib"] / by["separate", n]["floor_mib"],
            "steps_per_s": by["shared", n]["steps_per_s"] / by["separate", n]["steps_per_s"],
        }
        for n in runs
    }
    for n, r in ratios.items():
        print(
            f"shared/separate N={n}: peak ×{r['peak']:.3f} (above baseline "
            f"×{r['peak_minus_baseline']:.3f}, held ×{r['held']:.3f}, floor ×{r['floor']:.3f}), "
            f"steps/s ×{r['steps_per_s']:.3f}",
            file=sys.stderr,
        )
    import torch

    return {
        "model": model,
        "device": device,
        "batch": batch,
        "seq": seq,
        "lora_rank": lora_rank,
        "microbatch_examples": microbatch,
        "steps": steps,
        "warmup": warmup,
        "schedule": "round-robin, one thread",
        "torch_threads": torch.get_num_threads(),
        "memory": (
            "peak: ru_maxrss of the configuration's fresh subprocess (os.wait4); baseline: "
            "its RSS after imports; held: its RSS after the steps (gc + malloc_trim); "
            "floor: base + N x (adapter + optimizer state) parameter bytes"
            if not device.startswith("cuda")
            else "peak: torch.cuda.max_memory_allocated in a fresh subprocess"
        ),
        "rows": rows,
        "shared_vs_separate": ratios,
        "ray_vs_inprocess": ray_overhead(
            model=model, steps=steps, batch=batch, seq=seq, lora_rank=lora_rank
        )
        if with_ray
        else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--runs", default="1,2,4,8", help="comma-separated numbers of runs")
    p.add_argument("--steps", type=int, default=3, help="measured rounds (each run one step)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--microbatch",
        type=int,
        default=None,
        help="every engine (both layouts) runs at most this many examples per pass",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--ray",
        action="store_true",
        help="also measure the Ray backend's per-step overhead vs in-process (two live servers)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.microbatch is not None and args.microbatch < 1:
        raise SystemExit("--microbatch: a positive integer (examples per pass)")
    if args.child:
        layout, _, n = args.child.partition(":")
        figures = run_layout(
            layout=layout,
            runs=int(n),
            model=args.model,
            steps=args.steps,
            warmup=args.warmup,
            batch=args.batch,
            seq=args.seq,
            lora_rank=args.lora_rank,
            device=args.device,
            microbatch=args.microbatch,
        )
        print(json.dumps(figures))
        return
    try:
        runs = [int(n) for n in args.runs.split(",") if n.strip()]
    except ValueError:
        raise SystemExit("--runs: comma-separated positive integers, e.g. 1,2,4,8") from None
    if not runs or min(runs) < 1:
        raise SystemExit("--runs: comma-separated positive integers, e.g. 1,2,4,8")
    summary = run_benchmark(
        model=args.model,
        runs=runs,
        steps=args.steps,
        warmup=args.warmup,
        batch=args.batch,
        seq=args.seq,
        lora_rank=args.lora_rank,
        device=args.device,
        microbatch=args.microbatch,
        with_ray=args.ray,
    )
    if not args.json:
        for row in summary["rows"]:  # type: ignore[union-attr]
            print(row)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
