"""Remove-one sensitivity of the clipped sum, per parameter dtype and training mode.

DP-SGD's guarantee needs ``‖S(D) − S(D \\ {x})‖ ≤ C`` for the clipped sum
``S = Σ_i clip_C(g_i)``. In exact arithmetic the clipper gives exactly that; in
floating point the clip factors and the sum must be formed precisely enough that
the bound still holds. The worst case is a batch of *aligned* gradients (identical
records), where every rounding error of the sum adds up in the same direction.

For LoRA (adapters in float32 as peft makes them, or cast to the model's dtype) and
full fine-tuning of the tiny Llama, in bfloat16 and float32, this
script builds ``--batch`` identical records, clips them with
:class:`tensafe.privacy.per_example.PerExampleClipper` exactly as the engine does,
removes each of ``--removals`` examples in turn and reports the largest
``‖S(D) − S(D \\ {x})‖ / C`` (computed in float64). A value above 1 is a privacy
violation in the strict sense; figures are deterministic (CPU), not timings.

    python bench/clip_remove_one.py --json
    python bench/clip_remove_one.py --batch 48 --seq 8 --seeds 3

The last line of output is one JSON object (with ``--json``).
"""

from __future__ import annotations

import argparse
import json

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# "lora": adapters as peft makes them (float32 even on a bfloat16 base model);
# "lora-cast": adapters cast to the model's dtype too; "full": every weight trains.
KINDS = ("lora", "lora-cast", "full")


def _model(kind: str, dtype: torch.dtype, seed: int):
    from tensafe.models import LoRAConfig, apply_lora, build_tiny_llama

    net = build_tiny_llama(dtype=dtype, seed=seed).model
    if kind.startswith("lora"):
        torch.manual_seed(seed)
        net = apply_lora(net, LoRAConfig(rank=4, alpha=8))
        if kind == "lora-cast":
            net = net.to(dtype)
        with torch.no_grad():  # LoRA B starts at zero, which would zero lora_A's gradient
            g = torch.Generator().manual_seed(seed + 1)
            for name, p in net.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.05)
    else:
        for p in net.parameters():
            p.requires_grad_(True)
    net.train()
    return net


def _clipped_sum(net, clipper, rows: list[list[int]], C: float):
    from tensafe.losses import batch_from_arrays, compute_loss, get_loss_function

    tb = batch_from_arrays(input_ids=rows, vocab_size=49152)
    fn = get_loss_function("cross_entropy")
    with clipper.collect(batch_size=tb.batch_size) as collector:
        logits = net(input_ids=tb.input_ids, attention_mask=tb.attention_mask).logits
        compute_loss(logits, tb, loss_fn=fn, config={}).per_example.sum().backward()
    result = collector.clip(C)
    return result.norms, {p: s.double() for p, s in result.sums.items()}


def remove_one_max(
    *, kind: str, dtype: torch.dtype, batch: int, seq: int, seed: int, removals: int
) -> dict[str, float]:
    """Largest ``‖S(D) − S(D∖{x})‖ / C`` over ``removals`` choices of ``x``."""
    from tensafe.privacy.per_example import PerExampleClipper

    net = _model(kind, dtype, seed)
    clipper = PerExampleClipper(net)
    record = torch.randint(0, 49152, (seq,), generator=torch.Generator().manual_seed(seed)).tolist()
    rows = [record] * batch
    norms, _ = _clipped_sum(net, clipper, rows[:1], 1.0)
    C = float(norms[0]) / 10  # every example is clipped: the bound is active
    _, full = _clipped_sum(net, clipper, rows, C)
    worst = 0.0
    for _ in range(removals):  # identical records: any removal is the same, up to rounding
        _, part = _clipped_sum(net, clipper, rows[:-1], C)
        diff = sum(
            float((full[p] - part.get(p, torch.zeros_like(full[p]))).pow(2).sum()) for p in full
        )
        worst = max(worst, diff**0.5 / C)
    return {"ratio": worst, "C": C}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--seq", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--removals", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report: dict[str, float] = {}
    for kind in KINDS:
        for name, dtype in DTYPES.items():
            ratios = [
                remove_one_max(
                    kind=kind,
                    dtype=dtype,
                    batch=args.batch,
                    seq=args.seq,
                    seed=seed,
                    removals=args.removals,
                )["ratio"]
                for seed in range(args.seeds)
            ]
            report[f"{kind}_{name}"] = max(ratios)
            print(f"{kind:9s} {name}: max ‖S(D)−S(D∖x)‖/C = {max(ratios):.9f}", flush=True)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
