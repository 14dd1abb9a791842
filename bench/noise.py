"""DP noise generation: the AES-256-CTR CSPRNG vs torch's generator, side by side.

Four sources draw N(0, σ²C²) noise shaped like the same tensors, taking turns
(CSPRNG, CSPRNG secure, torch, torch secure, CSPRNG, ...) so drift in machine load
hits them alike; medians are reported.

* ``csprng`` / ``csprng_secure``: :class:`tensafe.privacy.NoiseSource` (AES-256-CTR
  keystream, Box–Muller in float64; secure = sum of 4 draws ÷ 2).
* ``torch`` / ``torch_secure``: Opacus' ``_generate_noise`` with a
  ``torch.Generator`` (MT19937 on CPU, Philox on CUDA) seeded from ``secrets`` —
  what TenSafe used before.

Part 1 times one tensor of ``--numel`` coordinates and reports milliseconds per
million parameters. Part 2 (skip with ``--no-step``) builds a DP-LoRA
:class:`tensafe.engine.TrainingEngine` of ``--model``, times its step
(``forward_backward`` + ``optim_step`` on a ``--batch`` × ``--seq`` batch, which
draws its noise from the default source), and the noise of its trainable
parameters (one draw per tensor, as ``optim_step`` does) from each source, in
turns; the noise share is noise time ÷ step time.

    python bench/noise.py --json                       # tiny Llama, 8 × 128, CPU
    python bench/noise.py --model smollm2-135m-instruct --steps 5 --json

The last line of output is one JSON object (with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterable

SOURCES = ("csprng", "csprng_secure", "torch", "torch_secure")
STD = 1.0


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_sources(device: str) -> dict[str, Callable[[object], object]]:
    """name → draw(reference) for each noise source, all on ``device``."""
    import torch
    from opacus.optimizers.optimizer import _generate_noise

    from tensafe.privacy import NoiseSource

    plain = NoiseSource(secure_mode=False, device=device)
    secure = NoiseSource(secure_mode=True, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(63))
    return {
        "csprng": lambda ref: plain.gaussian_like(ref, std=STD),
        "csprng_secure": lambda ref: secure.gaussian_like(ref, std=STD),
        "torch": lambda ref: _generate_noise(STD, ref, generator=generator, secure_mode=False),
        "torch_secure": lambda ref: _generate_noise(
            STD, ref, generator=generator, secure_mode=True
        ),
    }


def _time_draws(draw: Callable[[object], object], refs: Iterable[object], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for ref in refs:
        draw(ref)
    _sync(device)
    return time.perf_counter() - t0


def time_sources(refs: list[object], *, device: str, repeats: int) -> dict[str, float]:
    """Median seconds per source to draw noise shaped like every tensor of ``refs``."""
    sources = make_sources(device)
    for draw in sources.values():  # warm-up (allocators, OpenSSL, kernels)
        _time_draws(draw, refs, device)
    times: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(repeats):
        for name, draw in sources.items():
            times[name].append(_time_draws(draw, refs, device))
    return {name: statistics.median(v) for name, v in times.items()}


def time_engine(args: argparse.Namespace, device: str) -> dict[str, float]:
    """Median DP-LoRA step time and per-source noise time for the engine's params."""
    import torch

    from tensafe.engine import OptimizerConfig, TrainingEngine
    from tensafe.models import LoRAConfig, build_tiny_llama, load_causal_lm
    from tensafe.privacy import DPConfig

    loaded = (
        build_tiny_llama()
        if args.model == "tiny-llama"
        else load_causal_lm(args.model, device=device)
    )
    engine = TrainingEngine(
        model=loaded,
        lora_config=LoRAConfig(rank=args.lora_rank),
        dp_config=DPConfig(
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            dataset_size=100_000,
            expected_batch_size=args.batch,
        ),
        optimizer=OptimizerConfig(learning_rate=1e-4),
        device=device,
    )
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, engine.vocab_size, (args.batch, args.seq + 1), generator=g)
    batch = engine.to_batch({"input_ids": ids[:, :-1].tolist(), "labels": ids[:, 1:].tolist()})
    batch = batch.to(device)
    # the references optim_step draws for: each trainable tensor, in at least float32
    refs = [
        torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32))
        for p in engine.params
    ]
    sources = make_sources(device)

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        engine.forward_backward(batch)
        engine.optim_step()
        _sync(device)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"step": [], **{name: [] for name in sources}}
    for i in range(args.warmup + args.steps):
        dt = {"step": step()}
        dt.update({name: _time_draws(draw, refs, device) for name, draw in sources.items()})
        if i >= args.warmup:
            for name, value in dt.items():
                times[name].append(value)
    out = {name: statistics.median(v) for name, v in times.items()}
    out["trainable_params"] = float(sum(p.numel() for p in engine.params))
    out["trainable_tensors"] = float(len(engine.params))
    out["default_source_is_csprng"] = float(not engine.dp.noise.deterministic)
    return out


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--numel", type=int, default=4 * 2**20, help="coordinates in part 1")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-step", action="store_true", help="skip the engine step (part 2)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    device = _device(args.device)
    summary: dict[str, object] = {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "numel": args.numel,
    }

    med = time_sources(
        [torch.zeros(args.numel, device=device)], device=device, repeats=args.repeats
    )
    for name in SOURCES:
        summary[f"{name}_ms_per_mparam"] = round(med[name] * 1e3 / (args.numel / 1e6), 2)
    for name in ("csprng", "csprng_secure"):
        summary[f"{name}_vs_torch"] = round(med[name] / med["torch"], 2)
    summary["csprng_secure_vs_torch_secure"] = round(med["csprng_secure"] / med["torch_secure"], 2)
    print(
        "noise, ms per million parameters: "
        + ", ".join(f"{n} {summary[f'{n}_ms_per_mparam']}" for n in SOURCES),
        file=sys.stderr,
    )

    if not args.no_step:
        eng = time_engine(args, device)
        summary.update(
            model=args.model,
            batch=args.batch,
            seq=args.seq,
            steps=args.steps,
            lora_rank=args.lora_rank,
        )
        summary["trainable_params"] = int(eng["trainable_params"])
        summary["trainable_tensors"] = int(eng["trainable_tensors"])
        summary["dp_lora_step_ms"] = round(eng["step"] * 1e3, 2)
        for name in SOURCES:
            summary[f"{name}_step_noise_ms"] = round(eng[name] * 1e3, 2)
            summary[f"{name}_share_of_step"] = round(eng[name] / eng["step"], 4)
        print(
            f"DP-LoRA step {eng['step'] * 1e3:.1f} ms ({summary['trainable_params']} trainable "
            "params); noise share: "
            + ", ".join(f"{n} {summary[f'{n}_share_of_step']:.2%}" for n in SOURCES),
            file=sys.stderr,
        )
    if not args.json:
        for key, value in summary.items():
            print(f"{key:32s} {value}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
